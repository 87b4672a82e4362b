"""Models of any size (issue 13): time and peak memory of each step as the model grows.

The model is one MatMul (x @ W, W float32 n x n) with W as ONNX external data, at
0.1 and 1 GiB (4 GiB with `make bench-scale`). Every step runs in a fresh process
under `/usr/bin/time -f "%e %M"` (wall seconds, peak RSS), after `sync`, and is
alternated with its baseline in the same run:

- storage baseline: a durable copy (`cp` then `sync FILE`) plus `openssl sha256`
  of the same bytes; compared with `modelcrate publish` of the packed crate;
- load baseline: `onnxruntime.InferenceSession(path)` plus one run, compared with
  `mc.load(ref)` plus one prediction (first load: the file cache is filled; then
  cached: every file re-hashed beside session creation);
- pull, backup and restore are reported with their peak RSS (target <= 256 MiB);
- OCI push and pull (when docker-registry is installed) against the oras SDK
  pushing and pulling the same files, each against a fresh registry.

python benchmarks/scale.py [0.1 1 4]     # sizes in GiB (default 0.1 1)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
GIB = 1024**3
REPEAT = int(
    os.environ.get("SCALE_REPEAT", "3")
)  # medians over this many runs (1 at 4 GiB and above)

LOAD_OURS = """
import sys, numpy as np, modelcrate as mc
model = mc.load(sys.argv[1], registry=sys.argv[2])
n = model.manifest.signature.inputs[0].shape[1]
print(model.predict(np.ones((1, n), np.float32))["y"][0, :2])
"""
LOAD_RAW = """
import sys, numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
n = session.get_inputs()[0].shape[1]
print(session.run(None, {"x": np.ones((1, n), np.float32)})[0][0, :2])
"""


def make_model(directory: Path, gib: float, seed: int = 0) -> Path:
    """Write model.onnx + model.onnx.data (W: n x n float32, about ``gib`` GiB), in blocks."""
    from onnx import TensorProto, helper

    n = int((gib * GIB / 4) ** 0.5)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with (directory / "model.onnx.data").open("wb") as out:
        rows = max(1, (64 * 1024 * 1024) // (4 * n))
        for start in range(0, n, rows):
            out.write(rng.random((min(rows, n - start), n), dtype=np.float32).tobytes())
    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[n, n])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (
        ("location", "model.onnx.data"),
        ("offset", "0"),
        ("length", str(4 * n * n)),
    ):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (directory / "model.onnx").write_bytes(model.SerializeToString())
    return directory / "model.onnx"


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of ``command`` in a fresh process, after `sync`."""
    subprocess.run(["sync"], check=True)
    result = subprocess.run(
        ["/usr/bin/time", "-f", "TIME %e %M", *command],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if result.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{result.stdout}\n{result.stderr}")
    line = next(li for li in result.stderr.splitlines()[::-1] if li.startswith("TIME "))
    seconds, kib = line.split()[1:]
    return float(seconds), int(kib) / 1024


def median_peak(values: list[tuple[float, float]]) -> tuple[float, float]:
    """The median wall and the highest peak RSS of alternated runs."""
    return statistics.median(v[0] for v in values), max(v[1] for v in values)


def size_table(title: str, description: str) -> list[str]:
    """The head of a '| size | step | wall | peak RSS | ratio |' results section."""
    return [
        title,
        "",
        description,
        "",
        "| size | step | wall | peak RSS | ratio |",
        "| --- | --- | --- | --- | --- |",
    ]


def size_row(gib: float, label: str, figure: tuple[float, float], ratio: str) -> str:
    seconds, rss = figure
    return f"| {gib} GiB | {label} | {seconds:.2f} s | {rss:.0f} MiB | {ratio} |"


def at_sizes(
    name: str, sizes: list[float] | None, measure: Any
) -> dict[float, dict[str, tuple[float, float]]]:
    """``measure(gib, scratch)`` at each size (default 0.1 and 1 GiB), each in a fresh
    scratch directory under benchmarks/."""
    results = {}
    for gib in sizes or [0.1, 1.0]:
        with tempfile.TemporaryDirectory(prefix=f"mc-bench-{name}-", dir=HERE) as scratch:
            results[gib] = measure(gib, Path(scratch))
            print(f"{name} {gib} GiB done ({gib * GIB / 1e9:.1f} GB)", file=sys.stderr)
    return results


def shell(script: str) -> list[str]:
    return ["bash", "-c", script]


def modelcrate(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "modelcrate"), *args]


def measure(gib: float, scratch: Path) -> dict[str, list[tuple[float, float]]]:
    source = make_model(scratch / "src", gib)
    crate = scratch / "model.crate"
    results: dict[str, list[tuple[float, float]]] = {}

    def add(step: str, figure: tuple[float, float]) -> None:
        results.setdefault(step, []).append(figure)

    add(
        "pack",
        timed(
            modelcrate("pack", str(source), "--name", "big", "--version", "1.0.0", "-o", str(crate))
        ),
    )
    data = source.parent / "model.onnx.data"
    repeat = REPEAT if gib < 4 else 1
    for run in range(repeat):
        copy = scratch / "copy.bin"
        add(
            "baseline: durable copy + openssl sha256",
            timed(shell(f"cp {data} {copy} && sync {copy} && openssl sha256 {data} >/dev/null")),
        )
        copy.unlink()
        registry = scratch / f"registry-{run}"
        add("publish", timed(modelcrate("publish", str(crate), "--registry", str(registry))))
        add("baseline: raw ORT session + run", timed([sys.executable, "-c", LOAD_RAW, str(source)]))
        add(
            "load + predict, first (fills the cache)",
            timed([sys.executable, "-c", LOAD_OURS, "big@1.0.0", str(registry)]),
        )
        add(
            "load + predict, cached (re-hashed beside session creation)",
            timed([sys.executable, "-c", LOAD_OURS, "big@1.0.0", str(registry)]),
        )
        if run < repeat - 1:
            shutil.rmtree(registry)
    registry = scratch / f"registry-{repeat - 1}"
    pulled = scratch / "pulled"
    add(
        "pull",
        timed(modelcrate("pull", "big@1.0.0", "--to", str(pulled), "--registry", str(registry))),
    )
    shutil.rmtree(pulled)
    add("verify", timed(modelcrate("verify", "big@1.0.0", "--registry", str(registry))))
    backup = scratch / "backup.tar"
    add("backup", timed(modelcrate("backup", "--to", str(backup), "--registry", str(registry))))
    add(
        "restore",
        timed(modelcrate("restore", str(backup), "--registry", str(scratch / "restored"))),
    )
    backup.unlink()
    if MLFLOW_PYTHON:
        for run in range(repeat):
            mlflow_round(source, scratch / f"mlflow-{run}", add)
    if shutil.which("docker-registry"):
        for run in range(repeat):
            oci_round(registry, scratch / f"oci-{run}", add)
    http_round(registry, scratch / "http", add)
    swap_round(gib, registry, scratch / "swap", add)
    files = sum(1 for p in (registry / "blobs").rglob("*") if p.is_file())
    stored = sum(p.stat().st_size for p in (registry / "blobs").rglob("*") if p.is_file())
    add("files in the store", (float(files), stored / GIB * 1024))
    return results


# MLflow in its own virtualenv (it pins its own dependencies): point MLFLOW_PYTHON at it.
#   python -m venv .mlflow && .mlflow/bin/pip install mlflow-skinny pandas sqlalchemy alembic onnx onnxruntime
MLFLOW_PYTHON = os.environ.get("MLFLOW_PYTHON", "")
MLFLOW_PUBLISH = """
import sys, mlflow, onnx
from mlflow import MlflowClient
root = sys.argv[2]
mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
experiment = mlflow.create_experiment("scale", artifact_location=f"file://{root}/artifacts")
with mlflow.start_run(experiment_id=experiment):
    info = mlflow.onnx.log_model(onnx.load(sys.argv[1]), name="model", registered_model_name="big")
MlflowClient().set_registered_model_alias("big", "prod", info.registered_model_version)
"""
MLFLOW_LOAD = """
import sys, numpy as np, mlflow
mlflow.set_tracking_uri(f"sqlite:///{sys.argv[1]}/mlflow.db")
model = mlflow.pyfunc.load_model("models:/big@prod")
n = int(sys.argv[2])
print(model.predict({"x": np.ones((1, n), np.float32)})["y"][0, :2])
"""


def mlflow_round(source: Path, scratch: Path, add: Any) -> None:
    """MLflow (SQLite + local artifacts): log_model + register + alias, then load by alias,
    against modelcrate's pack + publish + alias and load by alias, alternated."""
    scratch.mkdir(parents=True)
    quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_TRACKING_INSECURE_TLS": "1"}
    add(
        "MLflow: log_model + register + alias",
        timed([MLFLOW_PYTHON, "-c", MLFLOW_PUBLISH, str(source), str(scratch)], quiet),
    )
    registry = scratch / "registry"
    crate_file = scratch / "big.crate"
    tool = modelcrate()[0]
    add(
        "ours: pack + publish + alias",
        timed(
            shell(
                f"{tool} pack {source} --name big --version 1.0.0 -o {crate_file} >/dev/null && "
                f"{tool} publish {crate_file} --registry {registry} >/dev/null && "
                f"{tool} alias set big prod 1.0.0 --registry {registry} >/dev/null"
            )
        ),
    )
    n = int((source.parent / "model.onnx.data").stat().st_size // 4) ** 0.5
    add(
        "MLflow: load by alias + predict",
        timed([MLFLOW_PYTHON, "-c", MLFLOW_LOAD, str(scratch), str(round(n))], quiet),
    )
    add(
        "ours: load by alias + predict (first)",
        timed([sys.executable, "-c", LOAD_OURS, "big@prod", str(registry)]),
    )
    mlflow_bytes = sum(p.stat().st_size for p in (scratch / "artifacts").rglob("*") if p.is_file())
    ours = sum(p.stat().st_size for p in (registry / "blobs").rglob("*") if p.is_file())
    add("MLflow: stored MiB", (0.0, mlflow_bytes / 2**20))
    add("ours: stored MiB", (0.0, ours / 2**20))
    shutil.rmtree(scratch)


ORAS_PUSH = """
import sys, oras.client
client = oras.client.OrasClient(hostname=sys.argv[1], insecure=True)
client.push(target=sys.argv[2], files=sys.argv[3:], disable_path_validation=True, quiet=True)
"""
ORAS_PULL = """
import sys, oras.client
client = oras.client.OrasClient(hostname=sys.argv[1], insecure=True)
client.pull(target=sys.argv[2], outdir=sys.argv[3])
"""


def oci_round(registry: Path, scratch: Path, add: Any) -> None:
    """Push and pull the crate with modelcrate and the same files with the oras SDK, each
    against a fresh docker-registry (so neither finds blobs already there)."""
    files = scratch / "files"
    subprocess.run(
        modelcrate("pull", "big@1.0.0", "--to", str(files), "--registry", str(registry)),
        check=True,
        capture_output=True,
    )
    paths = [str(p) for p in sorted(files.iterdir()) if p.name != "crate.json"]

    def push(contender: str, host: str) -> tuple[float, float]:
        if contender == "oras":
            return timed([sys.executable, "-c", ORAS_PUSH, host, f"{host}/ml/big:1", *paths])
        source = ["--registry", str(registry)]
        return timed(modelcrate("push", "big@1.0.0", f"oci://{host}/ml/big:1", *source))

    def pull(contender: str, host: str, out: Path) -> tuple[float, float]:
        if contender == "oras":
            return timed([sys.executable, "-c", ORAS_PULL, host, f"{host}/ml/big:1", str(out)])
        return timed(modelcrate("pull", f"oci://{host}/ml/big:1", "--to", str(out)))

    # Each contender twice, in the order oras, ours, ours, oras (each push to a fresh
    # registry): this machine throttles a 1 GiB write that follows another to the disk's
    # speed (dd: 0.2 s for the first, 2.4 s for each next), so a fixed order would bill
    # the second contender for the first one's writes.
    order = ["oras", "ours", "ours", "oras"]
    with contextlib.ExitStack() as stack:
        hosts = [stack.enter_context(oci_server(scratch / f"r{i}")) for i in range(len(order))]
        pushes: dict[str, list[tuple[float, float]]] = {"oras": [], "ours": []}
        for name, host in zip(order, hosts, strict=True):
            pushes[name].append(push(name, host))
        pulls: dict[str, list[tuple[float, float]]] = {"oras": [], "ours": []}
        for i, (name, host) in enumerate(zip(order, hosts, strict=True)):
            pulls[name].append(pull(name, host, scratch / f"out-{i}"))
    for name, label in (("oras", "baseline: oras push (same files)"), ("ours", "push oci://")):
        add(label, _mean(pushes[name]))
    for name, label in (("oras", "baseline: oras pull"), ("ours", "pull oci:// --to DIR")):
        add(label, _mean(pulls[name]))
    shutil.rmtree(scratch)


def _mean(figures: list[tuple[float, float]]) -> tuple[float, float]:
    """Mean wall time and the highest peak RSS of one step's runs."""
    return sum(f[0] for f in figures) / len(figures), max(f[1] for f in figures)


@contextlib.contextmanager
def oci_server(root: Path) -> Iterator[str]:
    """A docker-registry on a loopback port, storing under ``root``."""
    port = free_port()
    root.mkdir(parents=True)
    config = root / "config.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/", 20)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


SWAPS = 4


def wait_http(url: str, timeout: float) -> None:
    """Wait until ``url`` answers 200 (a server starting up)."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)


def http_round(registry: Path, scratch: Path, add: Any) -> None:
    """push to another modelcrate server over HTTP, then pull from it: client peak RSS
    (`/usr/bin/time`) and the receiving server's peak RSS (VmHWM)."""

    (scratch / "target").mkdir(parents=True)
    (scratch / "tokens.toml").write_text(
        '[[tokens]]\nname = "bench"\ntoken = "bench-writer-token"\nscopes = ["read", "write"]\n'
    )
    tool = modelcrate()[0]
    port = free_port()
    server = subprocess.Popen(
        [
            tool,
            "serve",
            "--port",
            str(port),
            "--registry",
            str(scratch / "target"),
            "--token-file",
            str(scratch / "tokens.toml"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/v2/health/live", 60)
        token = {"MODELCRATE_TOKEN": "bench-writer-token"}
        add(
            "push https:// (client)",
            timed([tool, "push", "big@1.0.0", url, "--registry", str(registry)], token),
        )
        add("push https:// (receiving server, peak)", (0.0, peak_mib(server.pid)))
        add(
            "pull https:// (client)",
            timed([tool, "pull", f"{url}/big@1.0.0", "--to", str(scratch / "pulled")], token),
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)


def peak_mib(pid: int) -> float:
    return status_mib(pid, "VmHWM")


def swap_round(gib: float, registry: Path, scratch: Path, add: Any) -> None:
    """A server under constant load (wrk, c=4) while prod moves between two versions of this
    size SWAPS times: failed requests, the server's peak RSS, and its RSS after the drain."""
    import threading
    import time

    second = make_model(scratch / "v2", gib, seed=1)
    crate = scratch / "v2.crate"
    tool = modelcrate()[0]
    subprocess.run(
        [tool, "pack", str(second), "--name", "big", "--version", "2.0.0", "-o", str(crate)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [tool, "publish", str(crate), "--registry", str(registry)], check=True, capture_output=True
    )
    shutil.rmtree(second.parent)
    crate.unlink()

    def alias(version: str) -> None:
        subprocess.run(
            [tool, "alias", "set", "big", "prod", version, "--registry", str(registry)],
            check=True,
            capture_output=True,
        )

    alias("1.0.0")
    port = free_port()
    server = subprocess.Popen(
        [tool, "serve", "big@prod", "--port", str(port), "--registry", str(registry)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        version = wait_for(url, "1.0.0", 300)
        n = int((gib * GIB / 4) ** 0.5)
        ones = ",".join(["1"] * n)
        body = f'{{"inputs":[{{"name":"x","shape":[1,{n}],"datatype":"FP32","data":[{ones}]}}]}}'
        script = scratch / "post.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [[{body}]]\n"
        )
        peak = [0.0]
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.1):
                peak[0] = max(peak[0], rss_mib(server.pid))

        watcher = threading.Thread(target=watch)
        watcher.start()
        seconds = int(20 + 8 * SWAPS * max(gib, 0.5))
        load = subprocess.Popen(
            ["wrk", "-t1", "-c4", f"-d{seconds}s", "-s", str(script), f"{url}/v2/models/big/infer"],
            stdout=subprocess.PIPE,
            text=True,
        )
        swap_times = []
        for number in range(SWAPS):
            target = "2.0.0" if number % 2 == 0 else "1.0.0"
            started = time.perf_counter()
            alias(target)
            version = wait_for(url, target, 300)
            swap_times.append(time.perf_counter() - started)
        out, _ = load.communicate()
        done.set()
        watcher.join()
        time.sleep(3)  # the retired version drains and is freed
        after = rss_mib(server.pid)
        failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        requests = re.search(r"(\d+) requests in", out)
        socket_errors = re.search(r"Socket errors: (.*)", out)
        model_mib = gib * 1024
        add(
            f"hot swap x{SWAPS} under load ({requests[1] if requests else '?'} requests, "
            f"{failed[1] if failed else 0} non-2xx, socket errors: "
            f"{socket_errors[1] if socket_errors else 'none'}; median swap "
            f"{statistics.median(swap_times):.1f} s; serving {version})",
            (peak[0] / model_mib, after / model_mib),
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)


def free_port() -> int:
    """A loopback port nothing listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(url: str, version: str, timeout: float) -> str:
    """Wait until the server answers ``version`` for big; returns it."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            meta = httpx.get(f"{url}/v2/models/big", timeout=5).json()
            if meta.get("versions") == [version]:
                return version
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server never served big@{version}")


def rss_mib(pid: int) -> float:
    return status_mib(pid, "VmRSS")


def status_mib(pid: int, field: str) -> float:
    """A memory figure of process ``pid`` from /proc/PID/status, in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def table(all_results: dict[float, dict[str, list[tuple[float, float]]]]) -> list[str]:
    lines = [
        "## Registry at scale (issue 13)",
        "",
        f"`python benchmarks/scale.py {' '.join(str(g) for g in all_results)}`; one MatMul "
        "model, W as ONNX external data; each step a fresh process after `sync`, medians of "
        f"{REPEAT} alternated runs below 4 GiB (1 run at 4 GiB); wall time and peak RSS "
        "(`/usr/bin/time -f %M`).",
        "",
        "| size | step | wall | peak RSS | ratio to baseline |",
        "| --- | --- | --- | --- | --- |",
    ]
    for gib, results in all_results.items():
        med = {
            k: (statistics.median(s for s, _ in v), max(r for _, r in v))
            for k, v in results.items()
        }
        store_base = med["baseline: durable copy + openssl sha256"]
        load_base = med["baseline: raw ORT session + run"]
        for step, (seconds, rss) in med.items():
            if step.startswith("hot swap"):
                lines.append(
                    f"| {gib} GiB | {step} | | peak {seconds:.2f}x the model, "
                    f"{rss:.2f}x after the drain | peak target <= 2.3x |"
                )
                continue
            if step.endswith("stored MiB") or step.endswith("(receiving server, peak)"):
                lines.append(f"| {gib} GiB | {step.replace(' MiB', '')} | | {rss:.0f} MiB | |")
                continue
            if step == "files in the store":
                lines.append(
                    f"| {gib} GiB | files in the store | {int(seconds)} files, "
                    f"{rss:.0f} MiB | | {rss / max(seconds, 1):.0f} MiB "
                    "stored per file |"
                )
                continue
            ratio = ""
            if step == "publish":
                ratio = f"**{seconds / store_base[0]:.2f}x** time (target <= 4x)"
            elif step.startswith("ours: pack + publish"):
                base = med["MLflow: log_model + register + alias"]
                ratio = f"**{seconds / base[0]:.2f}x** MLflow time, {rss / base[1]:.2f}x RSS"
            elif step.startswith("ours: load by alias"):
                base = med["MLflow: load by alias + predict"]
                ratio = f"**{seconds / base[0]:.2f}x** MLflow time, {rss / base[1]:.2f}x RSS"
            elif step == "push oci://":
                ratio = f"**{seconds / med['baseline: oras push (same files)'][0]:.2f}x** oras"
            elif step.startswith("pull oci://"):
                ratio = f"**{seconds / med['baseline: oras pull'][0]:.2f}x** oras (target <= 1.3x)"
            elif step.startswith("load +"):
                ratio = (
                    f"**{seconds / load_base[0]:.2f}x** time (target <= 1.5x), "
                    f"{rss / load_base[1]:.2f}x RSS (target <= 1.2x)"
                )
            lines.append(f"| {gib} GiB | {step} | {seconds:.2f} s | {rss:.0f} MiB | {ratio} |")
    return lines


def main(sizes: list[float] | None = None) -> list[str]:
    sizes = sizes or [0.1, 1.0]
    results = {}
    for gib in sizes:
        with tempfile.TemporaryDirectory(prefix="mc-bench-scale-", dir=HERE) as scratch:
            results[gib] = measure(gib, Path(scratch))
            print(f"{gib} GiB done", file=sys.stderr)
    return table(results)


if __name__ == "__main__":
    lines = main([float(a) for a in sys.argv[1:]] or None)
    print("\n".join(lines))
