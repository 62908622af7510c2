"""tf.data input over the preprocessing pipeline's output (see ``tfrec.features``)."""

from tfrec.data.readers import (
    Catalogue,
    EvalSplit,
    load_catalogue,
    load_eval_split,
    load_stats,
    pad_histories,
    sample_users,
    shuffled_batches,
    train_examples,
)

__all__ = [
    "Catalogue",
    "EvalSplit",
    "load_catalogue",
    "load_eval_split",
    "load_stats",
    "pad_histories",
    "sample_users",
    "shuffled_batches",
    "train_examples",
]
