"""Instructions per infer request (issue 17), counted by valgrind's callgrind.

On this 2-core machine a server's requests per second move by up to 2x between runs of
identical code, so a change worth 5% needs many alternated wrk runs to show. The
instructions a server process executes per request hardly move: repeated runs of the
same code differ by under 1% (0.2-0.6% seen). Each server runs under callgrind, gets WARM requests, has its
counters zeroed (``callgrind_control -z``), answers COUNT requests of the digits CNN (JSON,
one sample) from CONNECTIONS keep-alive connections, and has its counters dumped. The
count leaves out time in the kernel (reading and writing sockets, about the same for
every server here) and does not weigh instructions by what they cost, so it ranks
versions of the same code; throughput is still measured by wrk (serving.py).

Under callgrind code runs ~50x slower, so two things are fixed that a normal run decides
by timing: our server runs the CNN's batches on the event loop (as it does when not
slowed; batching.INLINE_BELOW_S), and ONNX Runtime computes on one thread.

python benchmarks/run.py instructions      (needs valgrind: apt-get install valgrind)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

import modelcrate as mc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples" / "digits"))
from overload import content_length  # noqa: E402
from serving import free_port  # noqa: E402
from train import DigitsCNN  # noqa: E402

WARM, COUNT, CONNECTIONS = 320, 1600, 16
START_S = 600  # valgrind takes a minute or two to start a server that imports numpy and ORT
OURS = """
import sys
from modelcrate.server import batching, runner
batching.INLINE_BELOW_S = 10.0  # slowed ~50x by valgrind: keep the batches on the loop
settings = runner.ServeSettings(
    refs=[sys.argv[2]], registry=sys.argv[1], port=int(sys.argv[3]), threads=1
)
runner.serve(settings)
"""


async def send(port: int, path: str, body: bytes, count: int) -> list[int]:
    """``count`` POSTs over CONNECTIONS keep-alive connections; the statuses answered."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    statuses: list[int] = []

    async def connection(requests: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(requests):
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                statuses.append(int(head[9:12]))
                await reader.readexactly(content_length(head))
        finally:
            writer.close()

    await asyncio.gather(*(connection(count // CONNECTIONS) for _ in range(CONNECTIONS)))
    return statuses


def counted(command: list[str], path: str, body: bytes, work: Path) -> int:
    """Instructions the server started by ``command`` (``{port}`` in it) executes for COUNT
    requests, after WARM."""
    port = free_port()
    out = work / f"callgrind.{port}"
    server = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            *(part.replace("{port}", str(port)) for part in command),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    try:
        wait_until_serving(server, port, path, body)
        assert set(asyncio.run(send(port, path, body, WARM))) == {200}
        control(server, "-z")
        statuses = asyncio.run(send(port, path, body, COUNT))
        control(server, "-d")
        assert statuses == [200] * COUNT, sorted(set(statuses))
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=120)
    dump = next(p for p in work.glob(f"callgrind.{port}.*"))  # the -d dump: counts since -z
    totals = next(
        line for line in dump.read_text().splitlines() if line.startswith(("summary:", "totals:"))
    )
    return int(totals.split()[1])


def wait_until_serving(server: subprocess.Popen[bytes], port: int, path: str, body: bytes) -> None:
    for _ in range(START_S):
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode} under valgrind")
        try:
            if set(asyncio.run(send(port, path, body, CONNECTIONS))) == {200}:
                return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"server did not answer within {START_S} s under valgrind")


def control(server: subprocess.Popen[bytes], flag: str) -> None:
    subprocess.run(["callgrind_control", flag, str(server.pid)], check=True, capture_output=True)


def main() -> list[str]:
    heading = "## Serving: instructions per request (callgrind)"
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        return [heading, "", "Not run: valgrind is not installed.", ""]
    work = Path(tempfile.mkdtemp(prefix="modelcrate-instructions-"))
    try:
        registry = mc.Registry.open(work / "registry")
        torch.manual_seed(0)
        crate = mc.pack(
            DigitsCNN().eval(),
            example_inputs=(torch.zeros(1, 1, 8, 8),),
            name="digits",
            version="1.0.0",
        )
        registry.publish(crate)
        registry.close()
        x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
        name = crate.manifest.signature.inputs[0].name
        tensor = {"name": name, "shape": [1, 1, 8, 8], "datatype": "FP32"}
        body = json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode()
        python, stages = sys.executable, str(HERE / "baselines" / "stages.py")
        servers = {
            "bare Starlette reading the body (serving's ceiling)": (
                [python, str(HERE / "baselines" / "starlette_echo.py"), "{port}"],
                "/x",
            ),
            "our stack: decode, one model call, encode (stages.py run)": (
                [python, stages, "{port}", "run", str(registry.root), "digits"],
                "/x",
            ),
            "ours, full server (default settings)": (
                [python, "-c", OURS, str(registry.root), "digits", "{port}"],
                "/v2/models/digits/infer",
            ),
        }
        with ThreadPoolExecutor(2) as pool:  # one server per core
            counts = dict(
                zip(
                    servers,
                    pool.map(lambda s: counted(s[0], s[1], body, work), servers.values()),
                    strict=True,
                )
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ceiling = counts["bare Starlette reading the body (serving's ceiling)"] / COUNT
    lines = [
        heading,
        "",
        f"digits CNN, JSON body of one sample, {COUNT} requests from {CONNECTIONS} "
        "keep-alive connections after a warm-up; instructions the server process executed "
        "(user space; repeated runs of the same code differ by under 1%).",
        "",
        "| server | thousand instructions per request | bare Starlette ÷ this |",
        "| --- | --- | --- |",
    ]
    for label, total in counts.items():
        each = total / COUNT
        lines.append(f"| {label} | {each / 1000:.0f} | {ceiling / each:.2f} |")
    return [*lines, ""]


if __name__ == "__main__":
    print("\n".join(main()))
