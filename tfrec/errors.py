"""Errors a user can act on, and the exit codes a scheduler reads: the one place both are defined.

The CLI prints an error's message, without a traceback, and exits with its ``exit_code``.
"""

from enum import IntEnum


class ExitCode(IntEnum):
    """What ``tfrec``'s exit status means (``meaning`` says it in words, for ``tfrec --help``)."""

    OK = 0
    CHECK_FAILED = 1
    ERROR = 2
    REFUSED = 3
    BUSY = 4
    INTERRUPTED = 130

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    ExitCode.OK: "done",
    ExitCode.CHECK_FAILED: "tfrec verify: a model failed its serving check",
    ExitCode.ERROR: "bad input, configuration, state or command line (the message names the file, row or field)",
    ExitCode.REFUSED: "tfrec export / run: the promotion gate refused the new version (significantly worse than the "
                      "served one); nothing was published: EXPORT/promotion.json says why",
    ExitCode.BUSY: "tfrec export / index --remove / --restore: another run is publishing into the export folder; "
                   "nothing was done: run again once it ends",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


class TfrecError(Exception):
    """Bad input, configuration or state, described in terms of the user's files."""

    exit_code = ExitCode.ERROR
    label = "error"
    """How the CLI introduces the message: ``tfrec COMMAND: error: ...``."""


class PromotionRefused(TfrecError):
    """The promotion gate refused a new version: it stays unpublished, the served one stays live."""

    exit_code = ExitCode.REFUSED
    label = "refused"


class ExportBusy(TfrecError):
    """Another run is publishing into the export folder; this one did nothing."""

    exit_code = ExitCode.BUSY
    label = "busy"
