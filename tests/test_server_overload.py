"""Overload protection: a bounded queue per model. Past --max-queue a request is refused at
once (REST 503 with Retry-After, gRPC RESOURCE_EXHAUSTED) and counted; an admitted request
never waits past --request-timeout (504); every request gets one of those answers."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

import modelcrate as mc
from conftest import Server, free_port, matmul_chain
from modelcrate.server.batching import RETRY_AFTER_S
from modelcrate.server.requests import RefusalPacer

WIDTH, LAYERS, ROWS = 512, 12, 256  # about 0.8 GFLOP per request: tens of ms on one thread


def slow_model(path: Path) -> Path:
    """x [N, 512] through 12 dense layers: slow enough to queue requests behind it."""
    return matmul_chain(path, [WIDTH] * (LAYERS + 1))


@pytest.fixture
def registry(tmp_path: Path) -> mc.Registry:
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(mc.pack(slow_model(tmp_path / "slow.onnx"), name="slow", version="1.0.0"))
    return registry


# The binary tensor extension: decoding is instant, so a burst reaches the queue at once.
HEADER = (
    b'{"inputs": [{"name": "x", "shape": [%d, %d], "datatype": "FP32", '
    b'"parameters": {"binary_data_size": %d}}]}' % (ROWS, WIDTH, ROWS * WIDTH * 4)
)
BODY = HEADER + np.full((ROWS, WIDTH), 0.5, np.float32).tobytes()


async def burst(url: str, count: int) -> list[httpx.Response]:
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(HEADER)),
    }
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=count)) as http:
        return await asyncio.gather(
            *(
                http.post(f"{url}/v2/models/slow/infer", content=BODY, headers=headers)
                for _ in range(count)
            )
        )


def rejected(server: Server) -> float:
    metrics = httpx.get(f"{server.url}/metrics").text
    line = 'modelcrate_requests_rejected_total{model="slow",reason="queue_full"}'
    found = [row for row in metrics.splitlines() if row.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


def queue_depth(server: Server) -> float:
    metrics = httpx.get(f"{server.url}/metrics").text
    (row,) = [
        r for r in metrics.splitlines() if r.startswith('modelcrate_queue_depth{model="slow"}')
    ]
    return float(row.split()[-1])


def test_a_full_queue_answers_503_with_retry_after_and_counts_it(
    registry: mc.Registry, start_server: Callable[..., Server]
) -> None:
    grpc_port = free_port()
    server = start_server(
        registry.root,
        "slow",
        "--max-queue",
        "2",
        "--max-batch-size",
        str(ROWS),
        "--grpc-port",
        str(grpc_port),
    )
    answers = asyncio.run(burst(server.url, 40))
    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) == {200, 503}, statuses
    assert statuses[503] >= 20  # 1 batch running + 2 waiting admitted at a time
    refused = next(a for a in answers if a.status_code == 503)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["code"] == "queue_full" and "queue is full" in refused.json()["error"]
    served = [a for a in answers if a.status_code == 200]
    assert all(len(a.json()["outputs"][0]["data"]) == ROWS * WIDTH for a in served)
    assert rejected(server) == statuses[503]
    assert queue_depth(server) == 0  # nothing left counted as waiting

    # gRPC shares the queue: the same overload is RESOURCE_EXHAUSTED.
    x = np.full((ROWS, WIDTH), 0.5, np.float32)

    def call() -> str:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        tensor = grpcclient.InferInput("x", [ROWS, WIDTH], "FP32")
        tensor.set_data_from_numpy(x)
        try:
            client.infer("slow", [tensor])
            return "OK"
        except InferenceServerException as exc:
            return str(exc.status())
        finally:
            client.close()

    with ThreadPoolExecutor(24) as pool:
        codes = Counter(pool.map(lambda _: call(), range(24)))
    assert set(codes) <= {"OK", "StatusCode.RESOURCE_EXHAUSTED"}, codes
    assert codes["StatusCode.RESOURCE_EXHAUSTED"] >= 1 and codes["OK"] >= 2
    assert rejected(server) == statuses[503] + codes["StatusCode.RESOURCE_EXHAUSTED"]


def test_a_burst_is_admitted_and_a_saturated_model_lets_one_batch_wait(
    registry: mc.Registry, start_server: Callable[..., Server]
) -> None:
    """Default queue: a burst to an idle model is admitted whole (up to 64 requests may
    wait); under load that keeps it starting full batches, a request is admitted only while
    less than a full batch waits, and so it stays for the Retry-After its refused clients
    were told (they come back together); after that a burst is admitted whole again."""
    server = start_server(registry.root, "slow", "--max-batch-size", str(ROWS))
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(HEADER)),
    }
    url = f"{server.url}/v2/models/slow/infer"

    async def sustained(clients: int, seconds: float) -> Counter[str]:
        """Each client asks again as soon as it is answered, on a new connection (so its
        refusals are not held back): answers by status and error message."""
        stop = time.monotonic() + seconds
        seen: Counter[str] = Counter()

        async def client() -> None:
            fresh = httpx.Limits(max_keepalive_connections=0)
            async with httpx.AsyncClient(timeout=60, limits=fresh) as http:
                while time.monotonic() < stop:
                    answer = await http.post(url, content=BODY, headers=headers)
                    ok = answer.status_code == 200
                    seen["200" if ok else f"{answer.status_code} {answer.json()['error']}"] += 1

        await asyncio.gather(*(client() for _ in range(clients)))
        return seen

    def statuses() -> Counter[int]:
        return Counter(a.status_code for a in asyncio.run(burst(server.url, 12)))

    assert statuses() == {200: 12}  # ~12 batches of work, all admitted
    seen = asyncio.run(sustained(12, 2.0))
    saturated = f"503 the model is saturated and a full batch ({ROWS} rows) already waits"
    assert set(seen) == {"200", f"{saturated}; retry shortly"}, seen
    # The load is gone and the model idle, but its refused clients may come back together.
    soon = statuses()
    assert soon[200] >= 1 and soon[503] >= 1, soon
    time.sleep(RETRY_AFTER_S + 0.2)
    assert statuses() == {200: 12}
    assert rejected(server) == seen[f"{saturated}; retry shortly"] + soon[503]


def test_admitted_requests_never_wait_past_the_request_timeout(
    registry: mc.Registry, start_server: Callable[..., Server]
) -> None:
    server = start_server(
        registry.root,
        "slow",
        "--max-queue",
        "100",
        "--max-batch-size",
        str(ROWS),
        "--request-timeout",
        "0.25",
    )
    answers = asyncio.run(burst(server.url, 100))  # about 1 s of work for 2 threads
    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) == {200, 504}, statuses
    late = next(a for a in answers if a.status_code == 504)
    assert "longer than 0.25 s" in late.json()["error"]
    assert max(a.elapsed.total_seconds() for a in answers if a.status_code == 504) < 5
    time.sleep(1.0)  # batches already running finish; their answers are dropped
    assert queue_depth(server) == 0
    assert rejected(server) == 0


def test_a_client_asking_again_before_retry_after_waits_it_out(
    registry: mc.Registry, start_server: Callable[..., Server]
) -> None:
    """Refused at once the first time; asked again on the same connection before the
    Retry-After second has passed, refused only once it has (other connections unaffected)."""
    server = start_server(registry.root, "slow", "--max-queue", "1", "--max-batch-size", "1")
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(HEADER)),
    }
    url = f"{server.url}/v2/models/slow/infer"
    stop = time.monotonic() + 8

    async def keep_full() -> None:
        """Asks again at once, each time on a new connection (so never held back)."""
        fresh = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=30, limits=fresh) as http:
            while time.monotonic() < stop:
                await http.post(url, content=BODY, headers=headers)

    async def probe() -> list[tuple[int, float, float]]:
        """(status, when it was answered, seconds it took), until three refusals."""
        seen: list[tuple[int, float, float]] = []
        async with httpx.AsyncClient(timeout=30) as http:
            while time.monotonic() < stop and sum(s == 503 for s, _, _ in seen) < 3:
                started = time.monotonic()
                answer = await http.post(url, content=BODY, headers=headers)
                seen.append((answer.status_code, time.monotonic(), time.monotonic() - started))
        return seen

    async def run() -> list[tuple[int, float, float]]:
        background = [asyncio.ensure_future(keep_full()) for _ in range(12)]
        await asyncio.sleep(0.5)  # the queue is full from here on
        try:
            return await probe()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    seen = asyncio.run(run())
    assert {status for status, _, _ in seen} <= {200, 503}, seen
    refusals = [(when, took) for status, when, took in seen if status == 503]
    assert len(refusals) >= 2, seen
    assert refusals[0][1] < 0.8, seen  # the first refusal is answered at once
    for (before, _), (after, _) in itertools.pairwise(refusals):
        # each a Retry-After (1 s) after the previous was sent; times are taken here, where
        # this loop's 12 other clients may delay noticing an answer (unpaced: 0.2 s at most)
        assert after - before >= 0.8, seen


def test_the_pacer_counts_each_wait_from_when_its_refusal_was_sent() -> None:
    pacer = RefusalPacer(wait_s=1.0, connections=3)
    assert pacer.delay(("a", 1)) == 0  # never refused: refused at once
    pacer.refused(("a", 1))  # its wait starts
    assert 0.8 < pacer.delay(("a", 1)) <= 2.0  # asked again at once: held back
    assert pacer.delay(("b", 2)) == 0  # another connection is not held back
    time.sleep(0.4)  # that refusal was sent late (a busy event loop)
    pacer.refused(("a", 1))
    assert 0.8 < pacer.delay(("a", 1)) <= 2.0  # a whole wait from when it was sent
    time.sleep(2.05)
    assert pacer.delay(("a", 1)) == 0  # refused a while ago: refused at once again


def test_the_pacer_spreads_clients_refused_together() -> None:
    """Clients refused together that come back together, as Retry-After told them, are
    each held a different random part of one more wait: they come back spread out."""
    pacer = RefusalPacer(wait_s=0.2, connections=100)
    clients = [("c", port) for port in range(50)]
    for client in clients:
        pacer.refused(client)
    time.sleep(0.2)  # their wait is over: they all ask again
    held = sorted(pacer.delay(client) for client in clients)
    assert all(0 <= pause < 0.2 for pause in held)
    assert held[-1] - held[0] > 0.1 and len(set(held)) == len(held)


def test_the_pacer_forgets_connections_whose_wait_is_over() -> None:
    pacer = RefusalPacer(wait_s=0.2, connections=3)
    pacer.refused(("a", 1))
    pacer.refused(("b", 2))
    time.sleep(0.25)
    for port in range(10):  # memory stays bounded: the oldest are forgotten
        pacer.refused(("c", port))
    assert len(pacer.until) <= 3 and ("c", 9) in pacer.until
