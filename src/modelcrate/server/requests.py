"""What every route does with a request: check its scope, read its body with a byte count,
and answer an error with its status and ``{"error", "code"}`` body (errors.py's mapping).

Bodies are read through one counted reader: a declared ``Content-Length`` over the
route's limit is refused with 413 before anything is read, and a chunked body is
refused as soon as it passes the limit, so no route holds more than its limit in
memory. JSON bodies must say ``Content-Type: application/json``, which a web page on
another origin cannot send without a preflight this server never grants.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive

from modelcrate import refs
from modelcrate.errors import (
    BadReference,
    InputError,
    ModelcrateError,
    NotFound,
    RequestRefused,
    error_body,
)
from modelcrate.registry.api import Registry
from modelcrate.server.auth import authorize
from modelcrate.server.batching import RETRY_AFTER_S
from modelcrate.server.hot_swap import ModelManager

SMALL_BODY = 64 * 1024  # alias moves, load requests


def check_name(name: str) -> str:
    """A model name from a URL path; one that cannot exist is a 404, not a 400."""
    try:
        return refs.check_name(name)
    except BadReference:
        raise NotFound(f"no model named {name[:64]!r}") from None


def manager_of(request: Request) -> ModelManager:
    """The app's model manager (``create_app`` puts it in ``app.state``)."""
    manager: ModelManager = request.app.state.manager
    return manager


def registry_of(request: Request) -> Registry:
    """The local registry behind the registry API and the UI (offered only beside one)."""
    registry = manager_of(request).registry
    assert isinstance(registry, Registry)
    return registry


def acting(request: Request) -> Registry:
    """The registry, with the audit log naming the token in the Authorization header."""
    registry = registry_of(request)
    token = request.app.state.tokens.token_for(request.headers.get("authorization"))
    if token is None:
        return registry
    scoped = copy.copy(registry)
    scoped.actor = f"token:{token.name}"
    return scoped


def error_json(exc: ModelcrateError) -> bytes:
    return json.dumps(error_body(exc)).encode()


def error_response(exc: ModelcrateError) -> JSONResponse:
    return JSONResponse(error_body(exc), status_code=exc.http_status, headers=retry_headers(exc))


def retry_headers(exc: ModelcrateError) -> dict[str, str]:
    """``Retry-After`` for answers that say "not now" (a full queue, an overloaded server)."""
    return {"retry-after": str(RETRY_AFTER_S)} if exc.http_status == 503 else {}


class RefusalPacer:
    """Enforces ``Retry-After`` per connection, and spreads the clients it sent away:

    - a client refused (503) that asks again on the same connection before the wait it
      was told has passed gets its next refusal only once that wait is over. One that
      retries at once can no longer spend the event loop's time on refusals (at 256 such
      connections they took most of it, and the requests admitted meanwhile waited
      several times longer);
    - a refused client asking again (before its wait is over, or within another wait of
      it) is held a random part of one more wait before its refusal. Clients refused
      together come back together, a Retry-After later, and ~200 requests parsed at
      once delayed every admitted request (the slowest 1% at 256 connections came in
      those waves, once a second): held at random, they come back spread over a second;
    - a client refused for the first time, or a load balancer trying another replica,
      is refused at once.

    The wait starts when a refusal is sent (``refused``), not when it was decided: a
    refusal held back, or delayed by a busy event loop, still buys its client the whole
    wait it was told."""

    def __init__(self, wait_s: float = RETRY_AFTER_S, connections: int = 10_000) -> None:
        self.wait_s = wait_s
        self.connections = connections  # remembered at most (the oldest are forgotten)
        self.until: dict[object, float] = {}  # connection -> when its wait is over

    def delay(self, connection: object) -> float:
        """Seconds to hold this connection's refusal back (0: refuse now)."""
        until = self.until.get(connection)
        if until is None:
            return 0.0
        now = time.monotonic()
        if now - until >= self.wait_s:
            return 0.0  # refused a while ago: as a new client
        return max(0.0, until - now) + self.wait_s * random.random()

    def refused(self, connection: object) -> None:
        """The connection has just been sent a refusal: its wait starts now."""
        now = time.monotonic()
        self.until.pop(connection, None)  # re-inserted last: oldest first, roughly
        if len(self.until) >= self.connections:
            self.until = {c: t for c, t in self.until.items() if t > now - self.wait_s}
            while len(self.until) >= self.connections:  # all waiting: forget the oldest
                del self.until[next(iter(self.until))]
        self.until[connection] = now + self.wait_s


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The request body, refused with 413 before reading when it is declared too large."""
    if declared is not None:
        if not declared.isdigit():
            raise RequestRefused("Content-Length is not a number")
        if int(declared) > limit:
            raise RequestRefused(
                f"request body of {declared} bytes exceeds the {limit}-byte limit", status=413
            )
    chunks: list[bytes] = []
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestRefused("client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestRefused(f"request body exceeds the {limit}-byte limit", status=413)
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


Body = TypeVar("Body", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]


def guarded(scope: str | None, handler: Handler) -> Handler:
    """``handler`` behind the scope check, answering modelcrate errors as JSON errors. The
    tokens are the app's (``request.app.state.tokens``)."""

    async def endpoint(request: Request) -> Response:
        try:
            authorize(request.app.state.tokens, request.headers.get("authorization"), scope)
            return await handler(request)
        except ModelcrateError as exc:
            return error_response(exc)

    return endpoint


def parse_body(model: type[Body], body: bytes, shape: str) -> Body:
    """``body`` validated as ``model``; the first problem is named in an InputError."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        detail = f" ({where}: {first['msg']})" if where else ""
        raise InputError(f"the body must be JSON {shape}{detail}") from None


async def read_model(request: Request, model: type[Body], limit: int, shape: str) -> Body:
    """A JSON request body of at most ``limit`` bytes, as ``model``; ``shape`` describes it."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise RequestRefused(f"send {shape} with Content-Type: application/json", status=415)
    body = await read_body(request.receive, request.headers.get("content-length"), limit)
    return parse_body(model, body, shape)


access_log = logging.getLogger("modelcrate.access")


def log_access(method: str, path: str, status: int | str, started: float, client: str) -> None:
    """One JSON access-log line (``--access-log``), the same for REST and gRPC."""
    milliseconds = round((time.perf_counter() - started) * 1000, 3)
    line = {"method": method, "path": path, "status": status, "ms": milliseconds}
    access_log.info(json.dumps({**line, "client": client}))
