"""Alias moves under load: zero failed or mixed answers, never back to an older version."""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

import modelcrate as mc
from conftest import Server, corrupt_stored, make_onnx, tiny_weights
from modelcrate.server.hot_swap import LOADER_NICENESS, BatchConfig, ModelManager
from modelcrate.server.metrics import Metrics

SWAPS = 20
X = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)


def expected_y(seed: int) -> np.ndarray:
    weight, bias = tiny_weights(seed)
    return X @ weight + bias


@pytest.mark.slow
def test_twenty_swaps_under_concurrent_load(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    registry = mc.Registry.open(tmp_path / "registry")
    for seed in range(SWAPS + 1):
        source = make_onnx(tmp_path / f"v{seed}" / "m.onnx", seed=seed)
        registry.publish(mc.pack(source, name="tiny", version=f"1.0.{seed}"))
    registry.set_alias("tiny", "prod", "1.0.0")
    server = start_server(registry.root, "tiny@prod", "--poll-interval", "0.05")
    url = server.url + "/v2/models/tiny/versions/prod/infer"
    body = {
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": X.ravel().tolist()}]
    }
    stop = threading.Event()
    failures: list[str] = []
    counts = [0] * 4

    def client(slot: int) -> None:
        newest = -1
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                try:
                    response = http.post(url, json=body)
                except httpx.HTTPError as exc:
                    failures.append(f"transport: {exc}")
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text}")
                    continue
                answer = response.json()
                seed = int(answer["model_version"].rsplit(".", 1)[1])
                y = np.asarray(answer["outputs"][0]["data"], np.float32).reshape(1, 2)
                if not np.allclose(y, expected_y(seed), atol=1e-5):
                    failures.append(f"mixed answer: version {seed} with another's output")
                if seed < newest:
                    failures.append(f"went back from 1.0.{newest} to 1.0.{seed}")
                newest = max(newest, seed)
                counts[slot] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(counts))]
    for thread in threads:
        thread.start()
    follow_times = []
    try:
        for seed in range(1, SWAPS + 1):
            time.sleep(0.1)
            moved = time.perf_counter()
            registry.set_alias("tiny", "prod", f"1.0.{seed}")
            follow_times.append(wait_for_version(server, f"1.0.{seed}") - moved)
        time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert failures == []
    assert sum(counts) > SWAPS * 4, counts  # the load really ran during the swaps
    assert statistics.median(follow_times) < 1.0, follow_times
    stats = httpx.get(server.url + "/v2/models/tiny/stats").json()["model_stats"][0]
    assert stats["swap_count"] == SWAPS + 1 and stats["failure_count"] == 0
    # rollback is followed too
    registry.rollback("tiny", "prod")
    wait_for_version(server, f"1.0.{SWAPS - 1}")


def wait_for_version(server: Server, version: str, timeout: float = 10.0) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        meta = httpx.get(server.url + "/v2/models/tiny").json()
        if meta["versions"] == [version]:
            return time.perf_counter()
        time.sleep(0.01)
    raise AssertionError(f"server never switched to {version}: {server.output()[-2000:]}")


def test_a_version_that_fails_to_load_never_replaces_the_running_one(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    registry = mc.Registry.open(tmp_path / "registry")
    good = registry.publish(
        mc.pack(make_onnx(tmp_path / "a" / "m.onnx"), name="tiny", version="1.0.0")
    )
    registry.publish(
        mc.pack(make_onnx(tmp_path / "b" / "m.onnx", seed=5), name="tiny", version="2.0.0")
    )
    registry.set_alias("tiny", "prod", "1.0.0")
    # Corrupt 2.0.0's model blob (shared by nothing else) after it was published.
    corrupt_stored(registry, "tiny@2.0.0", "model.onnx")
    server = start_server(registry.root, "tiny@prod", "--poll-interval", "0.05")
    registry.set_alias("tiny", "prod", "2.0.0")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        meta = httpx.get(server.url + "/v2/models/tiny").json()
        if "error" in meta:
            break
        time.sleep(0.05)
    assert meta["versions"] == ["1.0.0"] and meta["parameters"]["digest"] == good.digest
    assert "tiny@2.0.0 failed to load" in meta["error"] and "model.onnx" in meta["error"]
    ready = httpx.get(server.url + "/v2/models/tiny/ready").json()
    assert ready["ready"] is True and "failed to load" in ready["error"]
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    answer = httpx.post(server.url + "/v2/models/tiny/infer", json=body)
    assert answer.status_code == 200 and answer.json()["model_version"] == "1.0.0"
    assert "failed to load" in server.output()  # and it is in the log


def test_a_retired_version_is_freed_without_a_full_collection(tmp_path: Path) -> None:
    """A swap frees the old session by dropping references (and ends its model thread); a
    full cycle collection (which stalls every request for ~100 ms on a server's heap) is
    only the fallback."""
    registry = mc.Registry.open(tmp_path / "registry")
    for seed in range(2):
        source = make_onnx(tmp_path / f"v{seed}" / "m.onnx", seed=seed)
        registry.publish(mc.pack(source, name="tiny", version=f"1.0.{seed}"))
    registry.set_alias("tiny", "prod", "1.0.0")
    manager = ModelManager(registry, ["tiny@prod"], batch=BatchConfig(), metrics=Metrics())
    collections: list[int] = []
    manager._collect = lambda: collections.append(1)  # type: ignore[method-assign]

    async def scenario() -> tuple[bool, str, bool]:
        await manager.start()
        served = manager.models["tiny"]
        assert served.current is not None and served.current.model is not None
        old = weakref.ref(served.current.model)
        await manager.infer(served.current, {"x": X})
        loop = asyncio.get_running_loop()
        its_thread = await loop.run_in_executor(served.current.executor, threading.get_ident)
        registry.set_alias("tiny", "prod", "1.0.1")
        await manager.refresh(served)
        for _ in range(100):  # retirement runs as its own task
            await asyncio.sleep(0.01)
            threads = {t.ident for t in threading.enumerate()}
            if old() is None and its_thread not in threads:
                break
        version = served.current.version
        await manager.stop()
        return old() is None, version, its_thread in threads

    gc.disable()
    try:
        freed, version, thread_alive = asyncio.run(scenario())
    finally:
        gc.enable()
        registry.close()
    assert version == "1.0.1"
    assert freed, "the retired version's model is still referenced"
    assert not thread_alive, "the retired version's model thread is still running"
    assert collections == []


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")
def test_versions_load_at_a_lower_cpu_priority_than_requests_run(tmp_path: Path) -> None:
    """Loading a new version (hashing, building the session; threads it starts included)
    yields the CPU to the version answering requests meanwhile; registry reads do not, and
    the thread a version's batches run on starts at serving priority."""
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(mc.pack(make_onnx(tmp_path / "m.onnx"), name="tiny", version="1.0.0"))
    manager = ModelManager(registry, ["tiny@1.0.0"], batch=BatchConfig(), metrics=Metrics())

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def started_by_the_loader() -> int:
        found: list[int] = []
        child = threading.Thread(target=lambda: found.append(niceness()))
        child.start()
        child.join()
        return found[0]

    async def scenario() -> tuple[int, int, int, int, int]:
        await manager.start()
        loaded = manager.models["tiny"].current
        assert loaded is not None
        await manager.infer(loaded, {"x": X})
        loop = asyncio.get_running_loop()
        try:
            return (
                niceness(),
                await loop.run_in_executor(loaded.executor, niceness),
                await loop.run_in_executor(manager.loader, niceness),
                await loop.run_in_executor(manager.loader, started_by_the_loader),
                await loop.run_in_executor(manager.lookups, niceness),
            )
        finally:
            await manager.stop()

    try:
        serving, batches, loading, child, lookup = asyncio.run(scenario())
    finally:
        registry.close()
    assert loading == child == min(19, serving + LOADER_NICENESS)
    assert batches == lookup == serving


def test_prepacking_follows_the_size_of_the_served_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ONNX Runtime prepacks weights of models under PREPACK_BELOW: the size of the form a
    server loads, not of the whole crate (a torch-packed one holds the weights three
    times, which put models of a third of the bound and more on the slow path)."""
    import torch

    from modelcrate.runtimes import onnxruntime

    crate = mc.pack(
        torch.nn.Linear(64, 64).eval(),
        example_inputs=(torch.zeros(1, 64),),
        name="lin",
        version="1.0.0",
    )
    manifest = crate.manifest
    onnx_bytes = manifest.file("model.onnx").size
    assert sum(f.size for f in manifest.files) > 2 * onnx_bytes
    monkeypatch.setattr(onnxruntime, "PREPACK_BELOW", onnx_bytes + 1)
    assert BatchConfig().prepack_for(manifest) is True
    assert BatchConfig(prepack=False).prepack_for(manifest) is False
    monkeypatch.setattr(onnxruntime, "PREPACK_BELOW", onnx_bytes)
    assert BatchConfig().prepack_for(manifest) is False


def test_a_version_that_would_not_fit_in_memory_is_not_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load needs memory for the weights it serves, prepacked copies included, with a
    margin: short of it the new version is refused and the old one keeps serving."""
    from modelcrate.server import hot_swap

    registry = mc.Registry.open(tmp_path / "registry")
    for seed in (0, 1):
        source = make_onnx(tmp_path / f"v{seed}" / "m.onnx", seed=seed)
        registry.publish(mc.pack(source, name="tiny", version=f"1.0.{seed}"))
    registry.set_alias("tiny", "prod", "1.0.0")
    served_bytes = registry.manifest("tiny@1.0.1").served_bytes()
    manager = ModelManager(registry, ["tiny@prod"], batch=BatchConfig(), metrics=Metrics())

    async def scenario() -> tuple[str | None, str | None, list[float]]:
        await manager.start()
        served = manager.models["tiny"]
        # Enough for the weights once with the margin, not for them prepacked (twice).
        monkeypatch.setattr(hot_swap, "_available_memory", lambda: int(2.5 * served_bytes))
        registry.set_alias("tiny", "prod", "1.0.1")
        await manager.refresh(served)
        assert served.current is not None
        version = served.current.version
        answer = await manager.infer(served.current, {"x": X})
        await manager.stop()
        return version, served.error, [float(v) for v in answer["y"].ravel()]

    try:
        version, error, answer = asyncio.run(scenario())
    finally:
        registry.close()
    assert version == "1.0.0"
    assert error is not None and "MiB are available" in error and "tiny@1.0.1" in error
    old = mc.load("tiny@1.0.0", registry=mc.Registry.open(tmp_path / "registry"))
    np.testing.assert_allclose(answer, old.predict(X)["y"].ravel(), rtol=1e-6)
