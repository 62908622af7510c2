"""Every file and folder name of a run folder: the one place each is spelled.

``tfrec run --output RUN`` writes::

    RUN/
      data/      tfrec preprocess: {train,valid,test}/part-*.tfrecord.gz, items.tfrecord.gz,
                 vocab/items.txt, stats.json, config.yaml, rejected/rejected-*.jsonl
      model/     tfrec train, tfrec evaluate: model.keras, vectors.npz, catalogue/ (a copy of the
                 data folder's catalogue files), checkpoints/, logs/, history.json,
                 train_summary.json, metrics.json, recall_curves.json, text_cache/, vocabularies
      index/     tfrec index: scann/, catalogue.npz, items.tsv, search.json, index_report.json
      export/    tfrec export: <model>/<version>/, models.config, model_card.json, model_card.md,
                 items.tsv
      report.md  the run report (plots beside it)

Each stage folder may also be used alone (``tfrec train --output MODEL``); the names
inside it are the same.
"""

# ---------------------------------------------------------------- the run folder
DATA_DIR = "data"
MODEL_DIR = "model"
INDEX_DIR = "index"
EXPORT_DIR = "export"
REPORT_FILE = "report.md"
STAGE_STAMP = ".tfrec-stage.json"
"""Beside a stage's outputs: the fingerprint of the config and inputs that made them."""

# ---------------------------------------------------------------- the data folder
SPLITS = ("train", "valid", "test")
ITEMS_FILE = "items.tfrecord.gz"
VOCAB_FILE = "vocab/items.txt"
STATS_FILE = "stats.json"
REJECTED_DIR = "rejected"
CONFIG_FILE = "config.yaml"
SHARD_SUFFIX = ".tfrecord.gz"
SHARD_PREFIX = "part"
REJECTED_PREFIX = "rejected"
REJECTED_SUFFIX = ".jsonl"

# ---------------------------------------------------------------- the model folder
MODEL_FILE = "model.keras"
VECTORS_FILE = "vectors.npz"
CATALOGUE_DIR = "catalogue"
"""The data folder's catalogue files, copied so that a model folder stands alone."""
CHECKPOINT_DIR = "checkpoints"
LOGS_DIR = "logs"
"""TensorBoard logs."""
HISTORY_FILE = "history.json"
BEST_WEIGHTS = "best.weights.h5"
TRAIN_SUMMARY_FILE = "train_summary.json"
METRICS_FILE = "metrics.json"
CURVES_FILE = "recall_curves.json"
TEXT_CACHE_DIR = "text_cache"
TEXT_VOCAB_FILE = "text_vocab.txt"
CATEGORICAL_VOCAB_FILE = "categorical_vocab.json"
TRAINED_GROUPS_FILE = "trained_groups.npz"
"""Per user, the groups the model trained on: what a warm start from it need not train again."""

# ---------------------------------------------------------------- the index folder
SCANN_DIR = "scann"
INDEX_CATALOGUE_FILE = "catalogue.npz"
SEARCH_FILE = "search.json"
INDEX_REPORT_FILE = "index_report.json"

# ---------------------------------------------------------------- the export folder (and the index's)
ITEM_TEXTS_FILE = "items.tsv"
MODELS_CONFIG_FILE = "models.config"
BATCHING_PARAMETERS_FILE = "batching_parameters.txt"
"""TF Serving's ``--batching_parameters_file`` (``BatchingParameters`` text proto), beside ``models.config``."""
MODEL_CARD_FILE = "model_card.json"
MODEL_CARD_MD_FILE = "model_card.md"
PROMOTION_FILE = "promotion.json"
"""The promotion gate's last decision: the new and the served version's figures and the verdict."""
REMOVED_ITEMS_FILE = "removed_items.json"
"""Item ids no exported model returns (``tfrec index --remove``), and the last changes."""

# ---------------------------------------------------------------- the batch folder (tfrec batch)
RECOMMENDATIONS_PREFIX = "recommendations"
"""Shards ``recommendations-SSSSS-of-NNNNN.{jsonl,parquet}``, one record per customer."""
BATCH_SUMMARY_FILE = "batch_summary.json"
"""Written last: the model version, the source, the counts and the timings of the job."""

# ---------------------------------------------------------------- the copy folder (tfrec copy)
COPY_PREFIX = "copy"
"""Shards ``copy-SSSSS-of-NNNNN.jsonl``: one pitch per product (per product and bought product
when personalised), with its source (``generated`` or ``template``) and the guard's verdict."""
COPY_SUMMARY_FILE = "copy_summary.json"
"""Written last: the generator, the counts (generated, template, cached) and the timings."""
COPY_CACHE_DIR = "cache"
"""One ``<prompt hash>.json`` per prompt answered: a rerun, or a killed run started again, reuses them."""
