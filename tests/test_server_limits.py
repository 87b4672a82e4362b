"""Bad requests get a 4xx JSON error naming the problem; the server stays up."""

from __future__ import annotations

import json
import pickle
import re
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

import modelcrate as mc
from conftest import Server, binary_header, matmul_chain

GOOD = {"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}


def tensor(**patch: object) -> dict[str, object]:
    return {"inputs": [{**GOOD, **patch}]}


CASES = [
    ("shape-vs-data", tensor(data=[0.0] * 10), 400, "shape holds 64 elements but data has 10"),
    ("huge-shape", tensor(shape=[100_000_000, 100_000_000], data=[1.0]), 400, "the limit is"),
    ("negative-dim", tensor(shape=[-1, 1, 8, 8]), 400, "non-negative integers"),
    ("datatype", tensor(datatype="FLOAT99"), 400, "unknown datatype 'FLOAT99'"),
    ("nan-token", tensor(data=[float("nan")] + [0.0] * 63), 400, "NaN and Infinity are not JSON"),
    ("wrong-name", tensor(name="pixels"), 400, "missing ['x']"),
    (
        "wrong-shape",
        tensor(shape=[1, 64], data=[0.0] * 64),
        400,
        "input 'x': expected shape [-1, 1, 8, 8] (float32), got [1, 64] (float32)",
    ),
    ("strings-for-floats", tensor(data=["a"] * 64), 400, "data must be numbers"),
    ("no-inputs", {"inputs": []}, 400, "non-empty 'inputs'"),
    ("not-object", [1, 2, 3], 400, "must be a JSON object"),
    ("duplicate-input", {"inputs": [GOOD, GOOD]}, 400, "appears twice"),
    (
        "bad-classification",
        {**tensor(), "parameters": {"classification": "x"}},
        400,
        "classification must be",
    ),
]


@pytest.mark.parametrize(("case", "body", "status", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_infer_requests(
    served_digits: Server, case: str, body: object, status: int, message: str
) -> None:
    url = served_digits.url + "/v2/models/digits/infer"
    content = json.dumps(body, allow_nan=True)
    started = time.perf_counter()
    response = httpx.post(url, content=content, headers={"Content-Type": "application/json"})
    elapsed = time.perf_counter() - started
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert_no_internals(response.text)
    if case == "huge-shape":
        assert elapsed < 5  # refused from the declared shape, nothing allocated
    # The server is still up and other requests succeed.
    assert httpx.post(url, json=tensor()).status_code == 200


def assert_no_internals(text: str) -> None:
    assert "Traceback" not in text
    assert not re.search(r"/(tmp|home|root|usr|work)/", text), text


def test_invalid_json_and_unknown_models(served_digits: Server) -> None:
    url = served_digits.url
    bad = httpx.post(
        url + "/v2/models/digits/infer",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    unknown = httpx.post(url + "/v2/models/ghost/infer", json=tensor())
    assert unknown.status_code == 404 and "ghost" in unknown.json()["error"]
    version = httpx.post(url + "/v2/models/digits/versions/9.9.9/infer", json=tensor())
    assert version.status_code == 404 and "9.9.9" in version.json()["error"]
    weird = httpx.get(url + "/v2/models/..%2F..%2Fetc")
    assert weird.status_code == 404
    for response in (bad, unknown, version, weird):
        assert_no_internals(response.text)


def test_declared_body_size_is_refused_before_reading(served_digits: Server) -> None:
    """A Content-Length of 1 TB gets 413 at once; the server never waits for the bytes."""
    with socket.create_connection(("127.0.0.1", served_digits.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1099511627776\r\n\r\n{"
        )
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:100]


def test_oversized_body_gets_413(served_digits: Server) -> None:
    body = b" " * (65 * 1024 * 1024) + json.dumps(tensor()).encode()  # 65 MB > the 64 MB default
    response = httpx.post(
        served_digits.url + "/v2/models/digits/infer",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413 and "limit" in response.json()["error"]


@pytest.mark.parametrize(
    "content_type", ["application/python-pickle", "application/x-yaml", "text/html"], ids=str
)
def test_other_content_types_are_refused(served_digits: Server, content_type: str) -> None:
    response = httpx.post(
        served_digits.url + "/v2/models/digits/infer",
        content=pickle.dumps({"inputs": []}),
        headers={"Content-Type": content_type},
    )
    assert response.status_code == 415
    assert content_type in response.json()["error"]


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "APPLICATION/JSON ;v=2"]
)
def test_json_content_types_with_parameters_or_capitals_are_accepted(
    served_digits: Server, content_type: str
) -> None:
    response = httpx.post(
        served_digits.url + "/v2/models/digits/infer",
        content=json.dumps({"inputs": [GOOD]}).encode(),
        headers={"Content-Type": content_type},
    )
    assert response.status_code == 200, response.text


def test_binary_extension_length_errors(served_digits: Server) -> None:
    x = np.zeros((1, 1, 8, 8), np.float32)
    header = json.dumps(
        {"inputs": [{**GOOD, "data": None, "parameters": {"binary_data_size": x.nbytes - 4}}]}
    ).encode()
    del_data = json.loads(header)
    del del_data["inputs"][0]["data"]
    header = json.dumps(del_data).encode()
    response = httpx.post(
        served_digits.url + "/v2/models/digits/infer",
        content=header + x.tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert response.status_code == 400
    assert "needs 256 bytes" in response.json()["error"]
    lying = httpx.post(
        served_digits.url + "/v2/models/digits/infer",
        content=b"{}",
        headers={"Inference-Header-Content-Length": "999"},
    )
    assert lying.status_code == 400 and "outside the body" in lying.json()["error"]


def test_nan_in_binary_data_is_refused(served_digits: Server) -> None:
    x = np.zeros((1, 1, 8, 8), np.float32)
    x[0, 0, 3, 3] = np.inf
    header = binary_header(x)
    response = httpx.post(
        served_digits.url + "/v2/models/digits/infer",
        content=header + x.tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert response.status_code == 400 and "NaN or Inf" in response.json()["error"]


def test_request_timeout_gives_504_and_the_server_recovers(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """A small request (read at once) whose inference takes about a second."""
    registry = mc.Registry.open(tmp_path / "registry")
    slow = matmul_chain(tmp_path / "slow.onnx", [4] + [2048] * 8 + [2])
    registry.publish(mc.pack(slow, name="slow", version="1.0.0"))
    server = start_server(registry.root, "slow", "--request-timeout", "0.05")
    x = np.ones((512, 4), np.float32)  # eight 2048-wide layers: 0.2-1 s
    body = {
        "inputs": [{"name": "x", "shape": [512, 4], "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    response = httpx.post(server.url + "/v2/models/slow/infer", json=body, timeout=30)
    assert response.status_code == 504 and "longer than 0.05 s" in response.json()["error"]
    # Several at once: each times out or, while the model is still busy with a batch of
    # 512 rows, is refused (503); the timed-out ones are counted as such.
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda _: httpx.post(server.url + "/v2/models/slow/infer", json=body, timeout=30),
                range(4),
            )
        )
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {503, 504}, statuses
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
    metrics = httpx.get(server.url + "/metrics").text
    timed_out = 1 + statuses.count(504)
    counted = f'modelcrate_requests_total{{code="504",model="slow",version="1.0.0"}} {timed_out}.0'
    assert counted in metrics


def test_slow_header_clients_are_cut_off_and_do_not_starve_others(
    tmp_path: Path, digits_crate_path: Path, start_server: Callable[..., Server]
) -> None:
    """Slowloris: 200 connections trickle a request head one byte at a time. Health checks
    stay fast meanwhile, and every trickler is disconnected at the header deadline even
    though it never stops sending."""
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(digits_crate_path)
    server = start_server(registry.root, "digits@1.0.0", "--header-timeout", "2")
    sockets = []
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sock.setblocking(False)
        sockets.append(sock)
    started, latencies, closed = time.monotonic(), [], set()
    with httpx.Client(base_url=server.url, timeout=5) as client:
        while time.monotonic() - started < 4.0 and len(closed) < len(sockets):
            for number, sock in enumerate(sockets):
                if number in closed:
                    continue
                try:
                    sock.send(b"X")  # one more byte of a header that never ends
                    if sock.recv(1024) == b"":
                        closed.add(number)
                except BlockingIOError:
                    pass
                except OSError:  # reset by the server
                    closed.add(number)
            tick = time.monotonic()
            assert client.get("/v2/health/ready").status_code == 200
            latencies.append(time.monotonic() - tick)
            time.sleep(0.2)
    for sock in sockets:
        sock.close()
    assert len(closed) == len(sockets), f"only {len(closed)} of 200 slow clients were cut off"
    assert max(latencies) < 0.5, latencies
    assert time.monotonic() - started < 4.0
