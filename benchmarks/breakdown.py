"""Where an infer request's time goes (issue 17): the server cut short at each stage.

For the digits CNN at 16 connections and the ~26 MB MLP at 32 (JSON bodies of one sample,
wrk -t1), servers alternated in each of REPEATS runs: bare Starlette reading the body (the
serving benchmark's ceiling), then our own stack cut short after reading the body, after
decoding it, after one unbatched model call and encoding (baselines/stages.py), and the
full server with default settings. The event loop is the bottleneck on this 2-core
machine, so 1/throughput is the loop's time per request, and the difference between two
rows is what the later stage adds to each request.

python benchmarks/run.py breakdown
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

import modelcrate as mc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples" / "digits"))
from models import mlp_25mb  # noqa: E402
from serving import Process, require_wrk, wrk  # noqa: E402
from train import DigitsCNN  # noqa: E402

REPEATS = 3
SECONDS = 5
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
    return [*lines, ""]


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
