"""The ASGI app: Open Inference Protocol v2 routes, model repository extension, metrics.

The infer route itself is the fast path in ``infer.py``; the rest are
Starlette routes here. Every error is a JSON body ``{"error": "..."}`` that
names the caller's mistake and never a path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import modelcrate
from modelcrate.errors import NotFound, RuntimeUnavailable
from modelcrate.registry.api import Registry
from modelcrate.server import oip
from modelcrate.server.auth import Tokens
from modelcrate.server.browser import AllowedHosts, BrowserDefences
from modelcrate.server.hot_swap import ModelManager, ServedModel
from modelcrate.server.http_protocol import WHOLE
from modelcrate.server.infer import InferApp
from modelcrate.server.registry_api import registry_routes
from modelcrate.server.requests import (
    SMALL_BODY,
    check_name,
    error_response,
    guarded,
    log_access,
    manager_of,
    parse_body,
    read_body,
)
from modelcrate.server.ui import ui_routes

log = logging.getLogger("modelcrate.server")


@dataclass(frozen=True)
class AppSettings:
    limits: oip.Limits = field(default_factory=oip.Limits)
    request_timeout: float = 30.0
    access_log: bool = False
    hosts: AllowedHosts = field(default_factory=lambda: AllowedHosts(None))
    grpc: tuple[str, int, bool] | None = None  # gRPC host, port, shared by several workers


def create_app(manager: ModelManager, tokens: Tokens, settings: AppSettings) -> ASGIApp:
    """Build the server's ASGI app around a model manager (no module globals): handlers find
    the manager and the tokens in ``request.app.state``."""
    routes = oip_routes()
    # A server reading models from another server offers no registry API or UI itself.
    if isinstance(manager.registry, Registry):
        routes += registry_routes() + ui_routes()

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await manager.start()
        grpc_server = await start_grpc(manager, tokens, settings) if settings.grpc else None
        outbox = None
        if isinstance(manager.registry, Registry):
            outbox = asyncio.get_running_loop().create_task(send_webhooks(manager.registry))
        try:
            yield
        finally:
            if outbox is not None:
                outbox.cancel()
            if grpc_server is not None:
                await grpc_server.stop(grace=5)
            await manager.stop()

    starlette = Starlette(routes=routes, lifespan=lifespan)
    starlette.state.manager, starlette.state.tokens = manager, tokens
    app: ASGIApp = InferApp(
        BrowserDefences(starlette, settings.hosts),
        manager,
        tokens,
        settings.limits,
        settings.request_timeout,
        settings.hosts,
    )
    if settings.access_log:
        app = AccessLog(app)
    return app


WEBHOOK_POLL_S = 1.0


async def send_webhooks(registry: Registry) -> None:
    """Send the registry's due webhook deliveries (retries included) every second."""
    while True:
        await asyncio.sleep(WEBHOOK_POLL_S)
        try:
            await asyncio.to_thread(registry.deliver_webhooks)
        except Exception:  # the loop must outlive a database hiccup
            log.exception("sending webhooks failed")


async def start_grpc(manager: ModelManager, tokens: Tokens, settings: AppSettings) -> Any:
    """The gRPC server beside the REST app (grpcio is imported only when it is asked for)."""
    try:
        from modelcrate.server import grpc as oip_grpc
    except ImportError:
        raise RuntimeUnavailable(
            "serve --grpc-port needs grpcio: pip install 'modelcrate[grpc]'"
        ) from None
    assert settings.grpc is not None
    host, port, shared = settings.grpc
    service = oip_grpc.InferenceService(
        manager, tokens, settings.limits, settings.request_timeout, settings.access_log
    )
    return await oip_grpc.start(service, host, port, shared_port=shared)


def oip_routes() -> list[Route | Mount]:
    """OIP v2 routes other than infer (``infer.py``), the repository extension, metrics."""
    model = "/v2/models/{name}"
    version = "/v2/models/{name}/versions/{version}"
    repository = "/v2/repository/models/{name}"
    return [
        Route("/v2/health/live", guarded(None, live)),
        Route("/v2/health/ready", guarded(None, ready)),
        Route("/v2", guarded("read", server_metadata)),
        Route(model, guarded("read", model_metadata)),
        Route(version, guarded("read", model_metadata)),
        Route(model + "/ready", guarded("read", model_ready)),
        Route(version + "/ready", guarded("read", model_ready)),
        Route(model + "/stats", guarded("read", stats)),
        Route(version + "/stats", guarded("read", stats)),
        Route("/v2/repository/index", guarded("read", repository_index), methods=["POST", "GET"]),
        Route(repository + "/load", guarded("admin", repository_load), methods=["POST"]),
        Route(repository + "/unload", guarded("admin", repository_unload), methods=["POST"]),
        Route("/metrics", guarded("read", metrics)),
        Route("/v2/openapi.json", guarded(None, openapi)),
    ]


async def live(_: Request) -> Response:
    return JSONResponse({"live": True})


async def ready(request: Request) -> Response:
    is_ready = all(m.current is not None for m in manager_of(request).models.values())
    # OIP: 200 means ready, a 4xx means not ready (Triton answers 400 too).
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 400)


async def server_metadata(_: Request) -> Response:
    return JSONResponse(
        {"name": "modelcrate", "version": modelcrate.__version__, "extensions": oip.EXTENSIONS}
    )


async def model_metadata(request: Request) -> Response:
    served, loaded = manager_of(request).lookup(*name_version(request))
    manifest = loaded.manifest
    body: dict[str, Any] = {
        "name": served.name,
        "versions": [loaded.version],
        "platform": "onnxruntime_onnx",
        "inputs": [
            oip.tensor_metadata(s.name, s.dtype, s.shape) for s in manifest.signature.inputs
        ],
        "outputs": [
            oip.tensor_metadata(s.name, s.dtype, s.shape) for s in manifest.signature.outputs
        ],
        "parameters": {"digest": loaded.digest, "selector": str(served.selector)},
    }
    if served.error:
        body["error"] = served.error
    return JSONResponse(body)


async def model_ready(request: Request) -> Response:
    manager = manager_of(request)
    name, version = name_version(request)
    try:
        served, loaded = manager.lookup(name, version)
    except NotFound as exc:
        if name not in manager.models:
            return error_response(exc)
        # OIP: a served model that is not ready answers 400 (Triton does too).
        return JSONResponse({"error": str(exc), "code": "not_ready"}, status_code=400)
    body = {"name": served.name, "version": loaded.version, "ready": True}
    if served.error:
        body["error"] = served.error
    return JSONResponse(body)


async def stats(request: Request) -> Response:
    served, loaded = manager_of(request).lookup(*name_version(request))
    return JSONResponse({"model_stats": [model_stats(served, loaded.batcher.depth)]})


async def repository_index(request: Request) -> Response:
    return JSONResponse([m.entry() for m in manager_of(request).models.values()])


class LoadParameters(BaseModel):
    ref: str | None = None  # a registry reference; never a URL or a path


class LoadRequest(BaseModel):
    """``POST /v2/repository/models/{name}/load`` (all optional, as tritonclient sends it)."""

    parameters: LoadParameters = Field(default_factory=LoadParameters)


async def repository_load(request: Request) -> Response:
    body = await read_body(request.receive, request.headers.get("content-length"), SMALL_BODY)
    load = parse_body(LoadRequest, body or b"{}", "a JSON object {parameters: {ref}}")
    served = await manager_of(request).load(
        check_name(request.path_params["name"]), load.parameters.ref
    )
    return JSONResponse(served.entry())


async def repository_unload(request: Request) -> Response:
    manager_of(request).unload(check_name(request.path_params["name"]))
    return JSONResponse({})


async def openapi(_: Request) -> Response:
    return JSONResponse(openapi_document())


async def metrics(request: Request) -> Response:
    manager = manager_of(request)
    for served in manager.models.values():
        depth = served.current.batcher.depth if served.current else 0
        manager.metrics.queue_depth.labels(served.name).set(depth)
    return Response(manager.metrics.render(), media_type="text/plain; version=0.0.4")


def name_version(request: Request) -> tuple[str, str | None]:
    return check_name(request.path_params["name"]), request.path_params.get("version")


def model_stats(served: ServedModel, depth: int) -> dict[str, Any]:
    current = served.current
    return {
        "name": served.name,
        "version": current.version if current else "",
        "selector": str(served.selector),
        "inference_count": int(served.stats["requests"]),
        "failure_count": int(served.stats["failures"]),
        "swap_count": served.swaps,
        "loaded_at": served.loaded_at,
        "queue_depth": depth,
        "inflight": current.inflight if current else 0,
    }


@cache
def openapi_document() -> dict[str, Any]:
    """The server's OpenAPI 3 document, shipped beside the crate schema."""
    text = resources.files("modelcrate.schemas").joinpath("openapi.json").read_text()
    document: dict[str, Any] = json.loads(text)
    return document


class AccessLog:
    """Structured JSON access log: one line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 0
        if WHOLE in scope.get("extensions", {}):  # answers must come through capture
            extensions = {k: v for k, v in scope["extensions"].items() if k != WHOLE}
            scope = {**scope, "extensions": extensions}

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            client = (scope.get("client") or ["", 0])[0]
            log_access(scope["method"], scope["path"], status, started, client)
