"""model_card.json and model_card.md: the Model Card Toolkit's sections, filled from the run."""

import json

import pytest

from serving.export import RETRIEVE, export_models
from serving.model_card import build_model_card, render_model_card_md
from tfrec.evaluation.comparison import evaluate

SECTIONS = ["## Model details", "## Intended use", "## Out-of-scope uses", "## Training data",
            "## Evaluation data and metrics", "## Limitations", "## Signatures", "## Environment"]


@pytest.fixture(scope="module")
def exported(tiny, sample_data_dir, trained_model_dir, index_dir, tmp_path_factory):
    """An export of the tiny model after its evaluation (so the card has metrics and intervals);
    the serving check, which the card does not read, is test_graph_mode's."""
    evaluate(tiny, sample_data_dir, trained_model_dir)
    out = tmp_path_factory.mktemp("export_card")
    paths = export_models(tiny, trained_model_dir, index_dir, out, version=3, verify=False)
    return out, paths


def test_card_json_has_the_toolkit_sections_filled_from_the_run(exported, trained_model_dir):
    out, paths = exported
    card = json.loads((out / "model_card.json").read_text())
    assert {"model_details", "model_parameters", "quantitative_analysis", "considerations"} <= set(card)
    assert card["model_details"]["version"]["name"] == "3"
    data = card["model_parameters"]["data"][0]
    stats = json.loads((trained_model_dir / "catalogue" / "stats.json").read_text())
    assert data["rows"]["rows_kept"] == stats["rows_kept"] and data["time_range"] == stats["time_range"]
    assert data["time_range"]["first_event"] < data["time_range"]["last_event"]
    assert [f["name"] for f in data["filters"]] == ["not_cancelled", "positive_quantity", "positive_price"]
    considerations = card["considerations"]
    for key in ("use_cases", "out_of_scope_uses", "limitations", "tradeoffs", "ethical_considerations"):
        assert considerations[key], key
    assert any("Cold start" in e["description"] for e in considerations["limitations"])
    assert any("cover" in e["description"] for e in considerations["limitations"])
    metrics = json.loads((trained_model_dir / "metrics.json").read_text())
    recall = [m for m in card["quantitative_analysis"]["performance_metrics"]
              if m["type"] == "recall@20" and m["slice"].startswith("test/all/model (")]
    assert recall[0]["value"] == f"{metrics['test']['all']['model']['recall@20']:.4f}"
    ci = metrics["test"]["ci"]["all"]["model"]["recall@20"]
    assert recall[0]["confidence_interval"] == {"lower_bound": f"{ci[0]:.4f}", "upper_bound": f"{ci[1]:.4f}"}
    # What the data and validation chose, and how: the shop's kind and the weight tfrec_similar serves.
    architecture = card["model_parameters"]["model_architecture"]
    assert "The data make it a basket shop" in architecture and card["shop"]["kind"] == "basket"
    assert "tfrec_similar weighs the text part 0 (trained), chosen on validation" in architecture
    assert card["metrics"]["text_recent"]["decay"] == metrics["text_recent"]["decay"]
    # Every exported model's signature as the export documents it: dtypes, shapes, defaults, meanings.
    assert set(card["signatures"]) == set(paths)
    retrieve = card["signatures"][RETRIEVE]
    assert retrieve["inputs"]["history"]["dtype"] == "string" and retrieve["inputs"]["history"]["default"] == "required"
    assert retrieve["inputs"]["k"]["default"] == 20
    assert {"item_ids", "scores"} <= set(retrieve["outputs"])
    assert {"data", "config", "metrics", "packages", "index"} <= set(card)


def test_card_md_has_every_section_and_the_intervals(exported, trained_model_dir):
    out, _ = exported
    text = (out / "model_card.md").read_text()
    for section in SECTIONS:
        assert section in text, section
    metrics = json.loads((trained_model_dir / "metrics.json").read_text())
    low, high = metrics["test"]["ci"]["explore"]["model"]["recall@20"]
    assert f"{metrics['test']['explore']['model']['recall@20']:.4f} [{low:.4f}, {high:.4f}]" in text
    assert "### `tfrec_retrieve`" in text and "| k | int32 |" in text


def test_signature_documentation_given_by_the_export_is_used(exported, tiny, trained_model_dir, index_dir):
    out, paths = exported
    models = {name: {"path": str(p), "needs": ["tensorflow"]} for name, p in paths.items()}
    given = {RETRIEVE: {"inputs": {"history": {"dtype": "string", "shape": [-1, -1], "default": "required",
                                               "meaning": "item ids the customer bought, oldest first"}},
                        "outputs": {"item_ids": {"dtype": "string", "shape": [-1, -1], "meaning": "best first"}}}}
    card = build_model_card(tiny, trained_model_dir, index_dir, out, 3, models, given)
    assert list(card["signatures"]) == [RETRIEVE]
    assert "item ids the customer bought, oldest first" in render_model_card_md(card)
