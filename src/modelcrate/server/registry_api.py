"""The registry over HTTP: what ``modelcrate push``/``pull`` and remote ``load`` talk to.

Reads need the ``read`` scope; uploads, publishes and alias moves need ``write``
(or ``admin``), and are refused when the server runs without tokens. Storage
keys come from digests only: a client never names a path. An upload is stored
only if its bytes hash to the digest in its URL, and uploading a file the
registry already has is a no-op, so an interrupted push is simply run again.

    GET  /v2/registry/models                          models (name, latest, aliases…)
    GET  /v2/registry/resolve?ref=NAME@VERSION|ALIAS   name, version, digest, size
    GET  /v2/registry/manifests/{digest}               crate.json of a version
    GET  /v2/registry/signatures/{digest}              stored signature bundles
    HEAD /v2/registry/files/{sha256}                   200 when stored, else 404
    GET  /v2/registry/files/{sha256}                   a file's bytes
    PUT  /v2/registry/files/{sha256}                   upload a file (Content-Length)
    POST /v2/registry/versions                         publish {manifest, signatures}
    PUT  /v2/registry/models/{name}/aliases/{alias}    move an alias {version, allow_breaking}
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from functools import partial
from typing import Any

from pydantic import BaseModel
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from modelcrate.crate import Crate
from modelcrate.errors import InputError, NotFound
from modelcrate.manifest import parse_manifest
from modelcrate.registry.blobs import CHUNK, check_digest
from modelcrate.server.requests import SMALL_BODY, acting, guarded, read_model, registry_of

MAX_UPLOAD_BYTES = 64 * 1024**3
MAX_PUBLISH_BODY = 8 * 1024 * 1024


class PublishRequest(BaseModel):
    manifest: str  # crate.json text; its files are uploaded first
    signatures: list[str] = []


class AliasRequest(BaseModel):
    version: str
    allow_breaking: bool = False  # move even if the target breaks the current one's clients


def registry_routes() -> list[Route]:
    base = "/v2/registry"
    files = f"{base}/files/{{sha256}}"
    return [
        Route(f"{base}/models", guarded("read", models)),
        Route(f"{base}/resolve", guarded("read", resolve)),
        Route(f"{base}/manifests/{{digest}}", guarded("read", manifest)),
        Route(f"{base}/signatures/{{digest}}", guarded("read", signatures)),
        Route(files, guarded("read", file_get), methods=["GET"]),
        Route(files, guarded("read", file_head), methods=["HEAD"]),
        Route(files, guarded("write", file_put), methods=["PUT"]),
        Route(f"{base}/versions", guarded("write", publish), methods=["POST"]),
        Route(
            f"{base}/models/{{name}}/aliases/{{alias}}", guarded("write", alias), methods=["PUT"]
        ),
    ]


async def models(request: Request) -> Response:
    found = await run_in_threadpool(registry_of(request).list_models)
    return JSONResponse([vars(m) for m in found])


async def resolve(request: Request) -> Response:
    ref = request.query_params.get("ref")
    if not ref:
        raise InputError("give ?ref=name@version (or an alias or digest)")
    info = await run_in_threadpool(registry_of(request).resolve, ref)
    return JSONResponse(vars(info))


async def manifest(request: Request) -> Response:
    registry = registry_of(request)
    info = await run_in_threadpool(registry.by_digest, request.path_params["digest"])
    data = await run_in_threadpool(registry.manifest, f"{info.name}@{info.digest}")
    return Response(data.file_bytes(), media_type="application/json")


async def signatures(request: Request) -> Response:
    registry = registry_of(request)
    info = await run_in_threadpool(registry.by_digest, request.path_params["digest"])
    bundles = await run_in_threadpool(registry.signatures, f"{info.name}@{info.digest}")
    return JSONResponse({"bundles": [b.decode() for b in bundles]})


async def file_head(request: Request) -> Response:
    sha = check_digest(request.path_params["sha256"])
    stored = await run_in_threadpool(registry_of(request).files.stored, sha)
    return Response(status_code=200 if stored else 404)


async def file_get(request: Request) -> Response:
    registry = registry_of(request)
    sha = check_digest(request.path_params["sha256"])
    if not await run_in_threadpool(registry.files.stored, sha):
        raise NotFound(f"no file sha256:{sha[:12]}… in this registry")
    stream = registry.files.open(sha)

    def chunks() -> Iterator[bytes]:
        with stream:
            while block := stream.read(CHUNK):
                yield block

    return StreamingResponse(iterate_in_threadpool(chunks()), media_type="application/octet-stream")


async def file_put(request: Request) -> Response:
    registry = registry_of(request)
    sha = check_digest(request.path_params["sha256"])
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():
        raise InputError("an upload needs a Content-Length")
    size = int(declared)
    if size > MAX_UPLOAD_BYTES:
        raise InputError(f"an upload is limited to {MAX_UPLOAD_BYTES} bytes")
    if await run_in_threadpool(registry.files.reuse, sha) is not None:
        return JSONResponse({"sha256": sha, "stored": False})  # already here
    with tempfile.TemporaryFile() as staged:
        received = 0
        async for block in request.stream():
            received += len(block)
            if received > size:
                raise InputError("the upload is longer than its Content-Length")
            staged.write(block)
        staged.seek(0)
        await run_in_threadpool(registry.receive, staged, sha, size)
    return JSONResponse({"sha256": sha, "stored": True}, status_code=201)


async def publish(request: Request) -> Response:
    shape = "{manifest: <crate.json text>, signatures: [...]}"
    document = await read_model(request, PublishRequest, MAX_PUBLISH_BODY, shape)
    parsed = parse_manifest(document.manifest.encode())
    bundles = [b.encode() for b in document.signatures]
    actor = acting(request)

    def run() -> Any:
        missing = [f.path for f in parsed.files if not actor.files.stored(f.sha256)]
        if missing:
            raise InputError(f"upload these files first: {missing}")
        crate = Crate(parsed, actor.files.source(parsed))
        return actor.publish(crate, signatures=bundles)

    result = await run_in_threadpool(run)
    return JSONResponse(vars(result), status_code=201 if result.created else 200)


async def alias(request: Request) -> Response:
    document = await read_model(request, AliasRequest, SMALL_BODY, "{version: ...}")
    name, alias = request.path_params["name"], request.path_params["alias"]
    event = await run_in_threadpool(
        partial(acting(request).set_alias, allow_breaking=document.allow_breaking),
        name,
        alias,
        document.version,
    )
    return JSONResponse(vars(event))
