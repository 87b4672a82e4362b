"""`serve --cache-size`: identical requests to one version are answered from the cache
(counted in /metrics); another input, or a new version after a hot swap, is computed."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

import modelcrate as mc
from conftest import Server, make_onnx


def cache_counts(server: Server) -> dict[str, float]:
    counts = {}
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("modelcrate_cache_requests_total{"):
            result = line.split('result="')[1].split('"')[0]
            counts[result] = float(line.split()[-1])
    return counts


def infer(server: Server, x: list[float]) -> httpx.Response:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x}]}
    return httpx.post(f"{server.url}/v2/models/tiny/infer", json=body)


def test_identical_requests_hit_the_cache_of_their_version(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    registry = mc.Registry.open(tmp_path / "registry")
    for version, seed in (("1.0.0", 0), ("1.1.0", 1)):
        source = make_onnx(tmp_path / version / "m.onnx", seed=seed)
        registry.publish(mc.pack(source, name="tiny", version=version))
    registry.set_alias("tiny", "prod", "1.0.0")
    server = start_server(
        registry.root, "tiny@prod", "--cache-size", "2", "--poll-interval", "0.05"
    )
    first, again = infer(server, [1, 2, 3, 4]), infer(server, [1, 2, 3, 4])
    assert first.json()["outputs"] == again.json()["outputs"]
    assert cache_counts(server) == {"miss": 1.0, "hit": 1.0}
    infer(server, [4, 3, 2, 1])  # another input: computed
    assert cache_counts(server) == {"miss": 2.0, "hit": 1.0}

    registry.set_alias("tiny", "prod", "1.1.0")
    deadline = time.monotonic() + 20
    while infer(server, [9, 9, 9, 9]).headers.get("model-version") != "1.1.0":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    moved = infer(server, [1, 2, 3, 4])  # the new version computes its own answer
    assert moved.headers["model-version"] == "1.1.0"
    expected = mc.load("tiny@1.1.0", registry=registry).predict(
        np.array([[1, 2, 3, 4]], np.float32)
    )["y"]
    np.testing.assert_allclose(moved.json()["outputs"][0]["data"], expected.ravel(), rtol=1e-6)
    assert moved.json()["outputs"] != first.json()["outputs"]


def test_cache_size_must_not_be_negative(tmp_path: Path) -> None:
    from conftest import run_cli

    result = run_cli("serve", "tiny", "--cache-size", "-1", "--registry", str(tmp_path))
    assert result.returncode == 2 and "--cache-size must be 0 (off) or more" in result.stderr
