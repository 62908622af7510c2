"""The ``tfrec`` command line: help on every subcommand, errors without tracebacks."""

import subprocess
import sys

import pytest

from tfrec.app.cli import build_parser, main

SUBCOMMANDS = ("preprocess", "train", "evaluate", "index", "export", "serve", "recommend", "batch", "run")


def test_every_subcommand_explains_itself(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    top = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in top
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert f"usage: tfrec {name}" in text and len(text.splitlines()) > 5


def test_only_beam_stages_pass_unknown_flags_on():
    parser = build_parser()
    args, extra = parser.parse_known_args(["preprocess", "--config", "c.yaml", "--output", "o",
                                           "--runner=DirectRunner"])
    assert extra == ["--runner=DirectRunner"]
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--config", "c.yaml", "--data", "d", "--output", "o", "--runner=DirectRunner"])
    assert exit_.value.code == 2


@pytest.mark.parametrize("command", ["preprocess", "run"])
def test_a_flag_neither_tfrec_nor_beam_knows_fails_naming_it(command, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--config", "configs/online_retail.yaml", "--output", str(tmp_path / "o"),
              "--runner=DirectRunner", "--sett", "train.epochs=1"])
    assert exit_.value.code == 2
    assert "--sett" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_runner_flags_of_every_runner_are_known_and_listed_in_help(capsys):
    from pipelines.options import pipeline_options, unknown_beam_args

    known = ["--runner=FlinkRunner", "--flink_master=h:8081", "--environment_type=LOOPBACK",
             "--spark_master_url=spark://h:7077", "--project", "p", "--region=europe-west1",
             "--temp_location=gs://b/tmp", "--setup_file=./setup.py", "--max_num_workers=4",
             "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    assert unknown_beam_args(known) == []
    assert unknown_beam_args(known + ["--num_worker=3"]) == ["--num_worker=3"]
    from tfrec.errors import TfrecError

    with pytest.raises(TfrecError, match="--max_num_worker"):
        pipeline_options(["--max_num_worker=3"])
    with pytest.raises(SystemExit):
        main(["preprocess", "--help"])
    text = capsys.readouterr().out
    for flag in ("--runner", "--setup_file", "--flink_master", "--spark_master_url", "--direct_num_workers"):
        assert flag in text


def test_errors_name_the_file_and_exit_2_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tfrec.app.cli", "train", "--config", str(tmp_path / "missing.yaml"),
                             "--data", str(tmp_path), "--output", str(tmp_path / "model")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"tfrec train: error: {tmp_path / 'missing.yaml'}: config file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_data_folder_that_is_not_one_is_named(tmp_path, capsys):
    code = main(["evaluate", "--config", "configs/online_retail.yaml", "--data", str(tmp_path),
                 "--model", str(tmp_path)])
    assert code == 2
    error = capsys.readouterr().err
    assert f"{tmp_path / 'model.keras'} not found" in error and "the output folder of `tfrec train`" in error


def test_version(capsys):
    import tfrec

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"tfrec {tfrec.__version__}"


@pytest.mark.parametrize("stage, arguments", [
    ("preprocess", ["--output", "{out}"]),
    ("train", ["--data", "{missing}", "--output", "{out}"]),
    ("index", ["--model", "{missing}", "--output", "{out}"]),
    ("export", ["--model", "{missing}", "--index", "{missing}", "--output", "{out}"]),
    ("run", ["--output", "{out}"]),
])
def test_a_failed_stage_leaves_no_empty_output_folder(stage, arguments, tmp_path, capsys):
    config = tmp_path / "broken.yaml"  # names an interaction file that does not exist
    config.write_text(open("configs/online_retail.yaml").read().replace(
        "data/online_retail/online_retail.csv.gz", str(tmp_path / "missing.csv")))
    out = tmp_path / "out" / "nested"
    args = [a.format(out=out, missing=tmp_path / "missing") for a in arguments]
    assert main([stage, "--config", str(config), *args]) == 2
    assert f"tfrec {stage}: error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_failed_stage_keeps_what_it_wrote_and_folders_that_existed(tmp_path):
    from tfrec.fileio import no_empty_folders_on_failure

    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(RuntimeError), no_empty_folders_on_failure(existing):
        (existing / "a" / "b").mkdir(parents=True)
        raise RuntimeError("stage failed")
    assert existing.exists() and not (existing / "a").exists()
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError), no_empty_folders_on_failure(fresh):
        (fresh / "checkpoints").mkdir(parents=True)
        (fresh / "checkpoints" / "ckpt-1.index").write_text("x")
        (fresh / "logs").mkdir()
        raise RuntimeError("stage failed")
    assert (fresh / "checkpoints" / "ckpt-1.index").exists() and not (fresh / "logs").exists()


def test_library_progress_is_logged_and_quiet_silences_it(capsys, monkeypatch):
    import logging

    from tfrec.app.cli import LIBRARY_LOGGERS, configure_logging

    for name in LIBRARY_LOGGERS:  # restored after the test: other tests read these loggers through caplog
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "handlers", list(logger.handlers))
        monkeypatch.setattr(logger, "propagate", logger.propagate)
        monkeypatch.setattr(logger, "level", logger.level)
    configure_logging(logging.INFO)
    logging.getLogger("tfrec.training").info("epoch 1 of 2")
    logging.getLogger("serving.export").debug("detail")
    assert capsys.readouterr().out == "epoch 1 of 2\n"
    configure_logging(logging.WARNING)
    logging.getLogger("pipelines.preprocess").info("rows read")
    logging.getLogger("pipelines.preprocess").warning("a file was cut short")
    assert capsys.readouterr().out == "a file was cut short\n"
    args = build_parser().parse_args(["verify", "--export", "x", "-q"])
    assert args.quiet and not args.verbose
