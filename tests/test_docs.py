"""The documentation: a README that stays a front page, and links between pages that lead somewhere."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted([README, *(ROOT / "docs").rglob("*.md")])
FRONT_PAGE_LINES = 250
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
"""A Markdown link (not an image: an image may be committed after the page naming it)."""


def _without_code(text: str) -> str:
    """The text outside fenced code blocks, where a bracket is only a bracket."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchor(heading: str) -> str:
    """The anchor a heading gets on GitHub: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    for line in _without_code(page.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            anchor = _anchor(match.group(1))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def test_anchors_follow_github_rules():
    assert _anchor("Before deploying: `tfrec verify`") == "before-deploying-tfrec-verify"
    assert _anchor("Online Retail (the bundled shop)") == "online-retail-the-bundled-shop"
    assert _anchor("Amazon Clothing, Shoes and Jewelry") == "amazon-clothing-shoes-and-jewelry"


def test_the_readme_is_a_front_page():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= FRONT_PAGE_LINES
    for command in ("make demo", "make test"):
        assert command in text


def test_every_page_can_be_reached_from_the_readme():
    reached, todo = set(), [README]
    while todo:
        page = todo.pop()
        if page in reached or not page.exists():
            continue
        reached.add(page)
        for target in LINK.findall(_without_code(page.read_text(encoding="utf-8"))):
            path = target.split("#")[0]
            if path.endswith(".md") and not re.match(r"[a-z]+:", path):
                todo.append((page.parent / path).resolve())
    orphans = [page.relative_to(ROOT).as_posix() for page in PAGES if page.resolve() not in reached]
    assert not orphans, f"no link leads to {orphans}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_link_leads_to_a_file_and_heading_that_exist(page):
    broken = []
    for target in LINK.findall(_without_code(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no such heading in {destination.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"
