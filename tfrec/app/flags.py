"""The ``tfrec`` command line's declarations: a subcommand, its flags and the config flags."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable


def config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, metavar="FILE",
                        help="YAML configuration (see configs/online_retail.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.epochs=3 (repeatable)")



@dataclasses.dataclass(frozen=True)
class Flag:
    """One argument of a subcommand: ``argparse``'s ``add_argument(*names, **options)``."""

    names: tuple[str, ...]
    options: dict

    def add_to(self, parser) -> None:
        parser.add_argument(*self.names, **self.options)


def flag(*names: str, **options) -> Flag:
    return Flag(names, options)


@dataclasses.dataclass(frozen=True)
class OneOf:
    """Flags of which a command line may give at most one."""

    flags: tuple[Flag, ...]

    def add_to(self, parser) -> None:
        group = parser.add_mutually_exclusive_group()
        for member in self.flags:
            member.add_to(group)


@dataclasses.dataclass(frozen=True)
class ConfigFlags:
    """``--config FILE`` and the repeatable ``--set KEY=VALUE``."""

    required: bool = True

    def add_to(self, parser) -> None:
        config_args(parser, self.required)


CONFIG, OPTIONAL_CONFIG = ConfigFlags(), ConfigFlags(required=False)


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: its handler, help texts and flags (in ``--help`` order).

    Args:
        name: the subcommand, e.g. ``train``.
        handler: ``handler(args, beam_args) -> exit code``.
        help: the line in ``tfrec --help``.
        description: the paragraph of ``tfrec NAME --help``.
        flags: ``Flag``, ``OneOf`` and ``ConfigFlags`` entries.
        beam: unknown arguments pass on to Apache Beam (its runner flags are listed).
        output: the argument naming the folder the command writes, removed again when a
            failure leaves it empty.
    """

    name: str
    handler: Callable[[argparse.Namespace, list[str]], int]
    help: str
    description: str
    flags: tuple = ()
    beam: bool = False
    output: str | None = None
