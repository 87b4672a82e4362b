"""The registry over HTTP: push between registries (only missing files move), pull and load
from a server, scopes on writes, and uploads checked against their digests."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

import modelcrate as mc
from conftest import Server, make_onnx, run_cli
from modelcrate.trust.keys import generate

WRITER, READER = "writer-token-0123456789", "reader-token-0123456789"


@pytest.fixture
def remote(tmp_path: Path, start_server: Callable[..., Server]) -> Server:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        f'[[tokens]]\nname = "ci"\ntoken = "{WRITER}"\nscopes = ["read", "write"]\n'
        f'[[tokens]]\nname = "viewer"\ntoken = "{READER}"\nscopes = ["read"]\n'
    )
    target = mc.Registry.open(tmp_path / "remote")
    return start_server(target.root, "--token-file", str(tokens))


@pytest.fixture
def local(tmp_path: Path) -> mc.Registry:
    registry = mc.Registry.open(tmp_path / "local")
    for version, seed in (("1.0.0", 0), ("1.1.0", 0), ("2.0.0", 1)):
        source = make_onnx(
            tmp_path / f"src-{version}" / "tiny.onnx", seed=seed, external="tiny.onnx.data"
        )
        registry.publish(mc.pack(source, name="tiny", version=version))
    return registry


def push(local: mc.Registry, ref: str, url: str, *token: str) -> dict[str, object]:
    result = run_cli(
        "push",
        ref,
        url,
        "--registry",
        str(local.root),
        "--json",
        *(["--token", token[0]] if token else []),
    )
    assert result.returncode == 0, result.stderr
    pushed: dict[str, object] = json.loads(result.stdout)
    return pushed


def test_push_sends_only_missing_files_and_is_idempotent(
    local: mc.Registry, remote: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generate(tmp_path / "me")
    local.sign("tiny@1.0.0", tmp_path / "me.key")
    first = push(local, "tiny@1.0.0", remote.url, WRITER)
    assert first["created"] is True and first["uploaded"] == 2 and first["skipped"] == 0
    again = push(local, "tiny@1.0.0", remote.url, WRITER)
    assert again["created"] is False and again["uploaded"] == 0
    shared = push(local, "tiny@1.1.0", remote.url, WRITER)  # same weights, new version
    assert shared["created"] is True and shared["uploaded"] == 0 and shared["skipped"] == 2
    other = push(local, "tiny@2.0.0", remote.url, WRITER)  # same graph file, new weights
    assert other["uploaded"] == 1 and other["skipped"] == 1

    served = mc.Registry.open(tmp_path / "remote")
    assert [v.version for v in served.versions("tiny")] == ["1.0.0", "1.1.0", "2.0.0"]
    assert served.resolve("tiny@1.0.0").digest == local.resolve("tiny@1.0.0").digest
    assert len(served.signatures("tiny@1.0.0")) == 1  # signatures travel with the version
    assert {e.actor for e in served.audit() if e.action == "publish"} == {"token:ci"}

    monkeypatch.setenv("MODELCRATE_TOKEN", READER)  # reads need the read scope here
    pulled = run_cli(
        "pull",
        f"{remote.url}/tiny@1.0.0",
        "--to",
        str(tmp_path / "pulled"),
        "--trust",
        str(tmp_path / "me.pub"),
    )
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "pulled.sig").is_file()
    x = np.ones((2, 4), np.float32)
    model = mc.load(f"{remote.url}/tiny@2.0.0")
    expected = mc.load("tiny@2.0.0", registry=local).predict(x)["y"]
    np.testing.assert_array_equal(model.predict(x)["y"], expected)


def test_writes_need_a_write_token(local: mc.Registry, remote: Server) -> None:
    anonymous = run_cli("push", "tiny@1.0.0", remote.url, "--registry", str(local.root))
    assert anonymous.returncode == 2 and "missing or unknown bearer token" in anonymous.stderr
    viewer = run_cli(
        "push", "tiny@1.0.0", remote.url, "--registry", str(local.root), "--token", READER
    )
    assert viewer.returncode == 2 and "lacks the 'write' scope" in viewer.stderr
    conflict_source = mc.Registry.open(local.root.parent / "other")
    push(local, "tiny@1.0.0", remote.url, WRITER)
    # Same name and version, different content: the server refuses it as a conflict.
    source = make_onnx(local.root.parent / "conflict" / "tiny.onnx", seed=7)
    conflict_source.publish(mc.pack(source, name="tiny", version="1.0.0"))
    clash = run_cli(
        "push", "tiny@1.0.0", remote.url, "--registry", str(conflict_source.root), "--token", WRITER
    )
    assert clash.returncode == 1 and "already exists" in clash.stderr


def test_uploads_are_checked_against_their_digest(remote: Server) -> None:
    auth = {"authorization": f"Bearer {WRITER}"}
    data = b"some weights"
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    put = httpx.put(f"{remote.url}/v2/registry/files/{wrong}", content=data, headers=auth)
    assert put.status_code == 400 and "does not match its digest" in put.json()["error"]
    assert httpx.head(f"{remote.url}/v2/registry/files/{wrong}", headers=auth).status_code == 404
    right = hashlib.sha256(data).hexdigest()
    assert (
        httpx.put(f"{remote.url}/v2/registry/files/{right}", content=data, headers=auth).status_code
        == 201
    )
    assert (
        httpx.put(f"{remote.url}/v2/registry/files/{right}", content=data, headers=auth).json()[
            "stored"
        ]
        is False
    )  # idempotent
    for path in ("../../etc/passwd", "%2e%2e%2fetc%2fpasswd", "0" * 63):
        response = httpx.get(f"{remote.url}/v2/registry/files/{path}", headers=auth)
        assert response.status_code == 404, path
    missing = httpx.post(
        f"{remote.url}/v2/registry/versions", headers=auth, json={"manifest": "{}"}
    )
    assert missing.status_code == 400


def test_a_server_can_serve_models_from_another_servers_registry(
    local: mc.Registry,
    remote: Server,
    start_server: Callable[..., Server],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    push(local, "tiny@1.0.0", remote.url, WRITER)
    push(local, "tiny@2.0.0", remote.url, WRITER)
    source = mc.Registry.open(tmp_path / "remote")
    source.set_alias("tiny", "prod", "1.0.0")
    monkeypatch.setenv("MODELCRATE_TOKEN", READER)
    edge = start_server(remote.url, "tiny@prod", "--poll-interval", "0.1")
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    answer = httpx.post(f"{edge.url}/v2/models/tiny/infer", json=body, timeout=10).json()
    assert answer["model_version"] == "1.0.0"
    source.set_alias("tiny", "prod", "2.0.0")  # the edge server follows the other registry
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answer = httpx.post(f"{edge.url}/v2/models/tiny/infer", json=body, timeout=10).json()
        if answer["model_version"] == "2.0.0":
            break
    assert answer["model_version"] == "2.0.0"
    assert httpx.get(f"{edge.url}/v2/registry/models", timeout=5).status_code == 404


@pytest.mark.parametrize("form", ["url", "connection"])
def test_a_remote_load_downloads_only_the_files_its_runtime_reads(
    form: str, remote: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A torch-packed crate holds the weights three times (ONNX, .pt2, safetensors); a model
    loaded for ONNX Runtime from another registry fetches model.onnx alone: through an open
    connection (what a server following that registry does) or by URL. Loaded by URL, the
    model keeps its connection while it lives: ``to_torch()`` then fetches the .pt2, and
    the connection closes when the model goes."""
    import gc

    import torch

    from modelcrate.registry.remote import RemoteRegistry

    local = mc.Registry.open(tmp_path / "local")
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 3).eval()
    crate = mc.pack(module, example_inputs=(torch.zeros(1, 4),), name="lin", version="1.0.0")
    local.publish(crate)
    push(local, "lin@1.0.0", remote.url, WRITER)
    fetched: list[str] = []
    closed: list[RemoteRegistry] = []
    original_open, original_close = RemoteRegistry.open_file, RemoteRegistry.close

    def counted(self: RemoteRegistry, sha256: str) -> object:
        fetched.append(sha256)
        return original_open(self, sha256)

    def close(self: RemoteRegistry) -> None:
        closed.append(self)
        original_close(self)

    monkeypatch.setattr(RemoteRegistry, "open_file", counted)
    monkeypatch.setattr(RemoteRegistry, "close", close)
    monkeypatch.setenv("MODELCRATE_TOKEN", READER)
    if form == "url":
        model = mc.load(f"{remote.url}/lin@1.0.0")
    else:
        server = mc.open_registry(remote.url)
        try:
            model = mc.load("lin@1.0.0", registry=server)
        finally:
            server.close()
    x = np.random.default_rng(0).random((2, 4), dtype=np.float32)
    [name] = [s.name for s in model.manifest.signature.inputs]
    want = module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(next(iter(model.predict({name: x}).values())), want, rtol=1e-5)
    paths = {f.sha256: f.path for f in crate.manifest.files}
    assert len(crate.manifest.files) >= 3
    assert [paths[sha] for sha in fetched] == ["model.onnx"]
    if form == "url":
        assert closed == []
        rebuilt = model.to_torch(trainable=False)
        got = rebuilt(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5)
        assert [paths[sha] for sha in fetched] == ["model.onnx", "model.pt2"]
        del model, rebuilt
        gc.collect()
        assert len(closed) == 1, "the model's connection was not closed when it went"
