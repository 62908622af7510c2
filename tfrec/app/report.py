"""``report.md``: one page a person can read to judge a run, with PNG plots beside it.

Everything in it is read from the run folder (stats, training history, metrics, index
report, the export itself), so the report shows what the run produced and what the
exported model serves, never numbers typed by hand.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from tfrec.app.report_summary import key_table, segments_section, summary_section  # noqa: E402
from tfrec.config import Config  # noqa: E402
from tfrec.data import load_eval_split  # noqa: E402
from tfrec.fileio import copy, join, read_json, read_text, write_text  # noqa: E402
from tfrec.layout import (
    CURVES_FILE,
    DATA_DIR,
    EXPORT_DIR,
    HISTORY_FILE,
    INDEX_DIR,
    INDEX_REPORT_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    MODEL_DIR,
    PROMOTION_FILE,
    REPORT_FILE,
    STATS_FILE,
    TRAIN_SUMMARY_FILE,
    VOCAB_FILE,
)

METRIC_COLUMNS = ("recall@10", "recall@20", "recall@50", "recall@100", "ndcg@10", "ndcg@20", "mrr",
                  "hitrate@10", "coverage@10", "ils@10")
LOWER_IS_BETTER = ("ils@10",)
EXAMPLE_USERS = 3
EXAMPLE_ITEMS = 3
EXAMPLE_NEW = 5


def _load(path: str) -> dict | list | None:
    return read_json(path)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _number(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


# ---------------------------------------------------------------------- sections


def data_section(stats: dict, data_dir: str, out: Path) -> str:
    rows = [["rows read", _number(stats["rows_read"])], ["rows kept", _number(stats["rows_kept"])],
            ["rows rejected", _number(stats["rows_rejected"])]]
    rows += [[f"&nbsp;&nbsp;{reason}", _number(n)] for reason, n in stats.get("rejected_by_reason", {}).items()]
    for key in ("users", "items", "cold_start_items", "interactions", "groups"):
        if key in stats:
            rows.append([key.replace("_", " "), _number(stats[key])])
    for split, n in stats.get("examples", {}).items():
        rows.append([f"{split} examples", _number(n)])
    for reason, n in stats.get("users_dropped", {}).items():
        rows.append([f"users dropped ({reason})", _number(n)])
    lengths = [len(h) for h in load_eval_split(data_dir, "test").histories]
    figure, axis = plt.subplots(figsize=(7, 3.2))
    axis.hist(lengths, bins=np.logspace(0, np.log10(max(lengths) + 1), 40), color="#4c72b0")
    axis.set_xscale("log")
    axis.set_xlabel("items in the history of a test user")
    axis.set_ylabel("users")
    axis.set_title("History length at test time")
    figure.tight_layout()
    figure.savefig(out / "history_lengths.png", dpi=110)
    plt.close(figure)
    percentiles = stats.get("history_length", {})
    text = ", ".join(f"{k} {v:,}" for k, v in percentiles.items()) if percentiles else ""
    return "\n\n".join([
        "## Data", _table(["", "count"], rows),
        f"Every input row is accounted for: kept + rejected = read "
        f"({stats['rows_kept']:,} + {stats['rows_rejected']:,} = {stats['rows_read']:,}); "
        "rejected rows are in `data/rejected/` with their file, line and reason.",
        "![history lengths](history_lengths.png)",
        f"History length percentiles: {text}." if text else "",
    ])


def _stopping_metric(summary: dict) -> str:
    """The early-stopping metric a training summary names (``best_valid_explore_<metric>``)."""
    found = [k.removeprefix("best_valid_explore_") for k in summary if k.startswith("best_valid_explore_")]
    return f"`{found[0]}`" if found else "the early-stopping metric"


def training_section(history: list[dict], summary: dict | None, out: Path) -> str:
    epochs = [h["epoch"] for h in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    left.plot(epochs, [h["loss"] for h in history], marker="o")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss (in-batch softmax)")
    for key, label in (("valid_explore_recall@20", "validation, explore"),
                       ("valid_all_recall@20", "validation, all (towers only)")):
        right.plot(epochs, [h[key] for h in history], marker="o", label=label)
    right.set_xlabel("epoch")
    right.set_ylabel("Recall@20 on validation users")
    best = (summary or {}).get("best_epoch")
    for axis in (left, right):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best:
            axis.axvline(best, color="#2ca02c", linestyle="--", linewidth=1.2,
                         label=f"best epoch ({best}), the one kept")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "training_curves.png", dpi=110)
    plt.close(figure)
    lines = ["## Training", "![training curves](training_curves.png)"]
    if summary:
        lines.append(
            f"{summary['epochs_run']} epochs, best epoch {summary['best_epoch']} (early stopping on validation "
            f"{_stopping_metric(summary)}, explore protocol); {summary['examples_per_second']:,.0f} training "
            f"examples/s (median over epochs)."
        )
    return "\n\n".join(lines)


def _metrics_table(split: dict, protocol: str, min_users: int) -> str:
    """One protocol's table. Best of a column in bold, only when it is the only best and the
    protocol has enough users; † marks a baseline the model differs from significantly."""
    scorers = split[protocol]
    vs = split.get("vs_baselines", {}).get(protocol, {})
    too_few = split[protocol]["model"]["users"] < min_users
    rows = []
    for name, values in scorers.items():
        cells = []
        for m in METRIC_COLUMNS:
            column = [v.get(m, 0) for v in scorers.values()]
            top = (min if m in LOWER_IS_BETTER else max)(column)
            unique = sum(bool(np.isclose(c, top)) for c in column) == 1
            cell = f"{values.get(m, float('nan')):.4f}"
            if vs.get(name, {}).get(m, {}).get("significant"):
                cell += " †"
            if too_few:
                cell = f"_{cell}_"
            elif unique and np.isclose(values.get(m, -1), top):
                cell = f"**{cell}**"
            cells.append(cell)
        rows.append([f"**{name}**" if name == "model" else name, values["users"], *cells])
    table = _table(["", "users", *METRIC_COLUMNS], rows)
    if too_few:
        table = (f"_Greyed: {split[protocol]['model']['users']} users, fewer than {min_users}: too few to tell "
                 "the scorers apart; no column is marked best._\n\n" + table)
    return table


def quality_section(metrics: dict, curves: dict | None, out: Path, min_users: int = 50) -> str:
    parts = [
        "## Quality: exact evaluation against the full catalogue",
        "Every user is scored against every item; the model and each baseline rank the same users in the same "
        "run. `all`: every item of the held-out basket is a target and past items may be ranked (the model "
        "serves its repeat-aware score here). `explore`: the user's past items leave the ranking and the "
        "targets: discovery. `cold_start`: as explore, only targets never seen in training. `coverage@10`: "
        "share of the catalogue in some user's top 10; `ils@10`: intra-list similarity of the top 10 by "
        "product text (lower is more diverse). Best of each column in bold; † the model's difference from "
        "this baseline is significant (95% paired bootstrap over users, `ci` and `vs_baselines` in "
        "metrics.json).",
    ]
    for split in ("test", "valid"):
        m = metrics[split]
        sampled = (f", a random sample of the {m['users_total']:,} (`eval.max_users`)"
                   if m.get("users_total", m["users"]) > m["users"] else "")
        parts.append(f"### {split} ({m['users']:,} users{sampled}; "
                     f"{m['repeat_share']:.1%} of held-out items are repeats)")
        for protocol in ("all", "explore", "cold_start"):
            parts.append(f"**{protocol}**\n\n{_metrics_table(m, protocol, min_users)}")
        parts.append(_protocols_line(m))
    if curves:
        figure, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True)
        for axis, protocol in zip(axes, ("all", "explore")):
            for name, curve in curves["test"][protocol].items():
                axis.plot(np.arange(1, len(curve) + 1), curve, label=name,
                          linewidth=2.5 if name == "model" else 1.2)
            axis.set_title(f"test, {protocol}")
            axis.set_xlabel("K")
            axis.set_ylabel("Recall@K")
            axis.grid(alpha=0.3)
        axes[1].legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(out / "recall_at_k.png", dpi=110)
        plt.close(figure)
        parts.append("![Recall@K](recall_at_k.png)")
    return "\n\n".join(parts)


def choices_section(metrics: dict | None, summary: dict | None) -> str:
    """What the code chose from the shop's data and on validation, and how: the shop's kind and
    the settings derived from it, the text term's fit, ``text_recent``'s decay, and the text weight
    ``tfrec_similar`` serves with its next-item figures."""
    summary, metrics = summary or {}, metrics or {}
    lines = []
    shop = summary.get("shop")
    if shop:
        lines.append(f"- A **{shop['kind']}** shop: its training targets hold {shop['train_basket_size']:.1f} items "
                     f"per basket, {shop['train_repeat_share']:.1%} of them bought before ({shop['rule']}).")
    if summary.get("derived"):
        lines.append("- Settings derived from the data (`tfrec.config.derived`): "
                     + ", ".join(f"`{k}={v}`" for k, v in summary["derived"].items()) + ".")
    if summary.get("text_weight") is not None:
        lines.append(f"- Text term: weight {summary['text_weight']:g}, decay {summary.get('text_decay', 1.0):g}, "
                     "fitted on validation.")
    recent = metrics.get("text_recent")
    if recent:
        lines.append(f"- `text_recent` baseline: decay {recent['decay']:g} of {recent['decays']}, chosen on "
                     f"{recent['chosen_by']}.")
    similar = metrics.get("similar_items")
    if similar:
        rows = [[f"**{name}**" if name == similar["chosen"] else name, f"{weight:g}",
                 f"{similar['valid'][name]['recall@10']:.4f}", f"{similar['test'][name]['recall@10']:.4f}",
                 f"{similar['test'][name]['ndcg@10']:.4f}"] for name, weight in similar["candidates"].items()]
        lines.append(f"- `tfrec_similar` serves text weight {similar['text_weight']:g} ({similar['chosen']}), chosen "
                     f"on {similar['chosen_by']}. Ranked from each customer's last item, the next basket's new "
                     "products (`explore`):\n\n" + _table(["text weight", "w", "valid Recall@10", "test Recall@10",
                                                         "test NDCG@10"], rows))
    return "## Chosen from the data and on validation\n\n" + "\n".join(lines) if lines else ""


def _protocols_line(split: dict) -> str:
    """The model's ``all`` minus ``explore`` difference, with its interval."""
    d = split.get("vs_protocols", {}).get("model", {}).get("recall@20")
    if not d or d["difference"] is None:
        return ""
    return (f"Model, `all` minus `explore`, Recall@20: {d['difference']:+.4f} "
            f"[{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]{' (significant)' if d['significant'] else ''}.")


def index_section(report: dict | None) -> str:
    if not report:
        return "## Retrieval index\n\nNo index report in this run."
    rows = [[k.replace("_", " "), _format(v)] for k, v in report.items() if not isinstance(v, (dict, list))]
    return "\n\n".join(["## Retrieval index (ScaNN)",
                        "The ScaNN index measured against exact brute-force top-K on held-out queries, both in the "
                        "same run.", _table(["", "value"], rows)])


def promotion_section(record: dict | None) -> str:
    """The promotion gate's decision (``export/promotion.json``): both versions side by side."""
    if not record:
        return ""
    parts = ["## Promotion gate",
             f"Version {record['version']} against the served version {record['served_version']}: "
             f"**{record['decision']}**. {record['reason'][0].upper()}{record['reason'][1:]}."]
    if record.get("new"):
        users = f"{record['users']:,} test users" + (
            f" (a sample of {record['users_total']:,})" if record.get("users_total", 0) > record["users"] else "")
        parts.append(f"Both ranked the new data's {record['items']:,} items for the same {users}, each through its "
                     "exported `tfrec_retrieve`; the new minus the served value, with its 95% paired-bootstrap "
                     "interval over users (✱: the interval leaves out zero):")
        rows = []
        for protocol, differences in record["vs_served"].items():
            for metric in ("recall@10", "recall@20", "ndcg@10", "mrr"):
                d = differences.get(metric)
                if not d or d["difference"] is None:
                    continue
                new, served = (record[side]["metrics"][protocol].get(metric) for side in ("new", "served"))
                chosen = " (gate)" if f"{protocol}.{metric}" == record["metric"] else ""
                rows.append([f"{protocol} {metric}{chosen}", f"{new:.4f}", f"{served:.4f}",
                             f"{d['difference']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]"
                             + (" ✱" if d["significant"] else "")])
        parts.append(_table(["metric", "new", "served", "new − served"], rows))
    return "\n\n".join(parts)


def _format(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.4g}"
    return _number(value)


def _recommendations(retrieve, history: list[str], bought: set[str], texts: dict[str, str], exclude_history: bool,
                     k: int) -> str:
    """One served list as a table: ✓ for items really bought next, and what explains each."""
    import tensorflow as tf

    out = retrieve(history=tf.constant([history]), k=tf.constant(k), exclude_history=tf.constant(exclude_history))
    rows = []
    for rank, (item, score, because) in enumerate(zip(out["item_ids"].numpy()[0], out["scores"].numpy()[0],
                                                      out["because_ids"].numpy()[0]), 1):
        item, because = item.decode(), because.decode()
        reason = "bought before" if because == item else texts.get(because, because)
        rows.append([rank, "✓" if item in bought else "", item, texts.get(item, ""), f"{score:.3f}", reason])
    return _table(["#", "bought", "item", "product", "score", "because you bought"], rows)


def examples_section(data_dir: str, export_dir: str, ids: list[str], texts: dict[str, str], k: int = 10) -> str:
    """Recommendations from the exported model for a few real test users, and similar items."""
    import tensorflow as tf

    from serving.export import RETRIEVE, SIMILAR
    from serving.saved_model import load_serving_signature

    retrieve = load_serving_signature(export_dir, RETRIEVE)
    similar = load_serving_signature(export_dir, SIMILAR)
    test = load_eval_split(data_dir, "test")
    rng = np.random.default_rng(0)
    parts = ["## Examples",
             f"Recommendations served by the exported `tfrec_retrieve` model for {EXAMPLE_USERS} test users picked "
             "at random (seed 0). ✓ marks items the user really bought in the held-out basket; \"because you bought\" "
             "is the past purchase whose vector is closest to the recommendation."]
    for row in sorted(rng.choice(len(test), size=min(EXAMPLE_USERS, len(test)), replace=False)):
        history = [ids[i] for i in test.histories[row]]
        bought = {ids[i] for i in test.targets[row]}
        recent = list(dict.fromkeys(reversed(history)))[:10]

        parts.append(f"### User {test.user_ids[row]}\n\n{len(history)} past purchases; the 10 most recent: "
                     + "; ".join(texts.get(i, i) for i in recent)
                     + f".\n\nHeld-out basket: {len(bought)} items, {len(bought & set(history))} of them bought "
                       f"before.\n\nTop {k}:\n\n" + _recommendations(retrieve, history, bought, texts, False, k)
                     + f"\n\nTop {EXAMPLE_NEW} among products new to this customer (`exclude_history`):\n\n"
                     + _recommendations(retrieve, history, bought, texts, True, EXAMPLE_NEW))
    counts = np.zeros(len(ids), np.int64)
    for h in test.histories:
        np.add.at(counts, h, 1)
    parts.append(f"### Similar products (`tfrec_similar`), for the {EXAMPLE_ITEMS} most bought products")
    for index in np.argsort(-counts, kind="stable")[:EXAMPLE_ITEMS]:
        out = similar(item_id=tf.constant([ids[index]]), k=tf.constant(5))
        rows = [[item.decode(), texts.get(item.decode(), ""), f"{score:.3f}"]
                for item, score in zip(out["item_ids"].numpy()[0], out["scores"].numpy()[0])]
        parts.append(f"**{texts.get(ids[index], ids[index])}** ({ids[index]})\n\n"
                     + _table(["item", "product", "cosine"], rows))
    return "\n\n".join(parts)


def environment_section(card: dict | None, config: Config) -> str:
    parts = ["## Environment and configuration"]
    if card:
        parts.append(_table(["package", "version"], [[k, v] for k, v in card["packages"].items()]))
    parts.append("```yaml\n" + config.to_yaml() + "```")
    return "\n\n".join(parts)


def write_report(config: Config, run_dir: str | os.PathLike) -> str:
    """Writes ``run_dir/report.md`` and its images from the outputs of ``tfrec run``.

    The images are drawn into a local temporary folder (matplotlib writes local files)
    and copied beside the report, so ``run_dir`` may be on any filesystem.
    """
    run_dir = os.fspath(run_dir)
    with tempfile.TemporaryDirectory(prefix="tfrec-report-") as images:
        path = _write_report(config, run_dir, Path(images))
        for name in sorted(os.listdir(images)):
            copy(os.path.join(images, name), join(run_dir, name))
    return path


def _write_report(config: Config, run_dir: str, out: Path) -> str:
    folders = (DATA_DIR, MODEL_DIR, INDEX_DIR, EXPORT_DIR)
    data_dir, model_dir, index_dir, export_dir = (join(run_dir, d) for d in folders)
    print(f"== report: {join(run_dir, REPORT_FILE)}")
    from serving.items import read_items

    texts = read_items(export_dir)
    ids = read_text(join(data_dir, VOCAB_FILE)).splitlines()
    metrics = _load(join(model_dir, METRICS_FILE))
    min_users = config.eval.min_segment_users
    sections = [
        f"# tfrec run report: {config.name}",
        f"Generated {datetime.date.today().isoformat()} from `{run_dir}` by `tfrec run`; every figure is read "
        "from the run's outputs. Deploying? Read `export/model_card.md`.",
        summary_section(metrics, config) if metrics else "",
        key_table(metrics, config) if metrics else "",
        segments_section(metrics, config, out) if metrics else "",
        data_section(_load(join(data_dir, STATS_FILE)), data_dir, out),
        training_section(_load(join(model_dir, HISTORY_FILE)), _load(join(model_dir, TRAIN_SUMMARY_FILE)), out),
        quality_section(metrics, _load(join(model_dir, CURVES_FILE)), out, min_users),
        choices_section(metrics, _load(join(model_dir, TRAIN_SUMMARY_FILE))),
        index_section(_load(join(index_dir, INDEX_REPORT_FILE))),
        promotion_section(_load(join(export_dir, PROMOTION_FILE))),
        examples_section(data_dir, export_dir, ids, texts),
        environment_section(_load(join(export_dir, MODEL_CARD_FILE)), config),
    ]
    path = join(run_dir, REPORT_FILE)
    write_text(path, "\n\n".join(s for s in sections if s) + "\n")
    return path
