"""Serving benchmarks (issues 3 and 17), run by benchmarks/run.py. Needs wrk (Debian package).

For the digits CNN (concurrency 1 and 16) and a ~26 MB MLP (1 and 32), wrk -t1 with
a body of one sample, alternating servers within each repetition:
  ours (batching on; JSON, and the binary tensor extension on the same server), ours
  (batching off), a bare Starlette handler that only reads the JSON body (the HTTP
  ceiling), the classic Flask + torch server, and the peers in their own virtualenvs
  (peers.py: MLServer with and without adaptive batching, KServe's Python server)
  serving the crate's ONNX file;
plus raw onnxruntime session.run in-process on one thread (the compute limit, measured in
each repetition between the servers; the median is kept), and
p99 latency while the alias moves 20 times vs without moves.

The target ratios are then measured in pairs: this machine's speed moves by up to 2x
within seconds (one server measured 4,000 and 7,300 req/s in consecutive 3 s runs), and
a table row's median is taken minutes apart from another's. With ours and bare Starlette
both up, PAIRS rounds of PAIR_SECONDS each run ours (JSON), bare Starlette, ours (binary)
and ONNX Runtime in-process at batch 32, in alternating order; each round gives its own
ratios, and the median round's ratio is the figure (with the lowest and highest).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import torch
from torch import nn

import modelcrate as mc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples" / "digits"))
from models import mlp_25mb  # noqa: E402
from peers import contenders as peer_contenders  # noqa: E402
from train import DigitsCNN  # noqa: E402

REPEATS = 3
SECONDS = 5
PAIRS, PAIR_SECONDS = 8, 2
OURS, BINARY = "ours, batching on", "ours, binary tensor extension"
STARLETTE = "bare Starlette (reads body only)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Process:
    def __init__(self, command: list[str], ready_path: str, method: str = "GET") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [part.replace("{port}", str(self.port)) for part in command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.request(method, self.url + ready_path, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"{command} did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def wrk(
    url: str, body: bytes, concurrency: int, seconds: float, work: Path, header: int | None = None
) -> dict[str, float]:
    """One wrk run POSTing ``body`` (JSON; or, with ``header``, a JSON header of that many
    bytes followed by binary tensors)."""
    (work / "body").write_bytes(body)
    kind = "application/json" if header is None else "application/octet-stream"
    script = work / "post.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "{kind}"\n'
        + (f'wrk.headers["Inference-Header-Content-Length"] = "{header}"\n' if header else "")
        + f'local f = io.open("{work / "body"}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
        "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", out)[1]),  # type: ignore[index]
        "errors": float(errors[1]) if errors else 0.0,
        "socket_errors": float(sum(int(g) for g in socket_errors.groups())) if socket_errors else 0,
    }


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def one_thread_session(crate: mc.Crate) -> ort.InferenceSession:
    """The crate's ONNX model in ONNX Runtime alone, on one thread: the in-process baseline."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        crate.read_bytes("model.onnx"), options, providers=["CPUExecutionProvider"]
    )


def raw_ort(
    session: ort.InferenceSession, sample: np.ndarray, batches: tuple[int, ...] = (1, 32)
) -> dict[str, float]:
    """In-process session.run on one thread: calls/s at batch 1 and samples/s at batch 32."""
    name = session.get_inputs()[0].name
    result = {}
    for batch in batches:
        x = np.repeat(sample, batch, axis=0)
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < 2.0:
            session.run(None, {name: x})
            calls += 1
        result[f"batch{batch}"] = calls * batch / (time.perf_counter() - started)
    return result


def paired(
    ours: Process,
    starlette: Process,
    infer: str,
    bodies: tuple[bytes, bytes, int],
    session: ort.InferenceSession,
    sample: np.ndarray,
    high: int,
    work: Path,
    target: str,
) -> dict[str, list[float]]:
    """Per round, at concurrency ``high``: ours ÷ bare Starlette (JSON, binary) and ours ÷
    ONNX Runtime's batch-32 samples/s, each measured seconds apart (the order alternates).
    The target's two runs are next to each other: for the CNN ours and Starlette; for the
    MLP ours and ONNX Runtime (2 s of it at full speed seemed to slow the run after it)."""
    body, binary, split = bodies
    steps = {
        "json": lambda: wrk(ours.url + infer, body, high, PAIR_SECONDS, work)["rps"],
        "starlette": lambda: wrk(starlette.url + "/x", body, high, PAIR_SECONDS, work)["rps"],
        "binary": lambda: wrk(ours.url + infer, binary, high, PAIR_SECONDS, work, split)["rps"],
        "ort": lambda: raw_ort(session, sample, (32,))["batch32"],
    }
    sequence = (
        ["json", "starlette", "binary", "ort"]
        if target == "starlette"
        else ["ort", "json", "binary", "starlette"]
    )
    ratios: dict[str, list[float]] = {"starlette": [], "binary": [], "ort": [], "binary_ort": []}
    for round_ in range(PAIRS):
        order = sequence if round_ % 2 == 0 else sequence[::-1]
        got = {step: steps[step]() for step in order}
        ratios["starlette"].append(got["json"] / got["starlette"])
        ratios["binary"].append(got["binary"] / got["starlette"])
        ratios["ort"].append(got["json"] / got["ort"])
        ratios["binary_ort"].append(got["binary"] / got["ort"])
    return ratios


def bench_model(
    label: str, model: nn.Module, shape: tuple[int, ...], kind: str, high: int, work: Path
) -> list[str]:
    """Every contender at concurrency 1 and ``high``."""
    registry = mc.Registry.open(work / f"registry-{kind}")
    torch.manual_seed(0)
    crate = mc.pack(model, example_inputs=(torch.zeros(shape),), name=kind, version="1.0.0")
    registry.publish(crate)
    registry.publish(
        mc.pack(model, example_inputs=(torch.zeros(shape),), name=kind, version="1.0.1")
    )
    registry.set_alias(kind, "prod", "1.0.0")
    weights = work / f"{kind}.safetensors"
    weights.write_bytes(crate.read_bytes("model.safetensors"))
    onnx_path = work / f"{kind}.onnx"
    onnx_path.write_bytes(crate.read_bytes("model.onnx"))
    sample = np.random.default_rng(0).random(shape, dtype=np.float32)
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": crate.manifest.signature.inputs[0].name,
                    "shape": list(shape),
                    "datatype": "FP32",
                    "data": sample.ravel().tolist(),
                }
            ]
        }
    ).encode()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": crate.manifest.signature.inputs[0].name,
                    "shape": list(shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": sample.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    binary = header + sample.tobytes()
    serve = [
        sys.executable,
        "-m",
        "modelcrate",
        "serve",
        f"{kind}@prod",
        "--port",
        "{port}",
        "--registry",
        str(registry.root),
    ]
    contenders: dict[str, tuple[list[str], str, str]] = {
        "ours, batching on": (serve, "/v2/health/ready", "GET"),
        "ours, batching off": ([*serve, "--max-batch-size", "1"], "/v2/health/ready", "GET"),
        "bare Starlette (reads body only)": (
            [sys.executable, str(HERE / "baselines" / "starlette_echo.py"), "{port}"],
            "/x",
            "POST",
        ),
        "Flask + torch (tutorial server)": (
            [
                sys.executable,
                str(HERE / "baselines" / "flask_torch.py"),
                "{port}",
                str(weights),
                kind,
            ],
            "/x",
            "POST",
        ),
    }
    peers = peer_contenders(kind, onnx_path, work)  # serve the file: no aliases
    contenders.update(peers)
    infer = f"/v2/models/{kind}/versions/prod/infer"
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    # The compute limit is measured in each repetition too, beside the servers: this
    # machine's speed drifts (one run measured ORT at 4,998 samples/s, a later 9,554).
    session, limits = one_thread_session(crate), []
    for _ in range(REPEATS):
        limits.append(raw_ort(session, sample))
        for name, (command, ready, method) in contenders.items():
            server = Process(command, ready, method)
            url = server.url + (f"/v2/models/{kind}/infer" if name in peers else infer)
            runs = [(name, body, None)] + ([(BINARY, binary, len(header))] if name == OURS else [])
            try:
                for concurrency in (1, high):
                    for row, payload, split in runs:
                        results.setdefault((row, concurrency), []).append(
                            wrk(url, payload, concurrency, SECONDS, work, split)
                        )
            finally:
                server.stop()
    ours = Process(serve, "/v2/health/ready")
    try:
        starlette = Process(*contenders[STARLETTE])
        try:
            bodies = (body, binary, len(header))
            target = "starlette" if kind == "digits" else "ort"
            pairs = paired(ours, starlette, infer, bodies, session, sample, high, work, target)
        finally:
            starlette.stop()
    finally:
        ours.stop()
    swaps = bench_swaps(serve, registry, kind, body, infer, work)
    limit = {key: statistics.median(m[key] for m in limits) for key in limits[0]}
    return render(label, results, swaps, limit, pairs, high, kind)


def bench_swaps(
    serve: list[str], registry: mc.Registry, kind: str, body: bytes, infer: str, work: Path
) -> dict[str, float]:
    """p99 at concurrency 32 while prod moves 20 times, vs the same run without moves."""
    server = Process([*serve, "--poll-interval", "0.05"], "/v2/health/ready")
    try:
        quiet, swapping, errors = [], [], 0.0
        for _ in range(REPEATS):
            quiet.append(wrk(server.url + infer, body, 32, 8, work)["p99_ms"])
            mover = threading.Thread(target=_move_alias, args=(registry, kind, 20, 0.35))
            mover.start()
            run = wrk(server.url + infer, body, 32, 8, work)
            mover.join()
            swapping.append(run["p99_ms"])
            errors += run["errors"] + run["socket_errors"]
    finally:
        server.stop()
    return {
        "quiet": statistics.median(quiet),
        "swapping": statistics.median(swapping),
        "errors": errors,
    }


def _move_alias(registry: mc.Registry, kind: str, moves: int, every: float) -> None:
    for i in range(moves):
        time.sleep(every)
        registry.set_alias(kind, "prod", "1.0.1" if i % 2 == 0 else "1.0.0")


def render(
    label: str,
    results: dict[tuple[str, int], list[dict[str, float]]],
    swaps: dict[str, float],
    limit: dict[str, float],
    pairs: dict[str, list[float]],
    high: int,
    kind: str,
) -> list[str]:
    def med(name: str, c: int, key: str = "rps") -> float:
        return statistics.median(r[key] for r in results[(name, c)])

    def pair(key: str) -> str:
        values = pairs[key]
        return f"**{statistics.median(values):.2f}** ({min(values):.2f}–{max(values):.2f})"

    lines = [
        f"### {label}",
        "",
        "| server | c | req/s | p99 ms | non-2xx |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (name, c), runs in sorted(results.items(), key=lambda item: item[0][1]):
        errors = sum(r["errors"] + r["socket_errors"] for r in runs)
        lines.append(
            f"| {name} | {c} | {med(name, c):.0f} | {med(name, c, 'p99_ms'):.2f} | {errors:.0f} |"
        )
    ours, starlette = med(OURS, high), med(STARLETTE, high)
    peers = sorted({n for n, _ in results if n.startswith(("MLServer", "KServe"))})
    lines += [
        "",
        f"Paired ratios at c={high}: the median of {PAIRS} rounds of {PAIR_SECONDS} s runs "
        "(lowest–highest round); the table's medians, minutes apart, in brackets.",
        "",
        "| ratio | figure | target |",
        "| --- | --- | --- |",
        f"| ours ÷ bare Starlette, c={high}, JSON | {pair('starlette')} "
        f"[{ours / starlette:.2f}] | {'≥ 0.5' if kind == 'digits' else ''} |",
        f"| ours ÷ bare Starlette, c={high}, binary extension | {pair('binary')} "
        f"[{med(BINARY, high) / starlette:.2f}] | |",
        f"| ours ÷ ORT in-process batch-32 on one thread ({limit['batch32']:.0f} samples/s), "
        f"c={high}, JSON | {pair('ort')} [{ours / limit['batch32']:.2f}] | "
        f"{'≥ 0.5' if kind == 'mlp' else ''} |",
        f"| same, binary extension | {pair('binary_ort')} "
        f"[{med(BINARY, high) / limit['batch32']:.2f}] | |",
        f"| ours ÷ ORT in-process batch-1 calls/s ({limit['batch1']:.0f}), c=1 | "
        f"{med(OURS, 1) / limit['batch1']:.2f} | |",
        f"| batching on ÷ off, c={high} | {ours / med('ours, batching off', high):.2f} | > 1 |",
        f"| ours ÷ Flask + torch, c={high} | "
        f"{ours / med('Flask + torch (tutorial server)', high):.1f}× | > 1 |",
        *(
            f"| ours ÷ {name}, c={c} | {med(OURS, c) / med(name, c):.1f}× | > 1 |"
            for name in peers
            for c in (1, high)
        ),
        f"| p99 during 20 alias swaps ÷ p99 without ({swaps['swapping']:.2f} / "
        f"{swaps['quiet']:.2f} ms), c=32, non-2xx {swaps['errors']:.0f} | "
        f"{swaps['swapping'] / swaps['quiet']:.2f} | ≤ 1.5 |",
        "",
    ]
    return lines


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed for the serving benchmarks: apt-get install wrk")


def main() -> list[str]:
    require_wrk()
    work = Path(tempfile.mkdtemp(prefix="modelcrate-serving-"))
    try:
        lines = [
            "## Serving: Open Inference Protocol v2 over HTTP",
            "",
            f"wrk -t1 -d{SECONDS}s, a body of one sample (JSON unless the row says binary), "
            f"medians of {REPEATS} runs, servers alternated within each run; default settings "
            "for every server (ours: one worker process).",
            "",
        ]
        lines += bench_model(
            "digits CNN (Conv 1→16, Linear 1024→64→10)",
            DigitsCNN().eval(),
            (1, 1, 8, 8),
            "digits",
            16,
            work,
        )
        lines += bench_model(
            "MLP, ~26 MB (1024→2048→1536→1024→10)",
            mlp_25mb().eval(),
            (1, 1024),
            "mlp",
            32,
            work,
        )
        return lines
    finally:
        shutil.rmtree(work, ignore_errors=True)
