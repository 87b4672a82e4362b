"""Defences for requests that come from a web browser: allowed Host names and security headers.

A loopback server without tokens trusts whoever can reach it, and a web page can
reach it by DNS rebinding (``attacker.example`` re-resolved to 127.0.0.1): the
browser then sends ``Host: attacker.example``. Such requests are refused with 421
unless the name is allowed (loopback names always; more with ``--allowed-host``).
Every response carries headers that keep pages out of frames, stop content
sniffing, send no referrer and let pages load nothing from elsewhere.
"""

from __future__ import annotations

import ipaddress
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelcrate.errors import REFUSALS

LOOPBACK_NAMES = frozenset({"localhost"})
SEEN_HOSTS = 256  # Host headers whose answer is remembered (the rest are checked each time)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
        b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
]
SECURITY_LINES = b"".join(b"%s: %s\r\n" % header for header in SECURITY_HEADERS)


def host_name(header: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower case."""
    name = header.strip().lower()
    if name.startswith("["):
        return name[1:].split("]", 1)[0]
    return name.rsplit(":", 1)[0] if name.count(":") == 1 else name


def is_loopback(name: str) -> bool:
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class AllowedHosts:
    """Which Host names a server answers: None allows any."""

    def __init__(self, names: frozenset[str] | None) -> None:
        self.names = names
        self.seen: dict[bytes, bool] = {}  # Host header -> allowed (clients repeat theirs)

    @classmethod
    def for_server(cls, bind: str, extra: list[str], tokens: bool) -> AllowedHosts:
        """Loopback names (and the bound address) when ``--allowed-host`` is given, or when a
        loopback server runs without tokens; ``*`` among ``extra`` allows any name."""
        if "*" in extra:
            return cls(None)
        if not extra and (tokens or not is_loopback(host_name(bind))):
            return cls(None)  # tokens authenticate each request; a network bind names itself
        return cls(frozenset({host_name(bind), *(host_name(n) for n in extra)}))

    def admits(self, scope: Scope) -> bool:
        """Whether an HTTP request's Host header names this server."""
        if self.names is None:
            return True
        host = next((v for k, v in scope["headers"] if k == b"host"), b"")
        allowed = self.seen.get(host)
        if allowed is None:
            allowed = self.allows(host.decode("latin-1"))
            if len(self.seen) < SEEN_HOSTS:
                self.seen[host] = allowed
        return allowed

    def allows(self, header: str | None) -> bool:
        if self.names is None:
            return True
        if not header:
            return False
        name = host_name(header)
        return name in self.names or is_loopback(name)


class BrowserDefences:
    """ASGI middleware: refuse disallowed Host names, add security headers to responses.
    (The infer route, ``infer.py``, does both itself: wrapping each response cost it ~6%.)"""

    def __init__(self, app: ASGIApp, hosts: AllowedHosts) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.hosts.admits(scope):
            await misdirected(send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


async def misdirected(send: Send) -> None:
    """Answer 421: the Host header names a server this is not."""
    message = "this server does not answer to that Host name (allow it with --allowed-host)"
    body = json.dumps({"error": message, "code": REFUSALS[421]}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": 421, "headers": headers + SECURITY_HEADERS}
    )
    await send({"type": "http.response.body", "body": body})
