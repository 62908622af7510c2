"""Product pitches as an Apache Beam job (``tfrec copy``).

``job.run_copy`` runs it; ``handler`` holds the RunInference model handler that writes one
product's pitch with a keras-hub causal LM and the guard (``tfrec.copywriter``); ``pitches`` reads
an output back (item id -> pitch) for the page and ``tfrec batch``.
"""

__all__ = ["handler", "job", "pitches"]
