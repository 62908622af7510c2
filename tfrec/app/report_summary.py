"""The parts of ``report.md`` a product owner reads first: the result in plain words with its
uncertainty, the key table, and quality by segment (table and plot).

Every sentence is built from ``metrics.json``: the test split's metrics, their 95%
paired-bootstrap intervals over customers and the segments (``tfrec.evaluation.segments``).
A difference is called better or worse only when its interval leaves out zero; a segment
with too few customers is shown greyed (in italics, marked) and never named best.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

KEY = "recall@20"
PLAIN = {
    "model": "tfrec",
    "most_popular": "a best-sellers list",
    "repeat": "a 'buy it again' list",
    "item_cooccurrence": "'bought next by others' (co-occurrence)",
    "als": "matrix factorisation (ALS)",
    "text_zero_shot": "product-text similarity without training",
    "text_recent": "product-text similarity to recent purchases, without training",
}
SEGMENT_KINDS = {
    "history_length": "history length",
    "target_popularity": "product popularity",
    "target_history": "product bought",
    "cold_start": "cold start",
}
SEGMENT_LABELS = {
    "head": "best-sellers (head)", "torso": "middle (torso)", "tail": "rarely bought (tail)",
    "repeat": "bought before", "new": "new to the customer",
    "cold_start": "never bought in training (past purchases left out)",
}
GREY = "#b0b0b0"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def pct_ci(value: float, ci: list | None) -> str:
    """``29.2% [28.1, 30.3]``: a share with its interval, in percent."""
    if not ci or None in ci:
        return pct(value)
    return f"{100 * value:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def points(diff: dict | None, mark: bool = True) -> str:
    """``+1.7 [+0.9, +2.5]``: a difference in percentage points, † when significant."""
    if not diff or diff.get("difference") is None:
        return ""
    low, high = diff["ci"]
    text = f"{100 * diff['difference']:+.1f}"
    if low is not None and high is not None:
        text += f" [{100 * low:+.1f}, {100 * high:+.1f}]"
    return text + (" †" if mark and diff["significant"] else "")


def _verdict(diff: dict) -> str:
    if not diff["significant"]:
        return "too close to call on these customers"
    return "tfrec is better" if diff["difference"] > 0 else "tfrec is worse"


def _strongest(split: dict, protocol: str) -> str | None:
    baselines = {n: v.get(KEY, 0.0) for n, v in split[protocol].items() if n != "model"}
    return max(baselines, key=baselines.get) if baselines else None


def _unit(config) -> str:
    return "basket" if config.data.interactions.columns.group_id else "purchase"


def summary_section(metrics: dict, config) -> str:
    """A few plain sentences on the test split: the result, its interval, where it holds."""
    test = metrics["test"]
    unit = _unit(config)
    lines = []
    for protocol, what in (("all", f"For customers' next {unit}, tfrec's top 20 holds {{m}} of what they bought"),
                           ("explore", "Among products new to each customer, tfrec's top 20 finds {m} of those "
                                       "they bought next")):
        base = _strongest(test, protocol)
        model = test[protocol]["model"]
        sentence = what.format(m=pct(model[KEY]))
        if base:
            diff = test.get("vs_baselines", {}).get(protocol, {}).get(base, {}).get(KEY)
            sentence += f", against {pct(test[protocol][base][KEY])} for {PLAIN.get(base, base)}, the strongest " \
                        "baseline"
            if diff and diff["difference"] is not None:
                low, high = diff["ci"]
                sentence += (f"; the difference is {100 * diff['difference']:+.1f} points, 95% CI "
                             f"[{100 * low:+.1f}, {100 * high:+.1f}]: {_verdict(diff)}")
        lines.append(f"- {sentence}.")
    lines.append(f"- {pct(test['repeat_share'])} of the products in a customer's next {unit} were ones they had "
                 "bought before" + (", which is why a 'buy it again' list is hard to beat on the first measure."
                                    if test["repeat_share"] >= 0.2 else "."))
    if _segments_sentence(test):
        lines.append(_segments_sentence(test))
    cold = test["cold_start"]["model"]
    if cold.get("users"):
        ci = test.get("ci", {}).get("cold_start", {}).get("model", {}).get(KEY)
        few = cold["users"] < config.eval.min_segment_users
        lines.append(f"- Products never bought in training: {cold['users']:,} customers bought one next; tfrec "
                     f"found {pct_ci(cold[KEY], ci)} of them"
                     + (" (too few customers to conclude anything)." if few else "."))
    popular = test["all"].get("most_popular")
    lines.append(f"- tfrec's top-10 lists cover {pct(test['all']['model']['coverage@10'])} of the catalogue"
                 + (f" (a best-sellers list: {pct(popular['coverage@10'])})." if popular else "."))
    boot = test.get("bootstrap", {})
    total = test.get("users_total", test["users"])
    sampled = f" (a random sample of the {total:,})" if total > test["users"] else ""
    lines.append(f"- Measured on {test['users']:,} test customers{sampled} (each one's last {unit}) against the "
                 f"whole catalogue; 95% intervals from {boot.get('resamples', 0):,} bootstrap resamples of customers.")
    return "## Summary\n\n" + "\n".join(lines)


def _segments_sentence(test: dict) -> str:
    """How tfrec does against the strongest baseline across the segments with enough customers."""
    base = _strongest(test, "all")
    found = [(f"{SEGMENT_KINDS.get(kind, kind)}: {SEGMENT_LABELS.get(label, label)}",
              s["vs_baselines"].get(base, {}).get(KEY))
             for kind, by_label in test.get("segments", {}).items() for label, s in by_label.items()
             if base and not s["too_few_users"] and s["metrics"]]
    found = [(name, d) for name, d in found if d and d["difference"] is not None]
    if not found:
        return ""
    better = sum(d["significant"] and d["difference"] > 0 for _, d in found)
    worse = [(name, d) for name, d in found if d["significant"] and d["difference"] < 0]
    text = (f"- Against {PLAIN.get(base, base)}, segment by segment (Segments below): tfrec is better in "
            f"{better} of {len(found)}, too close to call in {len(found) - better - len(worse)}")
    if worse:
        text += ", worse in " + "; ".join(f"{name} ({points(d, mark=False)} points)" for name, d in worse)
    else:
        text += ", worse in none"
    return text + "."


def key_table(metrics: dict, config) -> str:
    """Recall@20 of every scorer under both protocols with intervals, and tfrec's difference from each."""
    test = metrics["test"]
    ci, vs = test.get("ci", {}), test.get("vs_baselines", {})
    rows = []
    for name in test["all"]:
        cells = [f"**{PLAIN['model']}**" if name == "model" else PLAIN.get(name, name)]
        for protocol in ("all", "explore"):
            cells.append(pct_ci(test[protocol][name][KEY], ci.get(protocol, {}).get(name, {}).get(KEY)))
            cells.append("" if name == "model" else points(vs.get(protocol, {}).get(name, {}).get(KEY)))
        cells.append(pct(test["all"][name]["coverage@10"]))
        rows.append(cells)
    header = ["scorer", f"Recall@20, next {_unit(config)} [95% CI]", "tfrec minus this (points)",
              "Recall@20, new products only", "tfrec minus this (points)", "catalogue coverage@10"]
    return ("Key table (test split; † the difference is significant, its 95% interval leaves out 0):\n\n"
            + _table(header, rows))


def segments_section(metrics: dict, config, out: Path) -> str:
    """The segment table (Recall@20, tfrec beside the strongest baseline) and its plot."""
    test = metrics["test"]
    segments = test.get("segments")
    if not segments:
        return ""
    base = _strongest(test, "all")
    rows, bars = [], []
    for kind, by_label in segments.items():
        for label, s in by_label.items():
            name = f"{SEGMENT_KINDS.get(kind, kind)}: {SEGMENT_LABELS.get(label, label)}"
            model = s["metrics"].get("model", {})
            if not model:
                rows.append([name, 0, "no customers", "", ""])
                continue
            cells = [pct_ci(model[KEY], s["ci"]["model"][KEY])]
            if base:
                cells.append(pct_ci(s["metrics"][base][KEY], s["ci"][base][KEY]))
                cells.append(points(s["vs_baselines"].get(base, {}).get(KEY)))
            if s["too_few_users"]:
                rows.append([f"_{name} (too few customers)_", f"_{s['users']:,}_", *[f"_{c}_" for c in cells]])
            else:
                if s["best"] == "model":
                    cells[0] = f"**{cells[0]}**"
                elif s["best"] == base and base:
                    cells[1] = f"**{cells[1]}**"
                rows.append([name, f"{s['users']:,}", *cells])
            bars.append((name, s, model))
    header = ["segment", "customers", "tfrec Recall@20 [95% CI]"]
    if base:
        header += [f"{PLAIN.get(base, base)}", "tfrec minus it (points)"]
    _segment_plot(bars, base, out)
    return "\n\n".join([
        "## Segments",
        f"Recall@20 on the test split under the `all` protocol (the served list), by segment. History length: "
        f"customers by the number of past items (quartiles). Product popularity: held-out products by how often "
        f"they were bought in training (head, torso, tail each a third of the purchases). A segment with fewer "
        f"than {config.eval.min_segment_users} customers is greyed (in italics) and never marked best; in bold, a "
        "segment's best when it is significantly ahead of the runner-up; † a significant difference.",
        _table(header, rows),
        "![Recall@20 by segment](segments_recall.png)",
    ])


def _segment_plot(bars: list, base: str | None, out: Path) -> None:
    figure, axis = plt.subplots(figsize=(10, 0.45 * len(bars) + 1.4))
    y = np.arange(len(bars))[::-1]
    names = [PLAIN["model"]] + ([PLAIN.get(base, base)] if base else [])
    for offset, (scorer, label, color) in enumerate(zip(["model", base], names, ["#4c72b0", "#dd8452"])):
        if scorer is None:
            continue
        for row, (_, s, _) in zip(y, bars):
            value = s["metrics"][scorer][KEY]
            low, high = s["ci"][scorer][KEY]
            few = s["too_few_users"]
            xerr = [[value - low], [high - value]] if low is not None else None
            axis.barh(row + (0.2 if offset == 0 else -0.2), value, height=0.38, color=GREY if few else color,
                      alpha=0.6 if few else 1.0, xerr=xerr, capsize=2, ecolor="#333333",
                      label=label if row == y[0] else None)
    axis.set_yticks(y, [f"{name} ({s['users']:,})" for name, s, _ in bars], fontsize=8)
    axis.set_xlabel("Recall@20 (test, all protocol), 95% bootstrap CI; grey: too few customers")
    axis.legend(fontsize=8, loc="lower right")
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(out / "segments_recall.png", dpi=110)
    plt.close(figure)
