"""The ``tfrec`` command line: one subcommand per stage, and ``run`` for all of them.

Every subcommand takes ``--config FILE`` and any number of ``--set key=value``
overrides; stages are imported only when their subcommand runs, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from tfrec.app.flags import CONFIG, OPTIONAL_CONFIG, Command, OneOf, flag
from tfrec.config.serving_sections import BatchingConfig

if TYPE_CHECKING:
    from tfrec.config import ServeConfig

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_BATCHING = BatchingConfig().model_dump()

EPILOG = """\
stages and their folders:
  preprocess  raw logs + catalogue -> DIR/{train,valid,test}, items, stats.json, rejected/
  train       DIR -> MODEL (checkpoints, TensorBoard logs, model.keras)
  evaluate    MODEL + DIR -> MODEL/metrics.json (model beside every baseline)
  index       MODEL -> INDEX (ScaNN index + index_report.json)
  export      MODEL + INDEX -> EXPORT/<name>/<version>/ (TF Serving layout), checked as by verify
  verify      EXPORT -> does each model load and answer in TF Serving's graph-mode loader?
  serve       EXPORT -> REST and gRPC endpoints on 127.0.0.1
  batch       EXPORT + histories -> OUTPUT/recommendations-*.{jsonl,parquet} (a Beam job)
  copy        batch OUTPUT or item ids -> a grounded pitch per product, OUTPUT/copy-*.jsonl (a Beam job)
  run         all of the above into runs/<name>/, skipping stages already done

example:
  tfrec run --config configs/online_retail.yaml --output runs/online_retail

exit codes:
{exit_codes}
"""


RUNNER_FLAGS = """\
runner flags, passed on to Apache Beam (any other Beam pipeline option works too):
  --runner=DirectRunner|DataflowRunner|FlinkRunner|SparkRunner|PortableRunner
                (none: in this process on Beam's FnApiRunner, the DirectRunner's batch engine)
  local:        --direct_running_mode=in_memory|multi_threading|multi_processing --direct_num_workers=N
  Dataflow:     --project=P --region=R --temp_location=gs://B/tmp --staging_location=gs://B/staging
                --setup_file=./setup.py (or --requirements_file=F) --num_workers=N --max_num_workers=N
                --machine_type=TYPE --service_account_email=SA --job_name=NAME
  Flink:        --flink_master=HOST:8081 --environment_type=LOOPBACK|DOCKER|PROCESS --parallelism=N
  Spark:        --spark_master_url=spark://HOST:7077 --environment_type=LOOPBACK|DOCKER|PROCESS
  portable:     --job_endpoint=HOST:8099 --environment_type=... --environment_config=...
An argument that neither tfrec nor Beam knows is an error (exit code 2).
"""


WARM_START_HELP = ("start training from a previous model folder or run folder (train.warm_start): items in both "
                   "catalogues keep their learned rows, new ones start from their text, at most "
                   "train.warm_start_epochs epochs; the model settings must be the previous model's")


def _load(args: argparse.Namespace):
    from tfrec.config import load_config

    return load_config(args.config, args.overrides)


# ----------------------------------------------------------------------- handlers


def _preprocess(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pipelines.preprocess import run_preprocess

    run_preprocess(_load(args), args.output, beam_args)
    return 0


def _warm_start(args: argparse.Namespace) -> None:
    """``--warm-start PREVIOUS`` is ``--set train.warm_start=PREVIOUS``."""
    import json

    if args.warm_start:
        args.overrides.append(f"train.warm_start={json.dumps(args.warm_start)}")


def _train(args: argparse.Namespace, _: list[str]) -> int:
    from tfrec.training.trainer import train

    _warm_start(args)
    train(_load(args), args.data, args.output, resume=not args.fresh)
    return 0


def _evaluate(args: argparse.Namespace, _: list[str]) -> int:
    from tfrec.evaluation.comparison import evaluate

    evaluate(_load(args), args.data, args.model)
    return 0


def _index(args: argparse.Namespace, _: list[str]) -> int:
    from tfrec.errors import TfrecError

    if args.remove or args.restore:
        return _change_catalogue(args)
    missing = [flag for flag, value in (("--config", args.config), ("--model", args.model),
                                        ("--output", args.output)) if not value]
    if missing or args.export:
        raise TfrecError(f"tfrec index needs {', '.join(missing) or '--config, --model and --output'} "
                         "(or --export with --remove or --restore)")
    from serving.index import build_index

    build_index(_load(args), args.model, args.output, add_items=args.add)
    return 0


def _change_catalogue(args: argparse.Namespace) -> int:
    from serving.catalogue_changes import change_catalogue, read_ids
    from tfrec.errors import TfrecError

    if not args.export or args.add or args.model or args.output:
        raise TfrecError("--remove and --restore change an export: give --export DIR, without --add, --model "
                         "or --output")
    done = change_catalogue(args.export, remove=read_ids(args.remove), restore=read_ids(args.restore))
    if done["version"] is None:
        print(f"nothing changed: {done['removed_total']} item(s) were removed already, none to restore")
    else:
        print(f"version {done['version']} published in {done['seconds']:.1f}s: {len(done['removed'])} removed, "
              f"{len(done['restored'])} restored, {done['removed_total']} removed in all; checked in graph mode: "
              f"{', '.join(done['checked'])}")
    return 0


def _export(args: argparse.Namespace, _: list[str]) -> int:
    from serving.export import export_models

    export_models(_load(args), args.model, args.index, args.output, version=args.version,
                  model_base_path=args.model_base_path, data_dir=args.data, force=args.force)
    return 0


def _verify(args: argparse.Namespace, _: list[str]) -> int:
    import json

    from serving.verify import checks_as_json, format_checks, verify_export
    from tfrec.errors import ExitCode

    checks = verify_export(args.export, args.version)
    print(json.dumps(checks_as_json(checks), indent=1) if args.json else format_checks(checks))
    failed = [c.name for c in checks if not c.ok]
    if failed:
        print(f"tfrec verify: {len(failed)} of {len(checks)} models failed: {', '.join(failed)}", file=sys.stderr)
        return ExitCode.CHECK_FAILED
    return 0


def serve_settings_of(args: argparse.Namespace) -> ServeConfig:
    """``tfrec serve``'s settings: its flags over ``--set`` over the config's ``serve`` section."""
    import json

    from tfrec.config import serve_settings

    # The flags are overrides like any other, so that they are checked as the config's keys are.
    given = {key: getattr(args, key) for key in ("host", "port", "grpc_port", "poll_seconds", "max_batch")}
    given |= {f"batching.{key}": getattr(args, key) for key in BATCHING_FLAGS}
    if args.allow_host:
        given["allowed_hosts"] = args.allow_host
    args.overrides = [*args.overrides,
                      *(f"serve.{key}={json.dumps(value)}" for key, value in given.items() if value is not None)]
    return _load(args).serve if args.config else serve_settings(args.overrides)


def _serve(args: argparse.Namespace, _: list[str]) -> int:
    # Before TensorFlow allocates its first tensor: the server loads each new version beside the one in
    # service, and oneDNN's own memory pool (TensorFlow's default on x86) would keep that peak of two
    # versions for good; with the system allocator the old version's memory goes back to the system.
    os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")
    from serving.server import serve

    serve(args.export, serve_settings_of(args), page=not args.no_page, examples=args.examples, copy=args.copy)
    return 0


BATCHING_FLAGS = ("enabled", "max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches",
                  "allowed_batch_sizes")
"""``tfrec serve``'s flags for the ``serve.batching`` settings (``enabled`` is ``--batching/--no-batching``)."""


def _sizes(text: str) -> list[int]:
    try:
        return [int(size) for size in text.split(",") if size.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def _recommend(args: argparse.Namespace, _: list[str]) -> int:
    from tfrec.app.recommend import recommend_cli

    return recommend_cli(args)


def _batch(args: argparse.Namespace, beam_args: list[str]) -> int:
    import json

    from serving.batch.job import BatchOptions, run_batch

    if args.interactions:
        args.overrides.append(f"data.interactions.paths={json.dumps(args.interactions)}")
    options = BatchOptions(k=args.k, exclude_history=args.exclude_history,
                           exclude_ids=tuple(i for i in args.exclude.split(",") if i), output_format=args.format,
                           batch_size=args.batch_size, version=args.version, num_shards=args.num_shards,
                           copy=args.copy)
    run_batch(_load(args), args.export, args.output, data_dir=args.data, split=args.split, options=options,
              beam_args=beam_args)
    return 0


def _item_ids(value: str) -> tuple[str, ...]:
    """``--items``: comma-separated ids, or ``@FILE`` with one id a line."""
    from tfrec import fileio

    text = fileio.read_text(value[1:]) if value.startswith("@") else value.replace(",", "\n")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _copy(args: argparse.Namespace, beam_args: list[str]) -> int:
    from serving.copywriter.job import CopyOptions, run_copy

    options = CopyOptions(recommendations=args.recommendations, item_ids=_item_ids(args.items) if args.items else (),
                          cache_dir=args.cache, num_shards=args.num_shards)
    run_copy(_load(args), args.output, export_dir=args.export, data_dir=args.data, options=options,
             beam_args=beam_args)
    return 0


def _run(args: argparse.Namespace, beam_args: list[str]) -> int:
    from tfrec.app.run import run_all

    _warm_start(args)
    run_all(_load(args), args.output, force=args.force, beam_args=beam_args)
    return 0


# ------------------------------------------------------------------------ parser


COMMANDS = (
    Command(
        "preprocess", _preprocess, "raw logs -> TFRecords, vocabularies, stats, rejected rows",
        "Runs the Apache Beam preprocessing job. Beam's pipeline options (the runner flags "
        "below) are passed on to Beam.",
        beam=True, output="output", flags=(
            CONFIG,
            flag("--output", required=True, help="data directory to write (local or gs://)"),
        )),
    Command(
        "train", _train, "train the two-tower model",
        "Trains with in-batch softmax, checkpointing every epoch; re-running the same "
        "command after an interruption resumes from the last checkpoint.",
        output="output", flags=(
            CONFIG,
            flag("--data", required=True, help="output folder of `tfrec preprocess`"),
            flag("--output", required=True, help="model folder to write"),
            flag("--fresh", action="store_true", help="discard checkpoints left by an earlier run"),
            flag("--warm-start", metavar="PREVIOUS", help=WARM_START_HELP),
        )),
    Command(
        "evaluate", _evaluate, "exact evaluation of the model beside the baselines",
        "Ranks the full catalogue for every validation and test user under the `all` and "
        "`explore` protocols and writes MODEL/metrics.json.",
        flags=(
            CONFIG,
            flag("--data", required=True, help="output folder of `tfrec preprocess`"),
            flag("--model", required=True, help="output folder of `tfrec train`"),
        )),
    Command(
        "index", _index, "build and check the ScaNN index; remove or restore products",
        "Computes item vectors for the catalogue, builds a ScaNN index and measures it "
        "against exact top-K (index_report.json). With --export and --remove or --restore, "
        "publishes a new export version in seconds that never returns the removed products "
        "(exact, ScaNN, similar, search), checked in graph mode first; nothing is retrained.",
        output="output", flags=(
            OPTIONAL_CONFIG,
            flag("--model", help="output folder of `tfrec train`"),
            flag("--output", help="index folder to write"),
            flag("--add", metavar="ITEMS_FILE",
                 help="add new products (same columns as the catalogue) to an existing index"),
            flag("--export", metavar="DIR", help="with --remove / --restore: the export folder to change"),
            flag("--remove", metavar="IDS",
                 help="item ids no model may return any more (sold out, delisted): ID,ID,... or @FILE "
                      "(one id per line)"),
            flag("--restore", metavar="IDS", help="removed item ids to return again: ID,ID,... or @FILE"),
        )),
    Command(
        "export", _export, "write SavedModels in TF Serving's layout",
        "Writes EXPORT/<model>/<version>/ for the query, candidate, retrieve and "
        "retrieve_scann models, plus models.config and model_card.json. Into a folder that already "
        "serves a version, the promotion gate decides first (--data; promotion.json).",
        output="output", flags=(
            CONFIG,
            flag("--model", required=True, help="output folder of `tfrec train`"),
            flag("--index", required=True, help="output folder of `tfrec index`"),
            flag("--output", required=True, help="export folder (TF Serving base)"),
            flag("--version", type=int, default=None, help="version number (default: next free)"),
            flag("--model-base-path", metavar="PATH",
                 help="the export folder as the model server will see it, written into models.config "
                      "(e.g. /models inside TF Serving's container, or a gs:// URL; default: --output)"),
            flag("--data", metavar="DIR",
                 help="the data folder the model was trained on: when --output already serves a version, "
                      "both are ranked on its test split and the new one is published only if it is not "
                      "significantly worse on export.promotion_metric (else exit code 3)"),
            flag("--force", action="store_true",
                 help="publish even a version the promotion gate refuses (promotion.json records it)"),
        )),
    Command(
        "verify", _verify, "check that every exported model serves in TF Serving's loader",
        "For each model of an export (its newest version, or --version), loads the SavedModel in a "
        "fresh process that imports only TensorFlow (plus TF-Text or ScaNN where the graph needs "
        "their ops), in graph mode (TF Serving's and saved_model_cli's path) and eagerly, and sends "
        "both the same requests: one with only the main input, one with every option. Prints per "
        "model: loads in graph mode, answers with defaults, same results as eager, the ops beyond "
        "core TensorFlow the graph needs, and the oldest stock TF Serving that serves it. Exit code "
        "1 when any model fails. `tfrec export` runs the same check before a version goes live.",
        flags=(
            flag("--export", required=True, help="output folder of `tfrec export`"),
            flag("--version", type=int, default=None, help="version to check (default: each model's newest)"),
            flag("--json", action="store_true", help="print JSON instead of a table"),
        )),
    Command(
        "serve", _serve, "serve an export over TF Serving's REST and gRPC APIs",
        "A local model server for machines without TF Serving (and for the ScaNN model). "
        "Serves the newest version of each model and picks up new versions while running. "
        "Settings come from the flags, else from the config's `serve` section (or --set serve.KEY=VALUE, "
        "with or without --config), else the defaults; see docs/guides/serving.md for the request limits.",
        flags=(
            flag("--export", required=True, help="output folder of `tfrec export`"),
            OPTIONAL_CONFIG,
            flag("--host", help="address to bind (default: serve.host, 127.0.0.1)"),
            flag("--allow-host", action="append", metavar="NAME",
                 help="a name REST requests may give as their Host, besides localhost, loopback addresses and "
                      "--host (repeatable; default: serve.allowed_hosts); others are refused (403), so that "
                      "no web page reaches the server through DNS rebinding"),
            flag("--port", type=int, help="REST port (default: serve.port, 8501)"),
            flag("--grpc-port", type=int, help="gRPC port, 0 for none (default: serve.grpc_port, 8500)"),
            flag("--poll-seconds", type=float, help="how often to look for new versions (default 2)"),
            flag("--max-batch", type=int, help="largest batch a request may carry (default 256)"),
            flag("--batching", dest="enabled", action=argparse.BooleanOptionalAction, default=None,
                 help="merge concurrent requests into one model call (default: serve.batching.enabled, on)"),
            flag("--max-batch-size", type=int,
                 help=f"most examples in one merged call (default {_BATCHING['max_batch_size']})"),
            flag("--batch-timeout-micros", type=int,
                 help="how long a batch that is not full waits for more requests, 0 for not at all "
                      f"(default {_BATCHING['batch_timeout_micros']})"),
            flag("--num-batch-threads", type=int,
                 help=f"merged calls running at once (default {_BATCHING['num_batch_threads']})"),
            flag("--max-enqueued-batches", type=int,
                 help="batches that may wait per model; more requests are answered 503 "
                      f"(default {_BATCHING['max_enqueued_batches']})"),
            flag("--allowed-batch-sizes", type=_sizes, metavar="N,N,...",
                 help="sizes a merged call is padded up to, the last one --max-batch-size (default: any)"),
            flag("--examples", metavar="DATA_DIR",
                 help="a run's data folder (RUN/data): the page at / offers a few of its test customers as "
                      "samples (the export itself holds no customer ids)"),
            flag("--copy", metavar="COPY_OUTPUT",
                 help="output folder (or file) of `tfrec copy`: the page shows each product's pitch"),
            flag("--no-page", action="store_true", help="answer only the model API, not the page at /"),
        )),
    Command(
        "recommend", _recommend, "recommendations, similar items or text search from the CLI",
        "Loads an export and prints a table of item ids, product texts and scores.",
        flags=(
            flag("--export", required=True, help="output folder of `tfrec export`"),
            flag("--history", help="comma-separated item ids, oldest first (recommendations for them)"),
            flag("--similar-to", metavar="ITEM_ID", help="items most similar to this one"),
            flag("--query", help="free text, e.g. 'red enamel mug' (blended with --history if given)"),
            flag("-k", type=int, default=10, help="results to show (default 10)"),
            flag("--explain", action="store_true", help="show the history item behind each result"),
            flag("--exclude-history", action="store_true", help="leave out items already in the history"),
            flag("--exclude", default="", help="comma-separated item ids to leave out"),
            flag("--category", default=None, help="only items of this category value"),
            flag("--scann", action="store_true", help="use the ScaNN model instead of exact search"),
            flag("--json", action="store_true", help="print JSON instead of a table"),
        )),
    Command(
        "batch", _batch, "top-k recommendations for every customer, as a Beam job",
        "Runs the exported tfrec_retrieve model (its newest version, or --version) over every customer's "
        "history with Beam's RunInference and writes one record per customer: user_id, item_ids, scores, "
        "because_ids, because_scores. Histories come from a data folder's split (--data), or from raw "
        "interaction files read as `tfrec preprocess` reads them (the config's data.interactions, or "
        "--interactions). OUTPUT/batch_summary.json is written last. Beam's pipeline options (the runner "
        "flags below) are passed on to Beam.",
        beam=True, output="output", flags=(
            CONFIG,
            flag("--export", required=True, help="output folder of `tfrec export`"),
            flag("--output", required=True, help="folder to write the records into (local or gs://)"),
            OneOf((
                flag("--data", help="output folder of `tfrec preprocess`: histories from its --split"),
                flag("--interactions", nargs="+", metavar="PATTERN",
                     help="raw interaction files (default: the config's data.interactions.paths)"),
            )),
            flag("--split", choices=("valid", "test"), default="test",
                 help="with --data: the split whose histories to read (default test)"),
            flag("-k", type=int, default=None, help="results per customer (default: export.k)"),
            flag("--exclude-history", action=argparse.BooleanOptionalAction, default=None,
                 help="leave out items the customer already has (default: export.exclude_history)"),
            flag("--exclude", default="", help="comma-separated item ids never to recommend"),
            flag("--format", choices=("jsonl", "parquet"), default="jsonl", help="output format (default jsonl)"),
            flag("--batch-size", type=int, default=256, help="most customers per model call (default 256)"),
            flag("--version", type=int, default=None, help="tfrec_retrieve version to run (default: newest)"),
            flag("--num-shards", type=int, default=0, help="output files (default 0: the runner chooses)"),
            flag("--copy", metavar="COPY_OUTPUT",
                 help="output folder of `tfrec copy`: each record also carries its items' pitches"),
        )),
    Command(
        "copy", _copy, "a short grounded pitch for each recommended product, as a Beam job",
        "Writes one pitch per product of a `tfrec batch` output (--recommendations) or of a list of ids "
        "(--items) with the causal LM of the config's copy section, through Beam's RunInference. A "
        "pitch is published only when it names the product, invents no number, size, price, brand or "
        "URL, repeats no 3-gram, echoes no prompt and is one or two sentences of at most 40 words; "
        "otherwise a template sentence is, and the record says which rules failed. Answers are cached "
        "by prompt (OUTPUT/cache), so the cost grows with distinct products and a killed run started "
        "again resumes. OUTPUT/copy_summary.json is written last.",
        beam=True, output="output", flags=(
            CONFIG,
            flag("--output", required=True, help="folder to write the pitches into"),
            OneOf((
                flag("--recommendations", metavar="BATCH_OUTPUT", help="output folder of `tfrec batch`"),
                flag("--items", metavar="IDS", help="comma-separated item ids, or @FILE with one id a line"),
            )),
            OneOf((
                flag("--export", help="output folder of `tfrec export` (its items.tsv gives the titles)"),
                flag("--data", help="output folder of `tfrec preprocess` (its catalogue gives the titles)"),
            )),
            flag("--cache", metavar="DIR", help="the answers' cache, e.g. shared by daily runs (default OUTPUT/cache)"),
            flag("--num-shards", type=int, default=1, help="output files (default 1)"),
        )),
    Command(
        "run", _run, "preprocess, train, evaluate, index and export in one go",
        "Runs every stage into OUTPUT/{data,model,index,export} and writes OUTPUT/report.md. "
        "A stage whose outputs exist for the same config and inputs is skipped. Beam's pipeline "
        "options (the runner flags below) are passed on to the preprocessing job.",
        beam=True, output="output", flags=(
            CONFIG,
            flag("--output", required=True, help="run folder, e.g. runs/online_retail"),
            flag("--force", action="store_true", help="redo every stage"),
            flag("--warm-start", metavar="PREVIOUS", help=WARM_START_HELP),
        )),
)
"""Every subcommand, in ``tfrec --help`` order: adding one is adding an entry (and its handler)."""

_COMMANDS = {command.name: command for command in COMMANDS}


def _add_command(sub, command: Command) -> None:
    parser = sub.add_parser(command.name, help=command.help, description=command.description,
                            epilog=RUNNER_FLAGS if command.beam else None,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(handler=command.handler)
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", action="store_true", help="also print debugging detail")
    talk.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors")
    for entry in command.flags:
        entry.add_to(parser)


def build_parser(commands=COMMANDS) -> argparse.ArgumentParser:
    """The ``tfrec`` parser, one subparser per entry of ``commands``."""
    parser = argparse.ArgumentParser(
        prog="tfrec",
        description="Two-tower retrieval for shops: Beam preprocessing, training, exact "
        "evaluation beside baselines, ScaNN index and TF Serving export.",
        epilog=EPILOG.replace("{exit_codes}", _exit_codes()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands:
        _add_command(sub, command)
    return parser


def _exit_codes() -> str:
    from tfrec.errors import ExitCode

    return "\n".join(f"  {int(code):<4} {code.meaning}" for code in ExitCode)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("tfrec")
    except metadata.PackageNotFoundError:
        import tfrec

        return tfrec.__version__


LIBRARY_LOGGERS = ("tfrec", "pipelines", "serving")


def configure_logging(level: int) -> None:
    """Progress lines of the library's loggers on stdout, as plain lines; other libraries' logging
    (TensorFlow, Beam, absl) is left as it is."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    command = _COMMANDS[args.command]
    if extra and not command.beam:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        from pipelines.options import unknown_beam_args

        unknown = unknown_beam_args(extra)
        if unknown:
            parser.error(f"unrecognized arguments (neither tfrec nor Apache Beam knows them): {' '.join(unknown)}")
    from tfrec.errors import ExitCode, TfrecError
    from tfrec.fileio import no_empty_folders_on_failure

    configure_logging(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)
    output = getattr(args, command.output) if command.output else None
    try:
        if output is None:
            return args.handler(args, extra)
        with no_empty_folders_on_failure(output):
            return args.handler(args, extra)
    except (TfrecError, FileNotFoundError) as e:
        if os.environ.get("TFREC_DEBUG"):
            raise
        print(f"tfrec {args.command}: {getattr(e, 'label', 'error')}: {e}", file=sys.stderr)
        return getattr(e, "exit_code", ExitCode.ERROR)
    except KeyboardInterrupt:
        print(f"tfrec {args.command}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
