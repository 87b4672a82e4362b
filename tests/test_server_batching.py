"""Concurrent requests are merged into batches and each gets exactly its own rows back."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import queue
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

import modelcrate as mc
from conftest import Digits, Server, matmul_chain
from modelcrate.errors import InputError
from modelcrate.runtimes.onnxruntime import OnnxRuntime
from modelcrate.server.hot_swap import BatchConfig, ModelManager
from modelcrate.server.metrics import Metrics
from modelcrate.server.oip import SIMDJSON_FROM_BYTES


async def fire(url: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as http:

        async def one(x: np.ndarray) -> np.ndarray:
            body = {
                "inputs": [
                    {
                        "name": "x",
                        "shape": list(x.shape),
                        "datatype": "FP32",
                        "data": x.ravel().tolist(),
                    }
                ]
            }
            response = await http.post(url, json=body)
            assert response.status_code == 200, response.text
            output = response.json()["outputs"][0]
            return np.asarray(output["data"], np.float32).reshape(output["shape"])

        return list(await asyncio.gather(*(one(x) for x in inputs)))


def batch_sizes(metrics: str, model: str = "digits") -> tuple[float, float]:
    """Sum and count of the batch-size histogram (0, 0 when it has no samples)."""

    def sample(name: str) -> float:
        found = re.search(name + r'\{model="' + model + r'"\} (\S+)', metrics)
        return float(found[1]) if found else 0.0

    return sample("modelcrate_batch_size_sum"), sample("modelcrate_batch_size_count")


@pytest.mark.parametrize("delay", ["0", "5"], ids=["greedy", "delay-5ms"])
def test_concurrent_requests_are_batched_and_split_exactly(
    tmp_path: Path,
    digits: Digits,
    digits_crate_path: Path,
    start_server: Callable[..., Server],
    delay: str,
) -> None:
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(digits_crate_path)
    server = start_server(  # a fixed queue long enough for the burst: none is refused
        registry.root,
        "digits",
        "--max-batch-size",
        "16",
        "--max-delay-ms",
        delay,
        "--max-queue",
        "1000",
    )
    rng = np.random.default_rng(0)
    # Mixed batch sizes (1..12 rows): rows must come back to the request that sent them.
    # Bodies of 2 KiB and more are parsed by simdjson, smaller ones by orjson: both here.
    inputs = [digits.x_test[rng.integers(0, 400, size=rng.integers(1, 13))] for _ in range(96)]
    sizes = [len(json.dumps(x.ravel().tolist())) for x in inputs]
    assert min(sizes) < SIMDJSON_FROM_BYTES <= max(sizes)
    for _ in range(3):
        outputs = asyncio.run(fire(server.url + "/v2/models/digits/infer", inputs))
        for x, y in zip(inputs, outputs, strict=True):
            with torch.no_grad():
                np.testing.assert_allclose(y, digits.model(torch.from_numpy(x)).numpy(), atol=1e-4)
    total, count = batch_sizes(httpx.get(server.url + "/metrics").text)
    assert total == sum(len(x) for x in inputs) * 3  # every row ran exactly once
    assert count < len(inputs) * 3  # fewer model calls than requests: batches formed


def test_batching_off_runs_one_request_per_call(
    tmp_path: Path, digits: Digits, digits_crate_path: Path, start_server: Callable[..., Server]
) -> None:
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(digits_crate_path)
    server = start_server(registry.root, "digits", "--max-batch-size", "1")
    inputs = [digits.x_test[i : i + 1] for i in range(40)]
    asyncio.run(fire(server.url + "/v2/models/digits/infer", inputs))
    total, count = batch_sizes(httpx.get(server.url + "/metrics").text)
    assert (total, count) == (0.0, 0.0)  # no batcher involved at all


@pytest.mark.slow
def test_workers_share_the_port_and_all_follow_alias_moves(
    tmp_path: Path,
    digits_crate_path: Path,
    digits_v2_path: Path,
    start_server: Callable[..., Server],
) -> None:
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(digits_crate_path)
    registry.publish(digits_v2_path)
    registry.set_alias("digits", "prod", "1.0.0")
    server = start_server(registry.root, "digits@prod", "--workers", "2", "--poll-interval", "0.05")
    registry.set_alias("digits", "prod", "1.1.0")
    time.sleep(1.5)
    versions = set()
    for _ in range(60):  # a fresh connection each time, so both workers answer
        meta = httpx.get(server.url + "/v2/models/digits", headers={"Connection": "close"})
        versions.add(meta.json()["versions"][0])
    assert versions == {"1.1.0"}


def test_the_crate_sets_batching_and_the_command_line_overrides_it(
    tmp_path: Path, digits: Digits, start_server: Callable[..., Server]
) -> None:
    from train import pack_digits

    crate = pack_digits(digits.model, digits.accuracy)
    unbatched = mc.pack(
        torch.nn.Sequential(digits.model),
        example_inputs=(torch.from_numpy(digits.x_test[:4]),),
        name="digits",
        version="2.0.0",
        serving={"max_batch_size": 1},
        input_names=["x"],
    )
    assert unbatched.manifest.serving is not None
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(crate)
    registry.publish(unbatched)
    inputs = [digits.x_test[i : i + 1] for i in range(48)]
    by_crate = start_server(registry.root, "digits@2.0.0")
    asyncio.run(fire(by_crate.url + "/v2/models/digits/infer", inputs))
    assert batch_sizes(httpx.get(by_crate.url + "/metrics").text) == (0.0, 0.0)
    overridden = start_server(registry.root, "digits@2.0.0", "--max-batch-size", "8")
    asyncio.run(fire(overridden.url + "/v2/models/digits/infer", inputs))
    total, _ = batch_sizes(httpx.get(overridden.url + "/metrics").text)
    assert total == len(inputs)


def test_an_idle_model_starts_at_once_and_the_next_batch_forms_while_it_runs(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """The first of 12 simultaneous requests to a slow model runs alone at once; those
    arriving meanwhile run together next. A request with more rows than --max-batch-size
    runs alone, whole."""
    registry = mc.Registry.open(tmp_path / "registry")
    slow = matmul_chain(tmp_path / "slow.onnx", [4] + [2048] * 6 + [2])
    registry.publish(mc.pack(slow, name="slow", version="1.0.0"))
    server = start_server(registry.root, "slow", "--max-batch-size", "8")
    url = server.url + "/v2/models/slow/infer"
    outputs = asyncio.run(fire(url, [np.ones((1, 4), np.float32)] * 12))
    assert [y.shape for y in outputs] == [(1, 2)] * 12
    metrics = httpx.get(server.url + "/metrics").text
    total, count = batch_sizes(metrics, "slow")
    single = re.search(r'modelcrate_batch_size_bucket\{le="1.0",model="slow"\} (\S+)', metrics)
    assert total == 12 and 2 <= count < 12, (total, count)  # merged, but not all in one
    assert single is not None and float(single[1]) >= 1  # the first ran alone
    outputs = asyncio.run(fire(url, [np.ones((20, 4), np.float32), np.ones((3, 4), np.float32)]))
    assert [y.shape for y in outputs] == [(20, 2), (3, 2)]
    assert batch_sizes(httpx.get(server.url + "/metrics").text, "slow")[0] == 35


def slow_model(
    tmp_path: Path, width: int, max_batch_size: int
) -> tuple[mc.Registry, mc.Model, ModelManager]:
    """A registry holding slow@1.0.0 (six ``width`` x ``width`` MatMuls: milliseconds a
    batch), that model loaded directly, and a manager (not started) serving it."""
    registry = mc.Registry.open(tmp_path / "registry")
    slow = matmul_chain(tmp_path / "slow.onnx", [4] + [width] * 6 + [2])
    registry.publish(mc.pack(slow, name="slow", version="1.0.0"))
    expected = mc.load("slow@1.0.0", registry=registry)
    batch = BatchConfig(max_batch_size=max_batch_size)
    manager = ModelManager(registry, ["slow@1.0.0"], batch=batch, metrics=Metrics())
    return registry, expected, manager


def test_a_model_computes_one_batch_at_a_time(tmp_path: Path) -> None:
    """48 concurrent requests to a slow batchable model: its batches never overlap (two
    side by side would only lengthen every queued request's wait), each request still
    gets its own rows, and the version's thread ends when the server stops."""
    registry, expected, manager = slow_model(tmp_path, 1024, max_batch_size=8)
    spans: list[tuple[float, float]] = []
    rows = [np.full((1, 4), i, np.float32) for i in range(48)]

    async def scenario() -> list[dict[str, np.ndarray]]:
        await manager.start()
        loaded = manager.models["slow"].current
        assert loaded is not None
        run = loaded.batcher.run

        def timed(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            started = time.perf_counter()
            try:
                return run(feeds)
            finally:
                spans.append((started, time.perf_counter()))

        loaded.batcher.run = timed
        try:
            return await asyncio.gather(*(manager.infer(loaded, {"x": x}) for x in rows))
        finally:
            await manager.stop()
            assert loaded.executor._shutdown  # type: ignore[attr-defined]

    try:
        answers = asyncio.run(scenario())
    finally:
        registry.close()
    assert len(spans) >= 6  # 48 requests in batches of at most 8
    spans.sort()
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    for x, answer in zip(rows, answers, strict=True):
        np.testing.assert_allclose(answer["y"], expected.predict(x)["y"], rtol=1e-5)


def test_answered_requests_leave_nothing_for_the_garbage_collector(tmp_path: Path) -> None:
    """Each request's objects are freed as soon as it is answered, whether its batch ran
    on the model's thread or on ONNX Runtime's own: nothing is left in a reference cycle
    for the garbage collector, whose passes under load were milliseconds of the p99 (a
    batch's callback closed over its own future: ~12 objects a request)."""
    # Wide enough that a batch of 8 takes over a millisecond on a fast machine (1024 wide
    # took 0.75 ms there, and its batches stayed on the model's thread).
    registry, _, manager = slow_model(tmp_path, 2048, max_batch_size=8)
    rows = [np.full((1, 4), i, np.float32) for i in range(48)]

    async def scenario() -> tuple[int, int]:
        await manager.start()
        loaded = manager.models["slow"].current
        assert loaded is not None
        found = []
        try:
            for _ in range(2):  # on the model's thread first, then on the runtime's own
                gc.collect()
                gc.disable()
                try:
                    await asyncio.gather(*(manager.infer(loaded, {"x": x}) for x in rows))
                    found.append(gc.collect())
                finally:
                    gc.enable()
                for _ in range(8):
                    await asyncio.gather(*(manager.infer(loaded, {"x": x}) for x in rows))
                assert loaded.batcher.own_threads, loaded.batcher.seconds_per_batch
        finally:
            await manager.stop()
        return found[0], found[1]

    try:
        assert asyncio.run(scenario()) == (0, 0)
    finally:
        registry.close()


def test_a_model_of_milliseconds_starts_its_batches_on_onnx_runtimes_own_threads(
    tmp_path: Path,
) -> None:
    """Once its batches are measured to take milliseconds, an ONNX model's batches of
    several requests start on ONNX Runtime's own threads (no Python thread of ours runs
    them; a lone request is still called on the model's thread): still one at a time,
    each request still gets exactly its own rows, and a batch running there when the
    server stops is still answered with its results."""
    registry, expected, manager = slow_model(tmp_path, 1536, max_batch_size=16)
    spans: list[tuple[float, float]] = []
    finishers: set[str] = set()
    begun: list[float] = []
    gate = threading.Event()  # cleared: a run that has finished waits to hand back
    gate.set()
    rows = [np.full((1, 4), i, np.float32) for i in range(48)]

    async def scenario() -> tuple[list[dict[str, np.ndarray]], list[object]]:
        await manager.start()
        loaded = manager.models["slow"].current
        assert loaded is not None
        start = loaded.batcher.start
        assert start is not None

        def recorded(feeds: dict[str, np.ndarray], done: Callable[[object], None]) -> None:
            began = time.perf_counter()
            begun.append(began)

            def finished(outcome: object) -> None:
                gate.wait(10)
                spans.append((began, time.perf_counter()))
                finishers.add(threading.current_thread().name)
                done(outcome)

            start(feeds, finished)  # type: ignore[arg-type]

        loaded.batcher.start = recorded  # type: ignore[assignment]
        try:
            for _ in range(2):  # at least 6 batches each
                await asyncio.gather(*(manager.infer(loaded, {"x": x}) for x in rows))
            assert loaded.batcher.own_threads, loaded.batcher.seconds_per_batch
            spans.clear()
            alone = await manager.infer(loaded, {"x": rows[5]})  # all threads compute it
            assert not spans
            np.testing.assert_allclose(alone["y"], expected.predict(rows[5])["y"], rtol=1e-5)
            answers = await asyncio.gather(*(manager.infer(loaded, {"x": x}) for x in rows))
            gate.clear()  # the next run there is held until the manager has stopped
            late = [asyncio.ensure_future(manager.infer(loaded, {"x": x})) for x in rows[:16]]
            while len(begun) == len(spans):
                await asyncio.sleep(0.001)
        finally:
            await manager.stop()
            gate.set()
        outcomes = await asyncio.gather(*late, return_exceptions=True)
        return answers, outcomes

    try:
        answers, outcomes = asyncio.run(scenario())
    finally:
        registry.close()
    assert len(spans) >= 4  # 48 requests in batches of at most 16, then one stopped
    spans.sort()
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    assert finishers and not any(n.startswith("infer-") or n == "MainThread" for n in finishers)
    for x, answer in zip(rows, answers, strict=True):
        np.testing.assert_allclose(answer["y"], expected.predict(x)["y"], rtol=1e-5)
    for x, outcome in zip(rows, outcomes, strict=False):  # the held batch was answered too
        assert isinstance(outcome, dict), outcome
        np.testing.assert_allclose(outcome["y"], expected.predict(x)["y"], rtol=1e-5)


def test_a_run_on_onnx_runtimes_own_threads_reports_refused_inputs(tmp_path: Path) -> None:
    """``OnnxRuntime.start``: outputs come to the callback; inputs of the wrong shape come
    back as the error the synchronous call raises, and a wrong name is refused at once. A
    session of one thread cannot start runs there, and the server does not ask it to."""
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(mc.pack(matmul_chain(tmp_path / "m.onnx", [4, 8, 2]), name="m", version="1"))
    crate = registry.get("m@1")
    runtime = mc.Model(crate, threads=2).runtime
    assert isinstance(runtime, OnnxRuntime)
    got: queue.Queue[object] = queue.Queue()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    runtime.start({"x": x}, got.put)
    outputs = got.get(timeout=10)
    assert isinstance(outputs, dict)
    np.testing.assert_allclose(outputs["y"], runtime.run({"x": x})["y"], rtol=1e-6)
    runtime.start({"x": np.ones((2, 5), np.float32)}, got.put)
    refused = got.get(timeout=10)
    assert isinstance(refused, InputError) and "rejected the inputs" in str(refused), refused
    with pytest.raises(InputError, match="rejected the inputs"):
        runtime.start({"nope": x}, got.put)
    assert runtime.can_start and not mc.Model(crate, threads=1).runtime.can_start  # type: ignore[attr-defined]

    async def one_thread() -> object:  # a session of one thread has no pool to run on
        manager = ModelManager(
            registry, ["m@1"], batch=BatchConfig(max_batch_size=8), metrics=Metrics(), threads=1
        )
        await manager.start()
        try:
            loaded = manager.models["m"].current
            assert loaded is not None
            return loaded.batcher.start
        finally:
            await manager.stop()

    assert asyncio.run(one_thread()) is None
    registry.close()


def test_a_model_of_microseconds_runs_on_the_event_loop_while_the_gil_is_busy(
    tmp_path: Path,
) -> None:
    """A tiny model's batches move onto the event loop (a thread hop costs more than they
    do) even while another thread keeps the GIL busy: the batch's time is measured in CPU,
    so the wait to take the GIL back after ONNX Runtime's call does not count."""
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(
        mc.pack(matmul_chain(tmp_path / "tiny.onnx", [4, 4]), name="tiny", version="1.0.0")
    )
    manager = ModelManager(
        registry, ["tiny"], batch=BatchConfig(max_batch_size=8), metrics=Metrics()
    )
    on_loop: list[bool] = []
    stop = threading.Event()

    def hold_the_gil() -> None:  # like a busy event loop: Python for 1 ms, then a pause
        while not stop.is_set():
            busy_until = time.perf_counter() + 0.001
            while time.perf_counter() < busy_until:
                pass
            time.sleep(0.0001)

    async def scenario() -> None:
        await manager.start()
        loaded = manager.models["tiny"].current
        assert loaded is not None
        run = loaded.batcher.run

        def where(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            on_loop.append(threading.current_thread() is threading.main_thread())
            return run(feeds)

        loaded.batcher.run = where
        hog = threading.Thread(target=hold_the_gil)
        hog.start()
        try:
            for _ in range(30):
                answer = await manager.infer(loaded, {"x": np.ones((1, 4), np.float32)})
                assert answer["y"].shape == (1, 4)
        finally:
            stop.set()
            hog.join()
            await manager.stop()

    try:
        asyncio.run(scenario())
    finally:
        registry.close()
    assert on_loop[0] is False  # unmeasured: the first batch runs on the model's thread
    assert all(on_loop[-10:]), on_loop


def test_requests_queued_behind_a_long_batch_time_out_at_their_deadline(tmp_path: Path) -> None:
    """One batch takes 0.6 s; three requests with a 0.1 s timeout, one running and two
    queued behind it, are each answered 504 at their deadline, not when the batch ends.
    The model then serves on, and nothing is kept of the requests that timed out."""
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(mc.pack(matmul_chain(tmp_path / "m.onnx", [4, 8, 2]), name="m", version="1"))
    expected = mc.load("m@1", registry=registry)
    manager = ModelManager(
        registry, ["m@1"], batch=BatchConfig(max_batch_size=8), metrics=Metrics()
    )
    rows = [np.full((1, 4), i, np.float32) for i in range(3)]

    async def scenario() -> tuple[list[object], list[float], dict[str, np.ndarray]]:
        await manager.start()
        loaded = manager.models["m"].current
        assert loaded is not None
        run = loaded.batcher.run

        def slow(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            time.sleep(0.6)
            return run(feeds)

        loaded.batcher.run = slow
        loaded.batcher.seconds_per_batch = 1.0  # runs on the model's thread, not the loop
        started = time.perf_counter()

        async def one(x: np.ndarray) -> tuple[object, float]:
            try:
                await manager.infer(loaded, {"x": x}, 0.1)
            except Exception as exc:
                return exc, time.perf_counter() - started
            return None, time.perf_counter() - started

        try:
            outcomes = await asyncio.gather(*(one(x) for x in rows))
            loaded.batcher.run = run
            answer = await manager.infer(loaded, {"x": rows[2]}, 5.0)
            assert not any(loaded.batcher.deadlines.lines.values())  # nothing kept
            return [o for o, _ in outcomes], [t for _, t in outcomes], answer
        finally:
            await manager.stop()

    try:
        errors, times, answer = asyncio.run(scenario())
    finally:
        registry.close()
    assert all(isinstance(e, mc.errors.ServerError) and e.http_status == 504 for e in errors)
    assert max(times) < 0.45, times  # at the 0.1 s deadline, not after the 0.6 s batch
    np.testing.assert_allclose(answer["y"], expected.predict(rows[2])["y"], rtol=1e-5)
