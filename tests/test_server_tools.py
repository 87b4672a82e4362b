"""`modelcrate bench`, the JSON access log, and a serving path free of torch."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import modelcrate as mc
from conftest import Server, make_onnx, run_cli


def test_bench_command_reports_throughput_and_errors(served_digits: Server) -> None:
    result = run_cli(
        "bench",
        served_digits.url,
        "digits@prod",
        "--concurrency",
        "4",
        "--duration",
        "1s",
        "--json",
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["requests"] > 0 and report["errors"] == 0
    assert report["rps"] > 0 and report["p50_ms"] <= report["p99_ms"]
    assert set(report["statuses"]) == {"200"}


@pytest.mark.parametrize("duration", ["abc", "-1s", "10x"], ids=str)
def test_bench_rejects_bad_durations(duration: str) -> None:
    result = run_cli("bench", "http://127.0.0.1:9", "digits", "--duration", duration)
    assert result.returncode == 2 and "--duration" in result.stderr


def test_access_log_is_one_json_line_per_request(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(mc.pack(make_onnx(tmp_path / "m.onnx"), name="tiny", version="1.0.0"))
    server = start_server(registry.root, "tiny", "--access-log")
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    assert httpx.post(server.url + "/v2/models/tiny/infer", json=body).status_code == 200
    assert httpx.post(server.url + "/v2/models/nope/infer", json=body).status_code == 404
    server.stop()
    entries = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    infer = [e for e in entries if e["path"].endswith("/infer")]
    assert [(e["method"], e["path"], e["status"]) for e in infer] == [
        ("POST", "/v2/models/tiny/infer", 200),
        ("POST", "/v2/models/nope/infer", 404),
    ]
    assert all(e["ms"] >= 0 and e["client"] == "127.0.0.1" for e in infer)


def test_serving_path_imports_no_torch(tmp_path: Path) -> None:
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(mc.pack(make_onnx(tmp_path / "m.onnx"), name="tiny", version="1.0.0"))
    code = f"""
import asyncio, sys
sys.modules["torch"] = None  # any attempt to import torch now fails loudly
import httpx
from modelcrate.server.runner import ServeSettings, build_app

async def main():
    app = build_app(ServeSettings(refs=["tiny"], registry={str(registry.root)!r}))
    inbox, outbox = asyncio.Queue(), asyncio.Queue()
    await inbox.put({{"type": "lifespan.startup"}})
    lifespan = asyncio.create_task(app({{"type": "lifespan", "asgi": {{"version": "3.0"}}}},
                                       inbox.get, outbox.put))
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        body = {{"inputs": [{{"name": "x", "shape": [1, 4], "datatype": "FP32",
                             "data": [1, 2, 3, 4]}}]}}
        response = await client.post("/v2/models/tiny/infer", json=body)
        assert response.status_code == 200, response.text
    await inbox.put({{"type": "lifespan.shutdown"}})
    await lifespan

asyncio.run(main())
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
