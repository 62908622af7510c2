"""``python -m tfrec.config``: prints the configuration reference as a Markdown table."""

from tfrec.config.reference import reference_markdown

print(reference_markdown())
