"""Where an infer request's time goes (issue 17): the server cut short at each stage.

For the digits CNN at 16 connections and the ~26 MB MLP at 32 (JSON bodies of one sample,
wrk -t1), servers alternated in each of REPEATS runs: bare Starlette reading the body (the
serving benchmark's ceiling), then our own stack cut short after reading the body, after
decoding it, after one unbatched model call and encoding (baselines/stages.py), and the
full server with default settings. The event loop is the bottleneck on this 2-core
machine, so 1/throughput is the loop's time per request, and the difference between two
rows is what the later stage adds to each request.

Then, without HTTP and without the noise of sharing two cores with wrk: the full server's
ASGI app driven in-process on uvloop, the server's event loop (its lifespan started as
uvicorn would, 16 coroutines sending the digits CNN's request, every batch on the event
loop), against the least work such a request needs (orjson parse, the array, one ONNX
Runtime call, the answer encoded), each timed alternately on one thread.

python benchmarks/run.py breakdown
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
import uvloop
from torch import nn

import modelcrate as mc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples" / "digits"))
from models import mlp_25mb  # noqa: E402
from serving import Process, one_thread_session, require_wrk, wrk  # noqa: E402
from train import DigitsCNN  # noqa: E402

from modelcrate.server.runner import ServeSettings, build_app  # noqa: E402

REPEATS = 3
SECONDS = 5
IN_PROCESS_REQUESTS = 16_000  # per timing, from IN_PROCESS_CLIENTS coroutines
IN_PROCESS_CLIENTS = 16
STAGES = {
    "bare Starlette, reads the body": None,
    "ours: HTTP protocol, browser defences, body read": "read",
    "+ decode (JSON to arrays, limits checked)": "decode",
    "+ inputs checked, one model call alone, response encoded": "run",
    "full server (manager, metrics, timeout, batching)": "full",
}


def contenders(
    registry: Path, ref: str, stages: dict[str, str | None]
) -> dict[str, tuple[list[str], str, str]]:
    python = sys.executable
    found: dict[str, tuple[list[str], str, str]] = {}
    for label, stage in stages.items():
        if stage is None:
            command = [python, str(HERE / "baselines" / "starlette_echo.py"), "{port}"]
            found[label] = (command, "/x", "POST")
        elif stage == "full":
            serve = [python, "-m", "modelcrate", "serve", ref, "--port", "{port}"]
            found[label] = ([*serve, "--registry", str(registry)], "/v2/health/ready", "GET")
        else:
            script = str(HERE / "baselines" / "stages.py")
            found[label] = ([python, script, "{port}", stage, str(registry), ref], "/x", "POST")
    return found


def bench(
    title: str,
    model: nn.Module,
    shape: tuple[int, ...],
    name: str,
    high: int,
    work: Path,
    *,
    call_alone: bool,
) -> list[str]:
    """Every stage; the unbatched model call on the event loop only with ``call_alone``
    (not for models whose call takes milliseconds: the loop would wait on the model)."""
    stages = {k: v for k, v in STAGES.items() if v != "run" or call_alone}
    registry = mc.Registry.open(work / f"registry-{name}")
    torch.manual_seed(0)
    crate = mc.pack(model, example_inputs=(torch.zeros(shape),), name=name, version="1.0.0")
    registry.publish(crate)
    sample = np.random.default_rng(0).random(shape, dtype=np.float32)
    inputs = [
        {
            "name": crate.manifest.signature.inputs[0].name,
            "shape": list(shape),
            "datatype": "FP32",
            "data": sample.ravel().tolist(),
        }
    ]
    body = json.dumps({"inputs": inputs}).encode()
    rates: dict[str, list[float]] = {label: [] for label in stages}
    for _ in range(REPEATS):
        for label, (command, ready, method) in contenders(registry.root, name, stages).items():
            server = Process(command, ready, method)
            try:
                url = server.url + f"/v2/models/{name}/infer"
                wrk(url, body, high, 2, work)  # warm-up
                rates[label].append(wrk(url, body, high, SECONDS, work)["rps"])
            finally:
                server.stop()
    lines = [
        f"### {title}, {high} connections",
        "",
        "| stage | req/s | µs per request | added by this stage |",
        "| --- | --- | --- | --- |",
    ]
    previous = None
    for label, stage in stages.items():
        rate = statistics.median(rates[label])
        micros = 1e6 / rate
        added = f"{micros - previous:+.0f}" if previous is not None else ""
        lines.append(f"| {label} | {rate:.0f} | {micros:.0f} | {added} |")
        previous = micros if stage is not None else None  # ours starts a new chain
    lines.append("")
    if call_alone:  # its batches run on the event loop, so timing the app times all of it
        lines += in_process(registry.root, name, body, crate)
    return lines


def in_process(registry: Path, name: str, body: bytes, crate: mc.Crate) -> list[str]:
    """Our full ASGI app in-process against the least work, alternated REPEATS times."""
    least = least_work(crate, body)
    ours_us, least_us = [], []
    for _ in range(REPEATS):
        ours_us.append(uvloop.run(drive(registry, name, body)))  # the server's event loop
        least_us.append(least())
    ours, floor = statistics.median(ours_us), statistics.median(least_us)
    return [
        f"### digits CNN in-process: our ASGI app without HTTP, {IN_PROCESS_CLIENTS} clients",
        "",
        "| what | µs per request |",
        "| --- | --- |",
        f"| full server app (decode, checks, manager, batching, metrics, encode) | {ours:.0f} |",
        f"| least work: orjson parse, array, one ORT call, encode | {floor:.0f} |",
        f"| ratio ours / least work | {ours / floor:.1f} |",
        "",
    ]


async def drive(registry: Path, name: str, body: bytes) -> float:
    """µs per infer request through the app ``modelcrate serve`` runs, without HTTP."""
    app: Any = build_app(ServeSettings(refs=[name], registry=str(registry)))
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    life = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put)
    )
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    assert started["type"] == "lifespan.startup.complete", started
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"/v2/models/{name}/infer",
        "raw_path": f"/v2/models/{name}/infer".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def client(count: int) -> None:
        for _ in range(count):
            await app(dict(scope), receive, send)

    each = IN_PROCESS_REQUESTS // IN_PROCESS_CLIENTS
    await asyncio.gather(*(client(each // 10) for _ in range(IN_PROCESS_CLIENTS)))  # warm-up
    statuses.clear()
    started_at = time.perf_counter()
    await asyncio.gather(*(client(each) for _ in range(IN_PROCESS_CLIENTS)))
    micros = (time.perf_counter() - started_at) / (each * IN_PROCESS_CLIENTS) * 1e6
    await inbox.put({"type": "lifespan.shutdown"})
    await outbox.get()
    await life
    assert set(statuses) == {200}, set(statuses)
    return micros


def least_work(crate: mc.Crate, body: bytes) -> Callable[[], float]:
    """A timer of the least an OIP JSON request needs: parse, array, model call, answer."""
    session = one_thread_session(crate)
    input_name = session.get_inputs()[0].name

    def one() -> bytes:
        tensor = orjson.loads(body)["inputs"][0]
        x = np.array(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        (y,) = session.run(None, {input_name: x})
        output = {
            "name": "y",
            "datatype": "FP32",
            "shape": list(y.shape),
            "data": y.ravel().tolist(),
        }
        return orjson.dumps({"model_name": "m", "model_version": "1", "outputs": [output]})

    def timed() -> float:
        for _ in range(IN_PROCESS_REQUESTS // 10):
            one()
        started_at = time.perf_counter()
        for _ in range(IN_PROCESS_REQUESTS):
            one()
        return (time.perf_counter() - started_at) / IN_PROCESS_REQUESTS * 1e6

    return timed


def main() -> list[str]:
    require_wrk()
    work = Path(tempfile.mkdtemp(prefix="modelcrate-breakdown-"))
    try:
        lines = [
            "## Serving: where an infer request's time goes",
            "",
            f"wrk -t1 -d{SECONDS}s, JSON body of one sample, medians of {REPEATS} runs, "
            "servers alternated; `benchmarks/baselines/stages.py` is our own stack cut short "
            "after each stage. The event loop is the bottleneck, so µs per request "
            "(1/throughput) is the loop's time per request.",
            "",
        ]
        cnn, mlp = DigitsCNN().eval(), mlp_25mb().eval()
        lines += bench("digits CNN", cnn, (1, 1, 8, 8), "digits", 16, work, call_alone=True)
        lines += bench("MLP, ~26 MB", mlp, (1, 1024), "mlp", 32, work, call_alone=False)
        return lines
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print("\n".join(main()))
