"""Shared fixtures: a trained digits CNN (once per session), packed crates, temp registries."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import modelcrate as mc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "digits"))

from train import DigitsCNN, pack_digits, train  # noqa: E402

from services import oci_registry, postgres, s3  # noqa: E402, F401  (real services)


@dataclass
class Digits:
    model: DigitsCNN
    accuracy: float
    x_test: np.ndarray
    y_test: np.ndarray


@pytest.fixture(scope="session")
def digits() -> Digits:
    model, accuracy, x_test, y_test = train(epochs=8)
    return Digits(model, accuracy, x_test, y_test)


@pytest.fixture(scope="session")
def digits_crate_path(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    crate = pack_digits(digits.model, digits.accuracy)
    return crate.save(tmp_path_factory.mktemp("crates") / "digits-1.0.0.crate")


@pytest.fixture(scope="session")
def digits_v2_path(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same weights, different version: a second, distinct crate."""
    crate = pack_digits(digits.model, digits.accuracy, version="1.1.0")
    return crate.save(tmp_path_factory.mktemp("crates") / "digits-1.1.0.crate")


class MLP(nn.Module):
    def __init__(self, features: int = 20, hidden: int = 64, classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


@pytest.fixture(scope="session")
def mlp() -> MLP:
    torch.manual_seed(1)
    return MLP().eval()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[mc.Registry]:
    with mc.Registry.open(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty MODELCRATE_HOME for this test (and its subprocesses)."""
    path = tmp_path / "home"
    monkeypatch.setenv("MODELCRATE_HOME", str(path))
    monkeypatch.delenv("MODELCRATE_REGISTRY", raising=False)
    return path


def run_cli(
    *args: str, cwd: Path | None = None, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``modelcrate ARGS`` as a real subprocess with the current environment."""
    result = subprocess.run(
        [sys.executable, "-m", "modelcrate", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"modelcrate {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


# Tables the registry migrations after 0004 add (0005 lineage index, 0006 webhooks,
# 0007 evaluations, 0008 rollouts), children first: tests that recreate an older registry
# drop them with the alembic version they set.
TABLES_AFTER_0004 = ("version_parents", "webhook_deliveries", "webhooks", "evaluations", "rollouts")


def make_onnx(path: Path, *, external: str | None = None, seed: int = 0, width: int = 2) -> Path:
    """Write a small ONNX model y = x @ W + b (x: [N, 4] float32, y: [N, width]) without torch.

    ``external`` stores the weights as ONNX external data in a file of that name.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((4, width)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=external,
            size_threshold=0,
        )
    else:
        onnx.save_model(model, str(path))
    return path


def matmul_chain(path: Path, widths: list[int], seed: int = 0) -> Path:
    """An ONNX model x [N, widths[0]] -> y [N, widths[-1]] through one MatMul per step
    (scaled random weights): as slow as its widths make it, for load and timeout tests."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights, previous = [], [], "x"
    for i, (rows, cols) in enumerate(itertools.pairwise(widths)):
        weight = (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32)
        weights.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [previous, f"w{i}"], [f"h{i}"]))
        previous = f"h{i}"
    nodes.append(helper.make_node("Identity", [previous], ["y"]))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", widths[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", widths[-1]])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def git_repo(path: Path, remote: str | None = None) -> Path:
    """A Git work tree at ``path`` with one commit (train.py) on branch 'train'."""
    path.mkdir(parents=True, exist_ok=True)

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)

    git("init", "-q", "-b", "train")
    git("config", "user.email", "ci@example.com")
    git("config", "user.name", "ci")
    if remote:
        git("remote", "add", "origin", remote)
    (path / "train.py").write_text("print('training')\n")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    return path


def stored_chunk(registry: mc.Registry, ref: str, path: str) -> tuple[Path, int, int]:
    """Where a (one-chunk) file of ``ref`` lies in the registry: pack file, offset, size."""
    from modelcrate.registry.blobs import FileBlobStore

    sha = registry.manifest(ref).file(path).sha256
    located = registry.files.locate(sha)
    assert located and len(located) == 1 and located[0].pack is not None, located
    assert isinstance(registry.blobs, FileBlobStore)
    return registry.blobs.pack_path(located[0].pack), located[0].offset, located[0].size


def corrupt_stored(registry: mc.Registry, ref: str, path: str, at: int = -5) -> None:
    """Flip one byte of a stored file inside its pack (and drop cached copies)."""
    import shutil

    pack, offset, size = stored_chunk(registry, ref, path)
    pack.chmod(0o644)
    with pack.open("r+b") as handle:
        handle.seek(offset + (at % size))
        byte = handle.read(1)
        handle.seek(offset + (at % size))
        handle.write(bytes([byte[0] ^ 0x55]))
    if registry.root is not None:
        shutil.rmtree(registry.root / "cache", ignore_errors=True)


def tiny_weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((4, 2)).astype(np.float32), rng.standard_normal(2).astype(np.float32)


@pytest.fixture
def tiny_crate(tmp_path: Path) -> Path:
    """A valid single-file crate packed from a tiny ONNX model."""
    source = make_onnx(tmp_path / "src" / "tiny.onnx")
    return mc.pack(source, name="tiny", version="1.0.0").save(tmp_path / "tiny-1.0.0.crate")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A `modelcrate serve` subprocess on a free loopback port, stopped on exit."""

    def __init__(self, registry: Path | str, *args: str, wait_ready: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        logs = registry.parent if isinstance(registry, Path) else Path(tempfile.gettempdir())
        self.log = logs / f"server-{self.port}.log"
        with self.log.open("w") as log:
            self.proc = self._spawn(registry, args, log)
        self._wait(wait_ready)

    def _spawn(
        self, registry: Path | str, args: tuple[str, ...], log: object
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelcrate",
                "serve",
                *args,
                "--port",
                str(self.port),
                "--registry",
                str(registry),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,  # type: ignore[arg-type]
        )

    def _wait(self, wait_ready: bool) -> None:
        import httpx

        deadline = time.monotonic() + 60
        path = "/v2/health/ready" if wait_ready else "/v2/health/live"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"server did not become ready: {self.output()}")

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(registry: Path | str, *args: str, wait_ready: bool = True) -> Server:
        server = Server(registry, *args, wait_ready=wait_ready)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def binary_header(x: np.ndarray, **extra: object) -> bytes:
    """The JSON header of a binary tensor extension request that sends ``x`` as input "x"
    (its bytes follow it); ``extra``: more top-level fields (outputs, parameters)."""
    tensor = {
        "name": "x",
        "shape": list(x.shape),
        "datatype": "FP32",
        "parameters": {"binary_data_size": x.nbytes},
    }
    return json.dumps({"inputs": [tensor], **extra}).encode()


@pytest.fixture
def served_digits(
    tmp_path: Path,
    digits_crate_path: Path,
    digits_v2_path: Path,
    start_server: Callable[..., Server],
) -> Server:
    """digits@1.0.0 and 1.1.0 published, prod -> 1.0.0, served as digits@prod."""
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(digits_crate_path)
    registry.publish(digits_v2_path)
    registry.set_alias("digits", "prod", "1.0.0")
    return start_server(registry.root, "digits@prod", "--poll-interval", "0.05")


# --- a webhook receiver on loopback (webhooks, rollouts) ------------------------------

SECRET = "s3cret-for-webhook-tests"


class Receiver:
    """An HTTP receiver on 127.0.0.1 that records each POST; answers 500 to the first
    ``fail`` requests."""

    def __init__(self, fail: int = 0) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.fail = fail
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                failing = receiver.fail > 0
                receiver.fail -= 1
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.requests]

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.requests) >= count, self.events()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(fail: int = 0) -> Receiver:
        made.append(Receiver(fail))
        return made[-1]

    yield make
    for r in made:
        r.server.shutdown()
        r.server.server_close()


def valid_signature(headers: dict[str, str], body: bytes) -> bool:
    """What a receiver checks: the HMAC over "<t>.<body>", and a recent t."""
    fields = dict(part.split("=", 1) for part in headers["X-Modelcrate-Signature"].split(","))
    expected = hmac.new(
        SECRET.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 300
