"""Beam pipeline options from the arguments tfrec passes on, refusing the ones nobody knows.

Beam's own ``PipelineOptions`` keeps whatever it cannot parse and, when a runner reads
its options, drops it with only a "Discarding unparseable args" warning: a mistyped
``--sett`` or ``--num_worker`` would silently change nothing. Here every argument is
matched against the options Beam registers (the standard, Google Cloud, worker, setup,
direct, portable, Flink and Spark runner options) and an unknown one raises
:class:`~tfrec.errors.TfrecError` naming it, before any work starts.
"""

from __future__ import annotations

from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from tfrec.errors import TfrecError


def unknown_beam_args(args: Sequence[str]) -> list[str]:
    """The flags in ``args`` that no registered Beam pipeline option accepts."""
    parser = _BeamArgumentParser(allow_abbrev=False)
    classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
    for cls in classes.values():
        cls._add_argparse_args(parser)  # how Beam itself builds its parser (get_all_options)
    _, unknown = parser.parse_known_args(list(args))
    return unknown


def pipeline_options(args: Sequence[str]) -> PipelineOptions:
    """``PipelineOptions`` from ``args``; raises ``TfrecError`` naming any argument Beam does not know."""
    unknown = unknown_beam_args(args)
    if unknown:
        raise TfrecError(f"unrecognized argument(s): {' '.join(unknown)} (neither a tfrec flag nor "
                         f"an Apache Beam pipeline option; see --help)")
    return PipelineOptions(list(args))
