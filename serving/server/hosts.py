"""Which ``Host`` a REST request may name: a browser page cannot reach the server through DNS rebinding.

A page on ``http://evil.example`` whose name the attacker then points at ``127.0.0.1``
makes the browser send its requests to this server, with ``Host: evil.example``. So every
REST request must name a host that is this server's:

- ``localhost`` and any ``*.localhost`` name (browsers resolve them to loopback themselves),
- a loopback address (``127.0.0.0/8``, ``[::1]``),
- the address the server binds (``serve.host``),
- when the server binds every address (``0.0.0.0`` or ``::``), any IP address: an
  address in ``Host`` means the page's own origin is that address, so no name was rebound,
- the names of ``serve.allowed_hosts`` (``tfrec serve --allow-host NAME``), e.g. the
  machine's DNS name or a proxy's.

Each may carry a port. Any other ``Host`` is answered 403 with the name and the setting
that allows it. HTTP/1.1 requires the header, and a request without it (or with two) is a
400. An HTTP/1.0 request may leave it out: every browser sends it, so such a request
comes from a tool, not a page.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Sequence

from serving.server.status import PERMISSION_DENIED, ServingError, invalid

log = logging.getLogger(__name__)

LOGGED_NAMES = 100
"""Refused host names logged once each, at most this many (a flood of names logs no more)."""


def host_name(header: str) -> str:
    """The host of a ``Host`` header, without its port or a trailing dot, lower case (an IPv6
    address without its brackets)."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:value.index("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class HostCheck:
    """The rule above for one server.

    Args:
        bound: the address the server binds (``serve.host``).
        allowed: more host names to accept (``serve.allowed_hosts``).

    Example:

    >>> check = HostCheck("127.0.0.1", ["shop-recs.internal"])
    >>> check.allows("localhost:8501"), check.allows("[::1]:8501"), check.allows("shop-recs.internal")
    (True, True, True)
    >>> check.allows("evil.example:8501")
    False
    """

    def __init__(self, bound: str, allowed: Sequence[str] = ()):
        self.names = {host_name(name) for name in ("localhost", bound, *allowed) if name}
        bound_address = _address(host_name(bound))
        self.any_address = bound_address is not None and bound_address.is_unspecified
        self.refused = 0
        self._logged: set[str] = set()
        self._lock = threading.Lock()

    def allows(self, header: str) -> bool:
        name = host_name(header)
        if name in self.names or name.endswith(".localhost"):
            return True
        address = _address(name)
        return address is not None and (address.is_loopback or self.any_address)

    def check(self, request_version: str, headers: list[str] | None) -> None:
        """Raises the ``ServingError`` a request with these ``Host`` headers is answered with, if any."""
        headers = headers or []
        if len(headers) > 1:
            raise invalid(f"the request names {len(headers)} Host headers; send one")
        if not headers:
            if request_version == "HTTP/1.0":
                return
            raise invalid("an HTTP/1.1 request must name its Host")
        if self.allows(headers[0]):
            return
        name = host_name(headers[0])[:200]
        with self._lock:
            self.refused += 1
            first = name not in self._logged and len(self._logged) < LOGGED_NAMES
            if first:
                self._logged.add(name)
        if first:
            log.warning("refused a request for Host %r (a page reaching this server through another name?); "
                        "tfrec serve --allow-host %s accepts it", name, name)
        raise ServingError(PERMISSION_DENIED, f"this server does not answer for Host {name!r}: it answers for "
                                              f"localhost, loopback addresses and the address it binds; start it "
                                              f"with --allow-host {name} (serve.allowed_hosts) to accept that name")
