"""Who may talk to the server: the Host allow-list, same-origin writes and the API token.

A server on 127.0.0.1 is still reachable from any web page the user opens:
a page can send a form (a cross-site POST) to it, and a hostile name that
resolves to 127.0.0.1 (DNS rebinding) lets a page read its answers. Two
checks close both, before any route runs (:class:`HostGuard`):

- the ``Host`` header must name this server: by default a loopback name
  (``127.0.0.1``, ``localhost``, ``[::1]``), other names only when allowed
  (``create_app(allowed_hosts=...)``, ``aivc serve --allowed-host NAME``); otherwise 421;
- a request that changes state (POST, PUT, PATCH, DELETE) sent by a browser
  from another origin (its ``Origin`` header, or ``Sec-Fetch-Site: cross-site``
  when there is none) is refused with 403. Clients that are not browsers send
  no ``Origin`` and are not affected.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

__all__ = [
    "LOOPBACK_NAMES",
    "HostGuard",
    "HostRule",
    "bearer_token",
    "check_token",
    "loopback_hosts",
    "parse_allowed_hosts",
    "split_host",
    "token_matches",
]

#: Host names of this machine that every server answers to.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
#: Methods that change state and so must come from this server's own origin.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_BAD_HOST_CHARS = frozenset(" \t/\\@?#%,;\"'<>")


def split_host(value: str) -> tuple[str, int | None]:
    """Split a ``Host`` header value (or an allowed host) into a lower-case name and a port.

    ``"Example.org:8080"`` gives ``("example.org", 8080)``, ``"[::1]:80"``
    ``("[::1]", 80)``; a bare IPv6 address (``"::1"``) is put in brackets.
    Raises ``ValueError`` when the value is not a host name with an optional port.
    """
    text = value.strip().lower()
    port: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            msg = f"Invalid host {value!r}: an IPv6 address needs its closing ']'."
            raise ValueError(msg)
        name, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            msg = f"Invalid host {value!r}: expected NAME or NAME:PORT."
            raise ValueError(msg)
        port = rest[1:] if rest else None
    elif text.count(":") > 1:  # a bare IPv6 address
        name, port = f"[{text}]", None
    else:
        name, sep, rest = text.partition(":")
        port = rest if sep else None
    if not name or any(c in _BAD_HOST_CHARS for c in name):
        msg = f"Invalid host {value!r}: expected NAME or NAME:PORT."
        raise ValueError(msg)
    if port is None:
        return name, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        msg = f"Invalid host {value!r}: the port must be a number from 1 to 65535."
        raise ValueError(msg)
    return name, int(port)


@dataclass(frozen=True)
class HostRule:
    """An allowed ``Host``: a name (``"*"``: any) and a port (``None``: any)."""

    name: str
    port: int | None = None

    def matches(self, name: str, port: int) -> bool:
        return (self.name == "*" or self.name == name) and self.port in (None, port)


def parse_allowed_hosts(values: Iterable[str]) -> tuple[HostRule, ...]:
    """Rules from ``NAME``, ``NAME:PORT`` or ``*`` strings (commas separate several)."""
    rules = []
    for value in values:
        for item in str(value).split(","):
            if not item.strip():
                continue
            if item.strip() == "*":
                rules.append(HostRule("*"))
                continue
            rules.append(HostRule(*split_host(item)))
    return tuple(rules)


def loopback_hosts(port: int | None = None) -> list[str]:
    """The loopback names, with ``port`` when given (any port otherwise)."""
    return [f"{n}:{port}" if port else n for n in LOOPBACK_NAMES]


def check_token(token: str | None) -> str | None:
    """The API token to require: ``None`` for none; a blank token raises ``ValueError``.

    An empty string means no token (as an unset ``AIVC_API_TOKEN``); one made
    only of whitespace is refused, since it would look like protection and
    give none. Surrounding whitespace is dropped (HTTP drops it from headers).
    """
    if token is None or token == "":
        return None
    if not token.strip():
        msg = "The API token is blank (only whitespace); give a real secret or none."
        raise ValueError(msg)
    return token.strip()


def bearer_token(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme in any case), or ``None``."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not rest.strip():
        return None
    return rest.strip()


def token_matches(header: str, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (compared in constant time)."""
    given = bearer_token(header)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def _port(port: int | None, scheme: str) -> int:
    return port if port is not None else _DEFAULT_PORTS.get(scheme, 80)


def _same_origin(origin: str, host: tuple[str, int | None]) -> bool:
    """Whether the browser origin ``origin`` is the server named by the request's ``Host``."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        return False
    try:
        name, port = split_host(parts.netloc)
    except ValueError:
        return False
    if name != host[0]:
        return False
    if port is None and host[1] is None:
        return True  # e.g. https://lab.example.org behind a proxy that forwards Host as is
    return _port(port, parts.scheme) == _port(host[1], parts.scheme)


class HostGuard:
    """ASGI middleware: the Host allow-list (421) and same-origin writes (403).

    Parameters
    ----------
    app
        The application to guard.
    allowed_hosts
        ``NAME``, ``NAME:PORT`` or ``*`` entries; default: the loopback names on any port.
    """

    def __init__(self, app: Any, *, allowed_hosts: Sequence[str] | None = None) -> None:
        self.app = app
        self.rules = parse_allowed_hosts(
            loopback_hosts() if allowed_hosts is None else allowed_hosts
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            status, detail = refusal
            await JSONResponse(status_code=status, content={"detail": detail})(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: dict[str, Any], headers: Headers) -> tuple[int, str] | None:
        raw = headers.get("host", "")
        try:
            host = split_host(raw)
        except ValueError:
            host = None
        scheme = scope.get("scheme", "http")
        if host is None or not any(r.matches(host[0], _port(host[1], scheme)) for r in self.rules):
            shown = raw[:100] if raw else "(none)"
            return 421, (
                f"This server does not answer to the host name {shown!r}. Use the address it "
                "was started on, or start it with --allowed-host NAME."
            )
        if scope.get("method", "GET").upper() not in UNSAFE_METHODS:
            return None
        origin = headers.get("origin")
        if origin is not None:
            if not _same_origin(origin, host):
                return 403, (
                    "Cross-origin request refused: a page from another site may not change "
                    "this server's state. Use the page this server serves, or a client that is "
                    "not a browser."
                )
        elif headers.get("sec-fetch-site", "").lower() == "cross-site":
            return 403, "Cross-site request refused: send it from this server's own page."
        return None
