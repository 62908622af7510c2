"""``model_card.json`` and ``model_card.md``: what a deployer needs to trust an export.

The card follows the Model Card Toolkit's schema (``model_details``,
``model_parameters``, ``quantitative_analysis``, ``considerations``; field names as the
toolkit spells them) without depending on the toolkit. ``considerations`` adds
``out_of_scope_uses`` beside the toolkit's ``use_cases``. Every figure is read from the
run's own outputs (stats.json, metrics.json with its bootstrap intervals, the index
report) and each exported model's signature as the export documents it, so the card
describes what was exported.

For compatibility with earlier readers the card also keeps the flat keys ``name``,
``version``, ``models``, ``data``, ``metrics``, ``training``, ``index``, ``config`` and
``packages``.
"""

from __future__ import annotations

import datetime
import json
import os
from importlib import metadata
from typing import Any

from tfrec import fileio
from tfrec.config.derived import derived_settings, resolve, shop_record
from tfrec.layout import CATALOGUE_DIR, INDEX_REPORT_FILE, METRICS_FILE, STATS_FILE, TRAIN_SUMMARY_FILE

KEY_METRICS = ("recall@10", "recall@20", "recall@50", "recall@100", "ndcg@10", "ndcg@20", "mrr", "hitrate@10",
               "coverage@10")
PURPOSE = {
    "tfrec_query": "a customer's history -> the query vector (for an external nearest-neighbour index)",
    "tfrec_candidate": "product text (and id, categories) -> the item vector (cold start: new products)",
    "tfrec_retrieve": "a customer's history -> top-K product ids and scores, exact search over the catalogue",
    "tfrec_similar": "a product id -> the most similar products",
    "tfrec_search": "free text (and optionally a history) -> matching products",
    "tfrec_retrieve_scann": "as tfrec_retrieve, with the ScaNN index (needs ScaNN's TF ops)",
}

PACKAGES = ("tfrec", "tensorflow", "tensorflow-text", "keras", "keras-hub", "scann",
            "apache-beam", "implicit", "numpy")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _read(path: str | None) -> Any:
    return fileio.read_json(path) if path is not None else None


# ----------------------------------------------------------------------- card


def _metric(kind: str, value: float, slice_: str, ci: list | None = None) -> dict:
    entry = {"type": kind, "value": f"{value:.4f}", "slice": slice_}
    if ci and None not in ci:
        entry["confidence_interval"] = {"lower_bound": f"{ci[0]:.4f}", "upper_bound": f"{ci[1]:.4f}"}
    return entry


def _performance(metrics: dict) -> list[dict]:
    test = metrics["test"]
    out = []
    for protocol in ("all", "explore", "cold_start"):
        for scorer, values in test[protocol].items():
            names = KEY_METRICS if scorer == "model" else ("recall@20", "ndcg@10")
            for m in names:
                if m in values:
                    ci = test.get("ci", {}).get(protocol, {}).get(scorer, {}).get(m)
                    out.append(_metric(m, values[m], f"test/{protocol}/{scorer} ({values['users']} users)", ci))
        for baseline, by_metric in test.get("vs_baselines", {}).get(protocol, {}).items():
            d = by_metric.get("recall@20")
            if d and d["difference"] is not None:
                out.append(_metric("recall@20 difference, model minus baseline", d["difference"],
                                   f"test/{protocol}/model-{baseline}", d["ci"]))
    for kind, segments in test.get("segments", {}).items():
        for label, segment in segments.items():
            values = segment["metrics"].get("model", {})
            if "recall@20" in values:
                note = ", too few users to conclude" if segment["too_few_users"] else ""
                out.append(_metric("recall@20", values["recall@20"],
                                   f"test/all/model/{kind}={label} ({segment['users']} users{note})",
                                   segment["ci"]["model"]["recall@20"]))
    return out


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _limitations(metrics: dict | None, stats: dict, index: dict | None, config) -> list[dict]:
    notes = []
    if metrics:
        test = metrics["test"]
        cold, model = test["cold_start"].get("model", {}), test["all"]["model"]
        if cold.get("users", 0):
            ci = test.get("ci", {}).get("cold_start", {}).get("model", {}).get("recall@20", [None, None])
            few = cold["users"] < config.eval.min_segment_users
            notes.append(f"Cold start: on products never bought in training, Recall@20 is {_percent(cold['recall@20'])}"
                         + (f" (95% CI {_percent(ci[0])} to {_percent(ci[1])})" if None not in ci else "")
                         + f" over {cold['users']} test users"
                         + (", too few to conclude" if few else "")
                         + f", against {_percent(model['recall@20'])} over all items.")
        popular = test["all"].get("most_popular", {})
        notes.append(f"Popularity bias: the model's top 10 lists together cover {_percent(model['coverage@10'])} of "
                     f"the catalogue" + (f" (best-sellers list: {_percent(popular['coverage@10'])})" if popular else "")
                     + "; products outside them are rarely shown.")
        bands = test.get("segments", {}).get("target_popularity", {})
        if "head" in bands and "tail" in bands and bands["tail"]["metrics"]:
            notes.append(f"Long tail: Recall@20 on the least-bought products (tail) is "
                         f"{_percent(bands['tail']['metrics']['model']['recall@20'])} against "
                         f"{_percent(bands['head']['metrics']['model']['recall@20'])} on the best-sellers (head).")
        notes.append(f"Repeat purchases: {_percent(test['repeat_share'])} of the held-out items were bought by the "
                     "same customer before; the served score includes a repeat-aware term, so lists favour past "
                     "purchases unless a request sets exclude_history.")
    dropped = sum(stats.get("users_dropped", {}).values())
    notes.append(f"Population: evaluated on customers with at least {config.data.sequences.min_groups} baskets; "
                 f"{dropped:,} customers with fewer were not evaluated. A customer with no history gets an "
                 "unpersonalised list.")
    time_range = stats.get("time_range") or {}
    if time_range.get("last_event"):
        notes.append(f"Time: trained on data up to {time_range['last_event'][:10]}; new products need "
                     "`tfrec index --add` and a new export, and quality drifts as the assortment and customers "
                     "change: retrain and compare against the baselines again.")
    if index and "recall@10_vs_exact" in index:
        notes.append(f"ScaNN: tfrec_retrieve_scann returns {_percent(index['recall@10_vs_exact'])} of the exact "
                     "top 10 (tfrec_retrieve is exact).")
    return [{"description": n} for n in notes]


def _text_term(training: dict | None) -> str:
    weight = (training or {}).get("text_weight")
    if weight is None:
        return ""
    decay = (training or {}).get("text_decay", 1.0)
    history = ("the recent history" if decay == 1.0 else
               f"the recent history (each item weighted {decay:.1f} to the power of its age)")
    return (f" Scores blend in the untrained text encoder's similarity of {history} to each item "
            f"with weight {weight:.1f}, both fitted on validation (0: the two towers alone).")


def _choices_text(training: dict | None, metrics: dict | None) -> str:
    """The sentences naming the shop's kind the settings were derived for, and the text weight
    ``tfrec_similar`` serves, with how each was chosen ("" when not recorded)."""
    text = ""
    shop = (training or {}).get("shop")
    if shop:
        text += (f" The data make it a {shop['kind']} shop ({shop['rule']}); the settings it leaves to the data are "
                 "derived from that (`derived`).")
    similar = (metrics or {}).get("similar_items")
    if similar:
        text += (f" tfrec_similar weighs the text part {similar['text_weight']:g} ({similar['chosen']}), chosen on "
                 f"{similar['chosen_by']}.")
    return text


def _warm_start_text(training: dict | None) -> str:
    """The sentence saying which model a warm-started run began from ("" for a run from scratch)."""
    warm = (training or {}).get("warm_start")
    if not warm:
        return ""
    return (f" Warm-started from `{warm['source']}`: {warm['items_kept']:,} products kept their learned rows, "
            f"{warm['items_added']:,} new ones started from their text, {warm['items_dropped']:,} gone were dropped.")


USERS = ("ML platform teams serving 'recommended for you', 'similar products' and product search for this shop.",)
USE_CASES = (
    "Candidate generation: the top 20 to 100 products for a customer, to show directly or to pass to "
    "a ranking stage with the shop's business rules.",
    "Similar products (tfrec_similar) and text search (tfrec_search) over this catalogue.",
    "Vectors for new products from their text (tfrec_candidate), before anyone has bought them.",
)
OUT_OF_SCOPE_USES = (
    "Other shops, or this shop after a large change of assortment, without retraining and evaluating.",
    "Decisions with legal or financial effect on a person (credit, pricing, eligibility): the scores "
    "rank products, they do not judge customers.",
    "Inferring anything about a customer (age, gender, income) from their history or vectors.",
    "Predicting quantities, prices or demand: the model ranks, it does not forecast.",
)
TRADEOFFS = (
    "tfrec_retrieve is exact and servable by stock TF Serving; tfrec_retrieve_scann is faster on large "
    "catalogues but approximate and needs ScaNN's ops.",
    "The repeat-aware term makes lists better at what customers re-buy and worse at discovery; requests "
    "can set exclude_history, and model.repeat_term turns it off.",
)
ETHICAL_CONSIDERATIONS = (
    {"name": "A request's history is personal data.",
     "mitigation_strategy": "The exported models hold no user ids or histories; the history travels "
                            "only in the request. Log requests accordingly."},
    {"name": "Popularity feedback loops: shown products get bought and shown more.",
     "mitigation_strategy": "Watch coverage@10 and the tail segment in each evaluation; the explore "
                            "protocol measures discovery."},
)


def _architecture(config, training: dict | None, metrics: dict | None = None) -> str:
    """The model's architecture in one paragraph, from the config (and the training summary)."""
    data, encoder, tower = config.data, config.model.text_encoder, config.model.user_tower
    ensemble = (f": an ensemble of {config.model.members} members of {config.model.embedding_dim}-d, "
                "each trained on its own softmax" if config.model.members > 1 else "")
    return (
        f"Two towers scored by dot product ({config.model.members * config.model.embedding_dim}-d{ensemble}"
        f"). Item tower: the product text "
        f"({', '.join(data.items.text_fields)}) through a {encoder.kind} keras-hub text encoder"
        f"{' (' + encoder.preset + ', ' + encoder.fine_tune + ')' if encoder.kind == 'pretrained' else ''}"
        f"{', plus a per-item id vector' if config.model.item_id_embedding else ''}. User tower: the "
        f"{tower.recent_items} most recent items of the history ({tower.num_layers} transformer layer(s), "
        f"{tower.pooling} pooling, {tower.positions} positions"
        f"{', plus the mean of the whole history' if tower.long_term else ''}); no user id. "
        f"Trained with in-batch softmax (temperature {config.train.temperature}"
        f"{', logQ correction' if config.train.logq_correction else ''}); served score "
        f"{'plus a repeat-aware term fitted on validation' if config.model.repeat_term else 'without repeat term'}."
        + _text_term(training)
        + _choices_text(training, metrics)
        + _warm_start_text(training)
    )


def _datasets(config, stats: dict, metrics: dict | None) -> list[dict]:
    """The card's ``data`` entries: the training data and, when measured, the evaluation."""
    data = config.data
    population = {k: stats.get(k) for k in ("users", "users_evaluated", "users_train_only", "users_dropped", "items",
                                            "cold_start_items", "interactions", "groups")}
    datasets = [{
        "name": "training and evaluation data",
        "source": list(data.interactions.paths) + (list(data.catalogue.paths) if data.catalogue else []),
        "time_range": stats.get("time_range"),
        "population": population,
        "filters": [f.model_dump(mode="json") for f in data.interactions.filters],
        "rows": {k: stats.get(k) for k in ("rows_read", "rows_kept", "rows_rejected", "rejected_by_reason")},
        "normalize_ids": stats.get("normalize_ids"),
        "split": "per customer by time: the last basket is test, the one before validation, the rest training",
    }]
    if metrics:
        boot = metrics["test"].get("bootstrap", {})
        datasets.append({
            "name": "evaluation",
            "description": f"{metrics['test']['users']:,} test customers (their last basket) and "
                           f"{metrics['valid']['users']:,} validation customers, ranked against the full catalogue "
                           f"of {stats.get('items', 0):,} products beside {len(config.eval.baselines)} baselines; "
                           f"95% intervals from {boot.get('resamples', 0):,} paired bootstrap resamples of users.",
        })
    return datasets


def _considerations(config, metrics: dict | None, stats: dict, index: dict | None) -> dict:
    """Intended users and uses, uses out of scope, limitations (measured), tradeoffs and ethics."""
    def described(texts) -> list[dict]:
        return [{"description": text} for text in texts]

    return {
        "users": described(USERS),
        "use_cases": described(USE_CASES),
        "out_of_scope_uses": described(OUT_OF_SCOPE_USES),
        "limitations": _limitations(metrics, stats, index, config),
        "tradeoffs": described(TRADEOFFS),
        "ethical_considerations": [dict(entry) for entry in ETHICAL_CONSIDERATIONS],
    }


def build_model_card(config, model_dir: str | os.PathLike, index_dir: str | os.PathLike | None,
                     export_dir: str | os.PathLike,
                     version: int, models: dict[str, dict], signatures: dict[str, dict] | None = None) -> dict:
    """The model card of one export.

    Args:
        config: the run's config.
        model_dir: the trained model folder (its stats, metrics and training summary are read).
        index_dir: the ScaNN index folder, or ``None`` (its report gives the index's recall).
        export_dir: the export folder the card describes.
        version: the exported version.
        models: name -> ``{"path", "needs", "signature"}`` of each exported model.
        signatures: name -> ``{"inputs": {name: {"dtype", "shape", "default", "meaning"}},
            "outputs": {...}}`` (``serving.export.describe_signature``); default: each
            model's ``signature``.

    Returns:
        The card as a JSON-ready dict: the Model Card Toolkit's sections, ``signatures``,
        and the flat keys kept for earlier readers.
    """
    model_dir, export_dir = os.fspath(model_dir), os.fspath(export_dir)
    index_dir = os.fspath(index_dir) if index_dir else None
    stats = _read(fileio.join(model_dir, CATALOGUE_DIR, STATS_FILE)) or {}
    derived = derived_settings(config, stats)
    config = resolve(config, stats)  # the values the model was trained with, ``auto`` settings chosen
    metrics = _read(fileio.join(model_dir, METRICS_FILE))
    training = _read(fileio.join(model_dir, TRAIN_SUMMARY_FILE))
    index = _read(fileio.join(index_dir, INDEX_REPORT_FILE)) if index_dir else None
    if signatures is None:
        signatures = {name: model["signature"] for name, model in models.items() if "signature" in model}
    return {
        "model_details": {
            "name": f"tfrec {config.name}",
            "overview": "Two-tower retrieval for a shop: given a customer's purchase or view history, returns the "
                        "products they are most likely to buy next, from the whole catalogue.",
            "version": {"name": str(version), "date": datetime.date.today().isoformat()},
            "documentation": "docs/guides/serving.md and docs/reference/signatures.md of the tfrec project; "
                             "the run's report.md.",
            "path": str(export_dir),
        },
        "model_parameters": {
            "model_architecture": _architecture(config, training, metrics),
            "data": _datasets(config, stats, metrics),
            "input_format": "a customer's history: item ids, oldest first (tfrec_retrieve's `history`)",
            "output_format": "item ids and scores, best first (tfrec_retrieve's `item_ids`, `scores`)",
        },
        "quantitative_analysis": {"performance_metrics": _performance(metrics) if metrics else []},
        "considerations": _considerations(config, metrics, stats, index),
        "signatures": {name: {"purpose": PURPOSE.get(name, ""), "needs": models[name].get("needs", []), **sig}
                       for name, sig in signatures.items() if name in models},
        # Flat keys kept for earlier readers.
        "name": config.name,
        "version": version,
        "models": models,
        "data": stats or None,
        "metrics": metrics,
        "training": training,
        "index": index,
        "config": config.to_dict(),
        "derived": derived,
        "shop": shop_record(stats),
        "packages": package_versions(),
    }


# --------------------------------------------------------------------- markdown


def _table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])


def _with_ci(value: float, ci: list | None) -> str:
    if not ci or None in ci:
        return f"{value:.4f}"
    return f"{value:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def _quality_md(card: dict) -> list[str]:
    metrics = card.get("metrics")
    if not metrics:
        return ["No evaluation in this run (`tfrec evaluate` writes metrics.json)."]
    test = metrics["test"]
    parts = [card["model_parameters"]["data"][-1]["description"],
             "Protocols: `all`, every item of the held-out basket is a target; `explore`, the customer's past "
             "items leave the ranking and the targets (discovery); `cold_start`, as explore, only products never "
             "bought in training. Values with 95% confidence intervals; † marks a baseline whose difference from "
             "the model is significant."]
    for protocol in ("all", "explore", "cold_start"):
        rows = []
        for scorer, values in test[protocol].items():
            ci = test.get("ci", {}).get(protocol, {}).get(scorer, {})
            vs = test.get("vs_baselines", {}).get(protocol, {}).get(scorer, {})
            cells = []
            for m in ("recall@20", "ndcg@10", "mrr"):
                mark = " †" if vs.get(m, {}).get("significant") else ""
                cells.append(_with_ci(values[m], ci.get(m)) + mark)
            rows.append([scorer, values["users"], *cells, f"{values['coverage@10']:.4f}"])
        parts.append(f"**{protocol}**\n\n" + _table(["scorer", "users", "Recall@20", "NDCG@10", "MRR", "coverage@10"],
                                                    rows))
    return parts


def _signature_md(name: str, sig: dict) -> str:
    inputs = [[key, v["dtype"], v["shape"], json.dumps(v.get("default")) if v.get("default") != "required"
               else "required", v.get("meaning", "")] for key, v in sig.get("inputs", {}).items()]
    outputs = [[key, v["dtype"], v["shape"], v.get("meaning", "")] for key, v in sig.get("outputs", {}).items()]
    return "\n\n".join([
        f"### `{name}`", f"{sig.get('purpose') or name}. Needs: {', '.join(sig.get('needs', []))}.",
        _table(["input", "dtype", "shape", "default", "meaning"], inputs),
        _table(["output", "dtype", "shape", "meaning"], outputs),
    ])


def render_model_card_md(card: dict) -> str:
    """The card as Markdown, one section per Model Card Toolkit section."""
    details, parameters, considerations = card["model_details"], card["model_parameters"], card["considerations"]
    data = parameters["data"][0]
    time_range = data.get("time_range") or {}
    population = data.get("population") or {}
    rows = data.get("rows") or {}

    def bullets(entries: list[dict]) -> str:
        return "\n".join(f"- {e['description']}" for e in entries)

    sections = [
        f"# Model card: {details['name']}, version {details['version']['name']}",
        f"{details['overview']}\n\nExported {details['version']['date']} to `{details['path']}`.",
        "## Model details",
        parameters["model_architecture"],
        f"Input: {parameters['input_format']}. Output: {parameters['output_format']}.",
        "## Intended use", bullets(considerations["use_cases"]),
        "Intended users: " + " ".join(u["description"] for u in considerations["users"]),
        "## Out-of-scope uses", bullets(considerations["out_of_scope_uses"]),
        "## Training data",
        _table(["", ""], [
            ["source", ", ".join(f"`{s}`" for s in data["source"])],
            ["time range", f"{time_range.get('first_event') or '?'} to {time_range.get('last_event') or '?'}"],
            ["held-out baskets", f"{time_range.get('test_from') or '?'} to {time_range.get('test_to') or '?'}"],
            ["split", data["split"]],
            ["customers", f"{population.get('users') or 0:,} ({population.get('users_evaluated') or 0:,} "
                          f"evaluated; dropped: {population.get('users_dropped') or {}})"],
            ["products", f"{population.get('items') or 0:,} ({population.get('cold_start_items') or 0:,} never "
                         "bought in training)"],
            ["interactions", f"{population.get('interactions') or 0:,} in {population.get('groups') or 0:,} baskets"],
            ["rows read / kept / rejected", f"{rows.get('rows_read') or 0:,} / {rows.get('rows_kept') or 0:,} / "
                                            f"{rows.get('rows_rejected') or 0:,}"],
            *[[f"rejected: {reason}", f"{n:,}"] for reason, n in (rows.get("rejected_by_reason") or {}).items()],
            ["filters", "; ".join(f"{f['name']}: {f['column']} {f['op']} {f.get('value')}" for f in data["filters"])
             or "none"],
            ["ids written as floats read as integers", data.get("normalize_ids")],
        ]),
        "## Evaluation data and metrics", *_quality_md(card),
        "## Limitations", bullets(considerations["limitations"]),
        "## Trade-offs", bullets(considerations["tradeoffs"]),
        "## Ethical considerations",
        "\n".join(f"- {e['name']} {e['mitigation_strategy']}" for e in considerations["ethical_considerations"]),
        "## Signatures",
        "Every model answers TF Serving's REST `predict` and gRPC `Predict` on its `serving_default` signature; "
        "an input with a default may be left out of a request.",
        *[_signature_md(name, sig) for name, sig in card.get("signatures", {}).items()],
        "## Environment",
        _table(["package", "version"], [[k, v] for k, v in card.get("packages", {}).items()]),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"
