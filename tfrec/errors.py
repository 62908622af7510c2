"""Errors a user can act on: the CLI prints their message, without a traceback."""


class TfrecError(Exception):
    """Bad input, configuration or state, described in terms of the user's files."""
