"""``tfrec run`` end to end on a small config: every output of the run layout, the report's
sections, and a second run that skips every stage."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import config_yaml, tiny_config

LAYOUT = [
    "data/stats.json", "data/items.tfrecord.gz", "data/vocab/items.txt", "data/config.yaml",
    "model/model.keras", "model/metrics.json", "model/history.json", "model/checkpoints/checkpoint",
    "index/index_report.json", "index/scann/saved_model.pb",
    "export/models.config", "export/model_card.json", "export/model_card.md",
    "export/tfrec_retrieve/1/saved_model.pb",
    "export/tfrec_retrieve_scann/1/saved_model.pb", "export/tfrec_query/1/saved_model.pb",
    "export/tfrec_candidate/1/saved_model.pb", "export/tfrec_similar/1/saved_model.pb",
    "export/tfrec_search/1/saved_model.pb",
    "report.md", "history_lengths.png", "training_curves.png", "recall_at_k.png", "segments_recall.png",
]
SECTIONS = ["## Summary", "## Segments", "## Data", "## Training", "## Quality", "## Retrieval index (ScaNN)",
            "## Examples", "### Similar products", "## Environment and configuration"]


@pytest.fixture(scope="module")
def run(sample_config, tmp_path_factory):
    """Runs `tfrec run` twice in a subprocess, as a user would; returns the folder and both outputs."""
    config = tiny_config(sample_config, "train.epochs=1", "index.eval_queries=200")
    folder = tmp_path_factory.mktemp("run")
    config_path = folder / "tiny.yaml"
    # What the config leaves out stays left to the data, as in the bundled file.
    config_path.write_text(config_yaml(config))
    command = [sys.executable, "-m", "tfrec.app.cli", "run", "--config", str(config_path),
               "--output", str(folder / "out")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    return folder / "out", first.stdout, second.stdout


def test_every_output_of_the_layout_exists(run):
    out, first, _ = run
    missing = [path for path in LAYOUT if not (out / path).exists()]
    assert not missing, missing
    for stage in ("preprocess", "train", "evaluate", "index", "export", "report"):
        assert f"{stage}: done" in first, stage
    assert f"report:  {out / 'report.md'}" in first


def test_a_second_run_skips_every_stage(run):
    out, _, second = run
    for stage in ("preprocess", "train", "evaluate", "index", "export", "report"):
        assert f"{stage}: up to date, skipped" in second, stage
    assert "done in" not in second.replace("Run complete in", "")
    # Nothing was exported again.
    assert sorted(p.name for p in (out / "export" / "tfrec_retrieve").iterdir()) == ["1"]


def test_report_has_every_section_filled_from_the_run(run):
    out, _, _ = run
    report = (out / "report.md").read_text()
    for section in SECTIONS:
        assert section in report, section
    stats = json.loads((out / "data" / "stats.json").read_text())
    assert f"{stats['rows_read']:,}" in report
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    assert f"{metrics['test']['explore']['als']['recall@20']:.4f}" in report
    assert f"{metrics['test']['explore']['text_recent']['recall@20']:.4f}" in report
    # What the data and validation chose, and how: the shop's kind, text_recent's decay, tfrec_similar's weight.
    assert "## Chosen from the data and on validation" in report and "A **basket** shop" in report
    assert f"`text_recent` baseline: decay {metrics['text_recent']['decay']:g}" in report
    assert f"{metrics['similar_items']['test']['trained']['recall@10']:.4f}" in report
    assert "early stopping on validation `recall@20`" in report
    index = json.loads((out / "index" / "index_report.json").read_text())
    assert f"{index['recall@10_vs_exact']:,.4g}" in report
    # Three example users, each with ten recommendations, and three products' neighbours.
    assert report.count("### User ") == 3
    assert report.count("because") >= 3
    assert "tensorflow | 2.20" in report


def test_report_states_the_result_with_intervals_on_its_first_screen(run):
    out, _, _ = run
    report = (out / "report.md").read_text()
    first_screen = "\n".join(report.splitlines()[:25])
    metrics = json.loads((out / "model" / "metrics.json").read_text())["test"]
    model = metrics["all"]["model"]["recall@20"]
    assert f"For customers' next basket, tfrec's top 20 holds {100 * model:.1f}% of what they bought" in first_screen
    assert "95% CI [" in first_screen and "Key table" in first_screen
    low, high = metrics["ci"]["all"]["model"]["recall@20"]
    assert f"{100 * model:.1f}% [{100 * low:.1f}, {100 * high:.1f}]" in first_screen
    # The segment table: every segment with its customers; too few ones greyed, never bold.
    segments = report.split("## Segments")[1].split("\n## ")[0]
    for kind in metrics["segments"].values():
        for segment in kind.values():
            if segment["too_few_users"]:
                assert f"_{segment['users']:,}_" in segments
    assert "(too few customers)" not in "".join(line for line in segments.splitlines() if "**" in line)


def test_changing_a_setting_redoes_only_the_stages_that_read_it(run, sample_config):
    out, _, _ = run
    config = tiny_config(sample_config, "train.epochs=1", "index.eval_queries=200", "export.k=7")
    config_path = out.parent / "changed.yaml"
    # What the config leaves out stays left to the data, as in the bundled file.
    config_path.write_text(config_yaml(config))
    result = subprocess.run([sys.executable, "-m", "tfrec.app.cli", "run", "--config", str(config_path),
                             "--output", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for stage in ("preprocess", "train", "evaluate", "index"):
        assert f"{stage}: up to date, skipped" in result.stdout, stage
    assert "export: done" in result.stdout and "report: done" in result.stdout
    assert (out / "export" / "tfrec_retrieve" / "2").exists()
    # the same model against itself: the promotion gate publishes it, and the report says so
    promotion = json.loads((out / "export" / "promotion.json").read_text())
    assert promotion["decision"] == "published" and promotion["version"] == 2 and promotion["served_version"] == 1
    assert "## Promotion gate" in (out / "report.md").read_text()


def test_a_sampled_evaluation_says_so_in_the_report(run, sample_config, tmp_path):
    from tfrec.app.report import quality_section
    from tfrec.app.report_summary import summary_section

    out, _, _ = run
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    measured = metrics["test"]["users"]
    assert f"Measured on {measured:,} test customers (each one's" in summary_section(metrics, sample_config)
    metrics["test"]["users_total"] = measured * 10
    assert (f"Measured on {measured:,} test customers (a random sample of the {measured * 10:,})"
            in summary_section(metrics, sample_config))
    assert (f"### test ({measured:,} users, a random sample of the {measured * 10:,} (`eval.max_users`)"
            in quality_section(metrics, None, tmp_path))
