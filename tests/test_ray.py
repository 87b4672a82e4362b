"""`modelcrate serve --ray`: the same app as a Ray Serve deployment on a local Ray instance."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

import modelcrate as mc
from conftest import Server, make_onnx

STATUS = """
import ray
from ray import serve
ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
app = serve.status().applications["modelcrate"]
states = app.deployments["modelcrate"].replica_states
print(states.get("RUNNING", 0))
"""


@pytest.mark.slow
def test_serve_with_ray_runs_replicas_that_follow_aliases(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    pytest.importorskip("ray.serve", reason="the ray extra is not installed")
    registry = mc.Registry.open(tmp_path / "registry")
    for version, seed in (("1.0.0", 0), ("2.0.0", 1)):
        source = make_onnx(tmp_path / version / "tiny.onnx", seed=seed)
        registry.publish(mc.pack(source, name="tiny", version=version))
    registry.set_alias("tiny", "prod", "1.0.0")
    server = start_server(
        registry.root, "tiny@prod", "--ray", "--replicas", "2", "--poll-interval", "0.2"
    )
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    answer = httpx.post(f"{server.url}/v2/models/tiny/infer", json=body, timeout=10)
    assert answer.status_code == 200 and answer.json()["model_version"] == "1.0.0"
    expected = mc.load("tiny@1.0.0", registry=registry).predict(np.array([[1, 2, 3, 4]], "f"))
    assert np.allclose(answer.json()["outputs"][0]["data"], expected["y"].ravel())

    running = subprocess.run(
        [sys.executable, "-c", STATUS], capture_output=True, text=True, timeout=120
    )
    assert running.stdout.strip().splitlines()[-1] == "2", running.stderr[-2000:]

    registry.set_alias("tiny", "prod", "2.0.0")  # every replica follows the move
    deadline = time.monotonic() + 20  # one replica answering 2.0.0 says nothing of the other
    while not _all_new(server, body) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _all_new(server, body)


def _all_new(server: Server, body: dict[str, object]) -> bool:
    versions = {
        httpx.post(f"{server.url}/v2/models/tiny/infer", json=body, timeout=10).json()[
            "model_version"
        ]
        for _ in range(10)
    }
    return versions == {"2.0.0"}
