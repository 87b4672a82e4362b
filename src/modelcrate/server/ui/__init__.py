"""The web UI at ``/ui``: browse models, read a version's card, signature, metrics, parity
and lineage, download it, try it, compare two versions, and (with an admin token) move or
roll back aliases.

Server-rendered with Jinja2 (autoescaped); the model card is Markdown rendered with
raw HTML disabled; a small script of our own runs the try-it form and the admin
buttons. Nothing is fetched from elsewhere (the CSP forbids it). Pages need the ``read``
scope when the server has tokens (``?token=`` sets a cookie, only for a token that
authenticates); try-it needs ``infer`` and runs only versions this server serves,
through its model manager; admin actions need ``admin`` in the request itself.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from modelcrate.display import human_size, when
from modelcrate.errors import InputError, ModelcrateError, NotFound, status_of
from modelcrate.manifest import Manifest
from modelcrate.model import read_safetensors
from modelcrate.registry.api import Registry
from modelcrate.registry.lineage import LineageNode
from modelcrate.server.auth import Tokens, authorize
from modelcrate.server.hot_swap import ModelManager
from modelcrate.server.requests import (
    SMALL_BODY,
    Handler,
    acting,
    check_name,
    error_response,
    manager_of,
    read_model,
    registry_of,
)
from modelcrate.server.ui.charts import metric_charts

BASE = "/ui"
COOKIE = "modelcrate_token"
MAX_TRY_BODY = 4 * 1024 * 1024
LINEAGE_NODES = 200  # relatives read for a version page, each way
LINEAGE_COLUMN = 8  # boxes drawn per lineage column; the rest are counted in one box
COMPARE_TENSORS = 50  # changed tensors listed on the comparison page (largest change first)

_templates = Environment(
    loader=PackageLoader("modelcrate.server.ui", "templates"),
    autoescape=select_autoescape(["html"]),
)


class TryRequest(BaseModel):
    inputs: Any  # a nested list for a one-input model, or {input name: nested list}


class AliasRequest(BaseModel):
    version: str | None = None  # needed to set; rollback finds its own target
    allow_breaking: bool = False


def ui_routes() -> list[Route | Mount]:
    static = StaticFiles(packages=[("modelcrate.server.ui", "static")])
    api = f"{BASE}/api/models/{{name}}"
    return [
        Route(BASE, home),
        Route(f"{BASE}/", viewer(index)),
        Mount(f"{BASE}/static", app=static),
        Route(f"{BASE}/models/{{name}}", viewer(model)),
        Route(f"{BASE}/models/{{name}}/compare", viewer(compare)),
        Route(f"{BASE}/models/{{name}}/{{version}}", viewer(version)),
        Route(f"{BASE}/models/{{name}}/{{version}}/download", viewer(download)),
        Route(f"{api}/{{version}}/predict", viewer(predict, "infer"), methods=["POST"]),
        Route(f"{api}/aliases/{{alias}}/{{action}}", alias_action, methods=["POST"]),
    ]


def page(template: str, request: Request, status: int = 200, **values: Any) -> Response:
    body = _templates.get_template(template).render(base=BASE, **values)
    response = HTMLResponse(body, status_code=status)
    token = request.query_params.get("token")
    tokens: Tokens = request.app.state.tokens
    if token and tokens.token_for(f"Bearer {token}") is not None:  # never a bogus one
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
    return response


def viewer(handler: Handler, scope: str = "read") -> Handler:
    """A page or UI API route: the token comes from the header, ``?token=`` or the cookie;
    errors are an error page (or JSON under ``/ui/api``)."""

    async def endpoint(request: Request) -> Response:
        token = request.query_params.get("token") or request.cookies.get(COOKIE)
        header = request.headers.get("authorization") or (f"Bearer {token}" if token else None)
        try:
            authorize(request.app.state.tokens, header, scope)
            return await handler(request)
        except ModelcrateError as exc:
            if request.url.path.startswith(f"{BASE}/api/"):
                return error_response(exc)
            status = status_of(exc)
            message = str(exc)
            return page("error.html", request, status=status, status_text=status, message=message)

    return endpoint


async def home(_: Request) -> Response:
    return RedirectResponse(f"{BASE}/")


async def index(request: Request) -> Response:
    registry = registry_of(request)
    query, tag = request.query_params.get("q"), request.query_params.get("tag")
    found = await run_in_threadpool(registry.list_models, query, tag=tag)
    every = await run_in_threadpool(registry.list_models)
    tags = sorted({t for m in every for t in m.tags})
    return page("models.html", request, models=found, tags=tags, tag=tag, query=query)


async def model(request: Request) -> Response:
    name = request.path_params["name"]
    values = await run_in_threadpool(_model_view, registry_of(request), name)
    return page("model.html", request, **values)


async def version(request: Request) -> Response:
    ref = f"{request.path_params['name']}@{request.path_params['version']}"
    values = await run_in_threadpool(_version_view, registry_of(request), ref)
    served = _serves(manager_of(request), values["m"])
    return page("version.html", request, served=served, **values)


async def compare(request: Request) -> Response:
    name = request.path_params["name"]
    a, b = request.query_params.get("a"), request.query_params.get("b")
    if not a or not b:
        raise InputError("compare needs ?a=VERSION&b=VERSION")
    values = await run_in_threadpool(_compare_view, registry_of(request), name, a, b)
    return page("compare.html", request, name=name, **values)


async def download(request: Request) -> Response:
    ref = f"{request.path_params['name']}@{request.path_params['version']}"
    crate = await run_in_threadpool(registry_of(request).get, ref)
    scratch = Path(tempfile.mkdtemp(prefix="modelcrate-download-"))
    path = await run_in_threadpool(crate.save, scratch / f"{crate.name}-{crate.version}.crate")
    cleanup = BackgroundTask(_remove, scratch)
    return FileResponse(
        path, filename=path.name, media_type="application/x-tar", background=cleanup
    )


async def predict(request: Request) -> Response:
    """Try-it runs through the model manager, like ``/v2/models/…/infer``: only versions
    this server serves (trust policy, decryption and memory checks already passed)."""
    manager = manager_of(request)
    name, version = check_name(request.path_params["name"]), request.path_params["version"]
    document = await read_model(request, TryRequest, MAX_TRY_BODY, '{"inputs": [...]}')
    async with manager.using(name, version) as loaded:  # lists become arrays when checked
        outputs = await manager.infer(loaded, document.inputs)
    labels = loaded.manifest.labels
    return JSONResponse({"outputs": {n: _describe(v, labels) for n, v in outputs.items()}})


async def alias_action(request: Request) -> Response:
    """Admin alias moves: the token must be in the Authorization header (never the cookie),
    so no page on another site can make the browser do this."""
    try:
        authorize(request.app.state.tokens, request.headers.get("authorization"), "admin")
        registry = acting(request)  # the audit log names the token that acts
        name, alias = request.path_params["name"], request.path_params["alias"]
        action = request.path_params["action"]
        if action not in ("set", "rollback"):
            raise NotFound(f"no alias action {action!r}")
        document = await read_model(request, AliasRequest, SMALL_BODY, '{"version": "..."}')
        allow = document.allow_breaking
        if action == "rollback":
            event = await run_in_threadpool(registry.rollback, name, alias, allow_breaking=allow)
        elif document.version is None:
            raise InputError('moving an alias needs {"version": "..."}')
        else:
            event = await run_in_threadpool(
                registry.set_alias, name, alias, document.version, allow_breaking=allow
            )
    except ModelcrateError as exc:
        return error_response(exc)
    return JSONResponse(vars(event))


def _serves(manager: ModelManager, manifest: Manifest) -> bool:
    """Whether this server runs exactly this version now (try-it runs nothing else)."""
    try:
        manager.lookup(manifest.name, manifest.digest)  # by digest: exactly this version
    except NotFound:
        return False
    return True


def _model_view(registry: Registry, name: str) -> dict[str, Any]:
    rows = []
    for info in registry.versions(name):
        manifest = registry.manifest(f"{name}@{info.version}")
        signed = bool(registry.signatures(f"{name}@{info.version}"))
        rows.append(
            {
                **vars(info),
                "size_text": human_size(info.size),
                "when": when(info.created_at),
                "signed": signed,
                "encrypted": manifest.encryption is not None,
            }
        )
    aliases = {}
    for alias in sorted({a for row in rows for a in row["aliases"]}):
        aliases[alias] = [
            {**vars(e), "when": when(e.at)} for e in registry.alias_history(name, alias)
        ]
    evaluations = registry.evaluations(name)
    rollouts = [r for r in (registry.rollout(name, a) for a in sorted(aliases)) if r is not None]
    return {
        "rollouts": [
            {**vars(r), "when": when(r.started_at), "metrics": _figure_names(r.figures)}
            for r in rollouts
        ],
        "name": name,
        "versions": rows,
        "aliases": aliases,
        "charts": metric_charts(evaluations),
        "evaluations": [{**vars(e), "when": when(e.at)} for e in evaluations[-20:]],
    }


def _figure_names(figures: dict[str, dict[str, float]]) -> list[str]:
    return sorted({k for values in figures.values() for k in values})


def _version_view(registry: Registry, ref: str) -> dict[str, Any]:
    from markdown_it import MarkdownIt

    from modelcrate.trust.signing import signer_id

    info = registry.resolve(ref)
    manifest = registry.manifest(ref)
    crate = registry.get(ref)
    card_html = None
    if manifest.model_card and manifest.encrypted(manifest.model_card) is None:
        text = crate.read_bytes(manifest.model_card).decode("utf-8", "replace")
        if text.startswith("---"):  # YAML front matter is metadata, not prose
            text = text.split("---", 2)[-1]
        card_html = MarkdownIt("commonmark", {"html": False}).render(text)
    policy = registry.policy()
    signers = []
    for bundle in registry.signatures(ref):
        kid = signer_id(bundle) or "unknown key"
        signers.append(policy.keys.describe(kid) if kid in policy.keys.pems else kid[:16])
    first = manifest.signature.inputs[0]
    image_input = len(first.shape) == 4 and first.shape[1] in (1, 3)
    example = _example(crate, manifest)
    report = manifest.report.to_dict() if manifest.report else {}
    return {
        "m": manifest,
        "aliases": info.aliases,
        "signers": signers,
        "card_html": card_html,
        "image_input": image_input,
        "example": example,
        "report": report,
        "lineage_svg": _lineage_svg(registry, ref),
    }


def _example(crate: Any, manifest: Any) -> str:
    """A first input to try: the crate's first sample, else zeros of the input's shape."""
    spec = manifest.signature.inputs[0]
    if manifest.samples and not crate.encrypted:
        samples = read_safetensors(crate.read_bytes(manifest.samples), manifest.samples)
        if spec.name in samples:
            return json.dumps(np.round(samples[spec.name][:1].astype(float), 4).tolist())
    shape = [1 if d == -1 else d for d in spec.shape]
    return json.dumps(np.zeros(shape).tolist())


def _lineage_svg(registry: Registry, ref: str) -> str:
    """The lineage as columns by depth, at most LINEAGE_COLUMN boxes per column (a last box
    says how many more), with a line for each parent-child pair both of whose boxes show."""
    from html import escape

    graph = registry.lineage(ref, limit=LINEAGE_NODES)
    columns: dict[int, list[LineageNode]] = {0: []}
    for node in graph.ancestors:
        columns.setdefault(-node.depth, []).append(node)
    for node in graph.descendants:
        columns.setdefault(node.depth, []).append(node)
    order = sorted(columns)
    width, height = 190, 44
    rows = min(max(1, *(len(v) for v in columns.values())), LINEAGE_COLUMN + 1)
    parts = [
        f'<svg class="lineage" role="img" aria-label="lineage" width="{len(order) * 230}" '
        f'height="{rows * 60 + 10}" xmlns="http://www.w3.org/2000/svg">'
    ]
    centers: dict[str, tuple[int, int]] = {}
    parents: dict[str, list[str]] = {graph.digest: []}

    def box(col: int, row: int, depth: int, name: str, operation: str | None) -> None:
        x, y = 10 + col * 230, 10 + row * 60
        klass = ' class="self"' if depth == 0 else ""
        parts.append(f'<rect{klass} x="{x}" y="{y}" width="{width}" height="{height}" rx="4"/>')
        parts.append(f'<text x="{x + 8}" y="{y + 18}">{escape(name)}</text>')
        if operation:
            parts.append(
                f'<text x="{x + 8}" y="{y + 35}" fill="#5b6577">{escape(operation)}</text>'
            )

    for col, depth in enumerate(order):
        if depth == 0:
            box(col, 0, 0, graph.ref, graph.operation)
            centers[graph.digest] = (10 + col * 230, 10 + height // 2)
            continue
        nodes = columns[depth]
        for row, node in enumerate(nodes[:LINEAGE_COLUMN]):
            box(col, row, depth, node.ref, node.operation)
            centers[node.digest] = (10 + col * 230, 10 + row * 60 + height // 2)
            parents[node.digest] = node.parents
        if len(nodes) > LINEAGE_COLUMN:
            box(col, LINEAGE_COLUMN, depth, f"… {len(nodes) - LINEAGE_COLUMN} more", None)
    parents[graph.digest] = [n.digest for n in graph.ancestors if n.depth == 1]
    for child, found in parents.items():
        for parent in found:
            if child in centers and parent in centers:
                (x1, y1), (x2, y2) = centers[parent], centers[child]
                parts.append(f'<line x1="{x1 + width}" y1="{y1}" x2="{x2}" y2="{y2}"/>')
    if graph.truncated:
        parts.append(
            f'<text x="10" y="{rows * 60 + 8}">(more than {LINEAGE_NODES} '
            "relatives; the graph shows the nearest)</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _compare_view(registry: Registry, name: str, a: str, b: str) -> dict[str, Any]:
    """The facts side by side, and what ``modelcrate diff`` says (the same CrateDiff)."""
    from modelcrate.diff import diff_crates

    left, right = registry.get(f"{name}@{a}"), registry.get(f"{name}@{b}")
    changes = diff_crates(left, right)

    def facts(manifest: Manifest) -> dict[str, str]:
        values = {
            "digest": manifest.digest[:19] + "…",
            "size": human_size(sum(f.size for f in manifest.files)),
            "artifacts": ", ".join(f"{x.kind} ({x.precision})" for x in manifest.artifacts)
            or "composition",
            "operation": (manifest.lineage.operation if manifest.lineage else None) or "",
        }
        source = manifest.provenance.source if manifest.provenance else None
        values["source commit"] = source.commit[:12] if source and source.commit else "–"
        values.update({f"metric: {k}": f"{v:.4g}" for k, v in manifest.metrics.items()})
        if manifest.report:
            report = manifest.report.to_dict()
            values.update({f"report: {k}": str(v) for k, v in report.items() if k != "parent"})
        return values

    one, two = facts(left.manifest), facts(right.manifest)
    labels = list(dict.fromkeys([*one, *two]))
    rows = [(label, one.get(label, "–"), two.get(label, "–")) for label in labels]
    tensors = sorted(changes.tensors.changes, key=lambda c: -(c.max_abs_delta or float("inf")))
    return {
        "a": left.manifest,
        "b": right.manifest,
        "rows": rows,
        "diff": changes,
        "tensors": tensors[:COMPARE_TENSORS],
        "more_tensors": max(0, len(tensors) - COMPARE_TENSORS),
    }


def _describe(value: np.ndarray, labels: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"shape": list(value.shape)}
    if value.ndim == 2 and value.shape[0] >= 1 and value.dtype.kind == "f":
        scores = value[0]
        shifted = np.exp(scores - scores.max())
        shares = shifted / shifted.sum()
        top = np.argsort(scores)[::-1][:5]
        out["top"] = [
            {
                "label": labels[i] if labels and i < len(labels) else str(i),
                "score": float(scores[i]),
                "share": float(shares[i]),
            }
            for i in top
        ]
    out["data"] = value.ravel()[:1000].tolist()
    return out


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
