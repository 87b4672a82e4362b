"""The infer route as a plain ASGI handler: the server's hot path.

``POST /v2/models/{name}[/versions/{version}]/infer`` is answered here without
Starlette's routing, middleware or Request/Response objects (a third of the
per-request cost for a small model); every other route goes to the Starlette
app. It decodes with ``oip``, runs through the ``ModelManager``, encodes, and writes the
answer in one write where our HTTP protocol offers it (``http_protocol.WHOLE``).
"""

from __future__ import annotations

import asyncio
import functools

from starlette.types import ASGIApp, Receive, Scope, Send

from modelcrate.errors import ModelcrateError, RequestRefused
from modelcrate.server import oip
from modelcrate.server.auth import Tokens, authorize
from modelcrate.server.browser import (
    SECURITY_HEADERS,
    SECURITY_LINES,
    AllowedHosts,
    misdirected,
)
from modelcrate.server.hot_swap import ModelManager
from modelcrate.server.http_protocol import WHOLE
from modelcrate.server.requests import (
    RefusalPacer,
    check_name,
    error_json,
    read_body,
    retry_headers,
)

ENCODE_OFF_LOOP_BYTES = 1024 * 1024  # larger responses are encoded in a thread
HEAD_JSON = b"content-type: application/json\r\n" + SECURITY_LINES
HEAD_BINARY = b"content-type: application/octet-stream\r\n" + SECURITY_LINES
# curl -d sends form-urlencoded; anything else (pickle, YAML, ...) is refused with 415.
ACCEPTED_TYPES = frozenset(
    {b"", b"application/json", b"application/octet-stream", b"application/x-www-form-urlencoded"}
)
HEADER_LENGTH = oip.HEADER_LENGTH.encode()


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def infer_target(path: str) -> tuple[str, str | None] | None:
    """(name, version) for an infer path, None for any other path."""
    parts = path.split("/")
    if len(parts) == 5 and parts[:3] == ["", "v2", "models"] and parts[4] == "infer":
        return parts[3], None
    if (
        len(parts) == 7
        and parts[:3] == ["", "v2", "models"]
        and parts[4] == "versions"
        and (parts[6] == "infer")
    ):
        return parts[3], parts[5]
    return None


async def respond(
    scope: Scope, send: Send, status: int, extra: dict[str, str], payload: bytes
) -> None:
    """Send an infer answer: JSON, or binary tensors after a JSON header when ``extra`` says
    where it ends; in one write where the HTTP protocol offers it."""
    binary = oip.HEADER_LENGTH in extra
    headers = [(k.encode(), v.encode()) for k, v in extra.items()]
    whole = scope.get("extensions", {}).get(WHOLE)
    if whole is not None:
        await whole["write"](status, HEAD_BINARY if binary else HEAD_JSON, headers, payload)
        return
    media = b"application/octet-stream" if binary else b"application/json"
    headers += [(b"content-type", media), (b"content-length", b"%d" % len(payload))]
    headers += SECURITY_HEADERS
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class InferApp:
    """Serves infer requests directly and passes everything else to ``app``. Infer requests
    get the browser defences here (allowed Host names, security headers), the same as
    ``app``'s behind ``BrowserDefences``."""

    def __init__(
        self,
        app: ASGIApp,
        manager: ModelManager,
        tokens: Tokens,
        limits: oip.Limits,
        request_timeout: float,
        hosts: AllowedHosts,
    ) -> None:
        self.app, self.manager, self.tokens, self.hosts = app, manager, tokens, hosts
        self.limits, self.request_timeout = limits, request_timeout
        self.pacer = RefusalPacer()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = infer_target(scope["path"]) if scope["type"] == "http" else None
        if target is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if not self.hosts.admits(scope):
            await misdirected(send)
            return
        headers = dict(scope["headers"])  # names in lower case (ASGI); values decoded on use
        refused = None  # the connection told to wait (Retry-After), paced by self.pacer
        try:
            status, extra, payload = await self.handle(target, headers, receive)
        except ModelcrateError as exc:
            status, extra, payload = exc.http_status, retry_headers(exc), error_json(exc)
            refused = scope.get("client") if status == 503 else None
            if refused is not None and (pause := self.pacer.delay(refused)):
                await asyncio.sleep(pause)  # asked again before its Retry-After passed
        await respond(scope, send, status, extra, payload)
        if refused is not None:
            self.pacer.refused(refused)  # its wait starts now that it has the refusal

    async def handle(
        self, target: tuple[str, str | None], headers: dict[bytes, bytes], receive: Receive
    ) -> tuple[int, dict[str, str], bytes]:
        authorize(self.tokens, _text(headers.get(b"authorization")), "infer")
        name, version = target
        if name not in self.manager.models:
            check_name(name)  # a name that cannot exist: 404 without repeating it
        content_type = headers.get(b"content-type", b"")
        if content_type not in ACCEPTED_TYPES:
            content_type = content_type.split(b";")[0].strip().lower()
            if content_type not in ACCEPTED_TYPES:
                raise RequestRefused(
                    f"content type {content_type.decode('latin-1')!r} is not accepted; send "
                    "JSON or the binary tensor extension",
                    status=415,
                )
        self.manager.admit(name, version)  # a full queue refuses before the body is decoded
        declared, limit = _text(headers.get(b"content-length")), self.limits.max_body_bytes
        body = await read_body(receive, declared, limit)
        split = _text(headers.get(HEADER_LENGTH))
        request = oip.decode_request(body, split, self.limits)
        manager = self.manager
        async with manager.using(name, version) as loaded:
            outputs = await manager.infer(
                loaded, request.inputs, self.request_timeout, asked=version, key=request.id
            )
            answered = manager.answered_by(loaded)  # the candidate, during a canary
            encode = functools.partial(
                oip.encode_response,
                model_name=name,
                model_version=answered,
                outputs=outputs,
                request=request,
                labels=loaded.manifest.labels,
            )
            if sum(v.nbytes for v in outputs.values()) > ENCODE_OFF_LOOP_BYTES:
                payload, header_length = await asyncio.to_thread(encode)
            else:  # small answers: a thread hop would cost more than encoding
                payload, header_length = encode()
        extra = {"model-version": answered}
        if header_length is not None:
            extra[oip.HEADER_LENGTH] = str(header_length)
        return 200, extra, payload
