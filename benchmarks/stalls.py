"""Event-loop stalls while a server's loader searches a model file (issue 17, hot swap).

Before a session is built, every byte of an ONNX model with inline weights is searched for
external-data entries (runtimes/onnxruntime._mentions_location). A server does that on
its loader thread, niced, while the event loop serves. Any time the loader takes the GIL,
or holds it while the OS runs something else, the loop waits.

python benchmarks/stalls.py [GiB ...]      (default 0.1 1; run.py: SCALE_GIB)

Each run is a fresh process: its main thread ticks every 0.5 ms (the event loop's stand-in)
while a niced thread searches a file of that size from the page cache, with two busy
processes beside it (a loaded 2-core machine). A tick more than 5 ms late is a stall.
Contenders, alternated, medians of REPEATS runs (one from 4 GiB): our search; the
byte-string search it replaced (``b"location" in block``, 256 KiB blocks); and, as the
baseline, a thread sleeping as long as our search took (the machine's own jitter). Memory is the child's peak
RSS during the search (VmHWM, reset through /proc/self/clear_refs) less its RSS before.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPEATS = 3
LATE_S = 0.005
CONTENDERS = {
    "ours (libc memmem, 16 MiB blocks)": "ours",
    "byte-string search, 256 KiB blocks (before)": "bytes",
    "baseline: a thread sleeping as long (no search)": "sleep",
}

CHILD = r"""
import json, os, sys, threading, time
from pathlib import Path
from modelcrate.runtimes.onnxruntime import _mentions_location

how, path, sleep_s = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])

def byte_search(path):
    with path.open("rb") as stream:
        tail = b""
        while block := stream.read(256 * 1024):
            if b"location" in tail + block[:7] or b"location" in block:
                return True
            tail = block[-7:]
    return False

took = []
def search():
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    started = time.perf_counter()
    if how == "ours":
        found = _mentions_location(path)
    elif how == "bytes":
        found = byte_search(path)
    else:
        time.sleep(sleep_s)
        found = False
    assert not found
    took.append(time.perf_counter() - started)

def rss_mib():
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024

Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
before = rss_mib()
worker = threading.Thread(target=search)
late = []
worker.start()
expected = time.perf_counter()
while worker.is_alive():
    expected += 0.0005
    time.sleep(max(0.0, expected - time.perf_counter()))
    now = time.perf_counter()
    if now - expected > 0:
        late.append(now - expected)
    expected = max(expected, now)
worker.join()
stalls = [x for x in late if x > LATE]
print(json.dumps({
    "seconds": took[0],
    "stalls": len(stalls),
    "stalled_s": sum(stalls),
    "worst_s": max(late, default=0.0),
    "added_mib": int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
    - before,
}))
""".replace("LATE", repr(LATE_S))


def run_child(how: str, path: Path, sleep_s: float) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, how, str(path), str(sleep_s)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def model_file(directory: Path, gib: float) -> Path:
    """Random bytes (no b"location"), written in 64 MiB pieces and read once into the page
    cache, as a just-localized model would be."""
    path = directory / f"model-{gib}.onnx"
    size, piece = int(gib * 2**30), 64 * 2**20
    generator = np.random.default_rng(0)
    with path.open("wb") as stream:
        for start in range(0, size, piece):
            data = generator.integers(0, 256, min(piece, size - start), dtype=np.uint8)
            stream.write(data.tobytes().replace(b"location", b"locatiOn"))
    with path.open("rb") as stream:
        while stream.read(piece):
            pass
    return path


def measure(path: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Medians per contender; the sleeping baseline sleeps as long as our search took."""
    runs: dict[str, list[dict[str, float]]] = {how: [] for how in CONTENDERS.values()}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        for _ in range(repeats):
            runs["ours"].append(run_child("ours", path, 0))
            runs["bytes"].append(run_child("bytes", path, 0))
            runs["sleep"].append(run_child("sleep", path, runs["ours"][-1]["seconds"]))
    finally:
        for process in busy:
            process.kill()
            process.wait()
    return {
        how: {key: statistics.median(run[key] for run in results) for key in results[0]}
        for how, results in runs.items()
    }


def main(sizes: list[float]) -> list[str]:
    lines = [
        "## Loader stalls: searching a model file beside a serving event loop (issue 17)",
        "",
        f"`python benchmarks/stalls.py {' '.join(map(str, sizes))}`; a niced thread searches "
        "a file from the page cache while the main thread ticks every 0.5 ms, two busy "
        f"processes beside it; medians of {REPEATS} alternated runs below 4 GiB (1 run at 4 "
        "GiB), each a fresh process. "
        f"A stall is a tick more than {LATE_S * 1000:.0f} ms late.",
        "",
        "| size | search | seconds | stalls | stalled ms in all | worst ms | peak RSS added |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    ratios = []
    with tempfile.TemporaryDirectory(prefix="mc-bench-stalls-") as scratch:
        for gib in sizes:
            path = model_file(Path(scratch), gib)
            figures = measure(path, REPEATS if gib < 4 else 1)
            path.unlink()
            for label, how in CONTENDERS.items():
                f = figures[how]
                lines.append(
                    f"| {gib} GiB | {label} | {f['seconds']:.2f} | {f['stalls']:.0f} | "
                    f"{f['stalled_s'] * 1000:.0f} | {f['worst_s'] * 1000:.1f} | "
                    f"{f['added_mib']:.0f} MiB |"
                )
            ours, before = figures["ours"], figures["bytes"]
            ratios.append(
                f"| {gib} GiB | stalled ms, ours ÷ byte-string search | "
                f"{ratio(ours['stalled_s'], before['stalled_s'])} | < 1 |"
            )
            ratios.append(
                f"| {gib} GiB | seconds, ours ÷ byte-string search | "
                f"{ratio(ours['seconds'], before['seconds'])} | |"
            )
    return [*lines, "", "| size | ratio | figure | target |", "| --- | --- | --- | --- |", *ratios]


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "(baseline 0)"


if __name__ == "__main__":
    print("\n".join(main([float(g) for g in sys.argv[1:]] or [0.1, 1.0])))
