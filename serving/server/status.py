"""Status codes of a refused request: one gRPC status name per error, mapped to HTTP for REST.

TF Serving answers both APIs from one ``tensorflow::Status``; this server does the same,
so a REST client and a gRPC client of one request see the same kind of error and the
same message.
"""

from __future__ import annotations

import re
from http import HTTPStatus

INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED = "INVALID_ARGUMENT", "NOT_FOUND", "UNIMPLEMENTED"
RESOURCE_EXHAUSTED, UNAVAILABLE, INTERNAL = "RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL"
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"  # gRPC only: a REST request carries no deadline
PERMISSION_DENIED = "PERMISSION_DENIED"
HTTP_STATUS = {
    INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    NOT_FOUND: HTTPStatus.NOT_FOUND,
    UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
    PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
}
"""TF Serving's mapping of the codes this server uses (``http_server.cc``)."""


class ServingError(Exception):
    """A request the server refuses; ``code`` is a gRPC status name, mapped to an HTTP status for REST."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message

    @property
    def http_status(self) -> HTTPStatus:
        return HTTP_STATUS.get(self.code, HTTPStatus.INTERNAL_SERVER_ERROR)


def invalid(message: str) -> ServingError:
    return ServingError(INVALID_ARGUMENT, message)


def over_limit(what: str, limit: int, setting: str) -> ServingError:
    """A request over one of the server's limits: names the limit and the setting that raises it."""
    return invalid(f"{what}; this server takes at most {limit:,} ({setting})")


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


_TF_ERROR_NOISE = ("Graph execution error", "Detected at node", "<stack traces")


def tf_error_text(message: str) -> str:
    """The lines of a TensorFlow error that say what went wrong, without node names and stack traces."""
    kept = [line.strip() for line in message.splitlines()
            if line.strip() and not line[0].isspace() and not line.startswith(_TF_ERROR_NOISE)]
    return re.sub(r"\s*\[Op:[^\]]*\]$", "", " ".join(kept)) or first_line(message)
