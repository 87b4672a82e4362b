"""Hostile clients against a real `modelcrate serve`, one test per finding of the second
hardening pass (THREATS.md names each test): bodies and headers bounded in bytes and time,
scopes on every route, browser-facing defences, bounded lineage, path collisions."""

from __future__ import annotations

import hashlib
import json
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

import modelcrate as mc
from conftest import TABLES_AFTER_0004, Server, make_onnx
from modelcrate.errors import CrateFormatError
from modelcrate.trust.keys import generate

ADMIN = "admin-token-0123456789abcdef"
READER = "reader-token-0123456789abc"
RUNNER = "runner-token-0123456789abc"
MiB = 1024 * 1024
X = {"inputs": np.zeros((1, 1, 8, 8)).tolist()}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def rss(server: Server) -> int:
    """The server process's resident memory in bytes (it serves in-process with one worker)."""
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def guarded(
    tmp_path: Path,
    digits_crate_path: Path,
    digits_v2_path: Path,
    start_server: Callable[..., Server],
) -> tuple[Server, mc.Registry]:
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(digits_crate_path)
    registry.publish(digits_v2_path)
    registry.set_alias("digits", "prod", "1.0.0")
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        f'[[tokens]]\nname = "ops"\ntoken = "{ADMIN}"\n'
        'scopes = ["infer", "read", "write", "admin"]\n'
        f'[[tokens]]\nname = "reader"\ntoken = "{READER}"\nscopes = ["read"]\n'
        f'[[tokens]]\nname = "runner"\ntoken = "{RUNNER}"\nscopes = ["read", "infer"]\n'
    )
    server = start_server(
        registry.root, "digits@prod", "--token-file", str(tokens), "--max-body-mb", "8"
    )
    return server, registry


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split()[1])


def flood_body(server: Server, method: str, path: str, total: int) -> int:
    """Send a chunked JSON body of ``total`` bytes until the server answers; its status."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    sock.sendall(head.encode())
    block = b"%x\r\n" % MiB + b" " * MiB + b"\r\n"
    sent = 0
    with sock:
        while sent < total and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(block)
            except OSError:  # the server answered and closed
                break
            sent += MiB
        return status_of(sock.recv(65536))


def test_every_route_that_takes_a_body_refuses_300_mb_in_bounded_memory(
    guarded: tuple[Server, mc.Registry],
) -> None:
    """Finding 1: each route that reads a body counts it; 413 before reading past its limit."""
    server, registry = guarded
    routes = [
        ("POST", "/v2/models/digits/infer"),
        ("POST", "/ui/api/models/digits/1.0.0/predict"),
        ("POST", "/v2/registry/versions"),
        ("PUT", "/v2/registry/models/digits/aliases/prod"),
        ("POST", "/ui/api/models/digits/aliases/prod/set"),
        ("POST", "/v2/repository/models/digits/load"),
    ]
    before = rss(server)
    for method, path in routes:
        assert flood_body(server, method, path, 300 * MiB) == 413, path
        grown = rss(server) - before
        assert grown < 64 * MiB, f"{path}: the server grew by {grown / MiB:.0f} MiB"
    assert registry.resolve("digits@prod").version == "1.0.0"
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200


def test_json_routes_refuse_bodies_a_web_page_could_send(
    guarded: tuple[Server, mc.Registry],
) -> None:
    """A cross-origin page can POST text/plain without a preflight; JSON routes refuse it."""
    server, _ = guarded
    headers = {**auth(RUNNER), "Content-Type": "text/plain"}
    url = server.url + "/ui/api/models/digits/1.0.0/predict"
    response = httpx.post(url, content=json.dumps(X), headers=headers)
    assert response.status_code == 415 and "application/json" in response.json()["error"]


def test_try_it_needs_the_infer_scope(guarded: tuple[Server, mc.Registry]) -> None:
    """Finding 2: a read token can browse but not run a model, through the UI as over OIP."""
    server, _ = guarded
    url = server.url + "/ui/api/models/digits/1.0.0/predict"
    refused = httpx.post(url, json=X, headers=auth(READER))
    assert refused.status_code == 403 and "'infer'" in refused.json()["error"]
    assert (
        httpx.post(
            server.url + "/v2/models/digits/infer", headers=auth(READER), json={"inputs": []}
        ).status_code
        == 403
    )
    ran = httpx.post(url, json=X, headers=auth(RUNNER))
    assert ran.status_code == 200 and ran.json()["outputs"]["output"]["shape"] == [1, 10]
    page = httpx.get(server.url + "/ui/models/digits/1.0.0", headers=auth(READER))
    assert page.status_code == 200 and 'id="try-form"' in page.text


def test_try_it_runs_only_served_versions_under_the_trust_policy(
    tmp_path: Path,
    digits_crate_path: Path,
    digits_v2_path: Path,
    start_server: Callable[..., Server],
) -> None:
    """The UI used to load any version itself, skipping `serve --trust`; now it asks the
    model manager, which serves only the signed 1.0.0."""
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(digits_crate_path)
    registry.publish(digits_v2_path)
    generate(tmp_path / "me")
    registry.sign("digits@1.0.0", tmp_path / "me.key")
    server = start_server(registry.root, "digits@1.0.0", "--trust", str(tmp_path / "me.pub"))
    assert httpx.get(server.url + "/v2/models/digits/versions/1.1.0/ready").status_code != 200
    unsigned = httpx.post(server.url + "/ui/api/models/digits/1.1.0/predict", json=X)
    assert unsigned.status_code == 404 and "not loaded" in unsigned.json()["error"]
    page = httpx.get(server.url + "/ui/models/digits/1.1.0")
    assert "does not serve digits@1.1.0" in page.text and 'id="try-form"' not in page.text
    signed = httpx.post(server.url + "/ui/api/models/digits/1.0.0/predict", json=X)
    assert signed.status_code == 200
    stats = httpx.get(server.url + "/v2/models/digits/stats").json()["model_stats"][0]
    assert (stats["inference_count"], stats["failure_count"]) == (2, 1)  # counted like OIP


def test_a_trickled_body_is_cut_at_the_request_timeout(
    tmp_path: Path, digits_crate_path: Path, start_server: Callable[..., Server]
) -> None:
    """Finding 3: the request timeout covers reading the body (408, connection closed)."""
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(digits_crate_path)
    server = start_server(registry.root, "digits", "--request-timeout", "2")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )
    started, answer = time.monotonic(), b""
    with sock:
        while time.monotonic() - started < 8:
            if select.select([sock], [], [], 0.5)[0]:
                answer = sock.recv(65536)
                break
            try:
                sock.sendall(b" ")  # one more byte, every half second
            except OSError:
                break
    elapsed = time.monotonic() - started
    assert status_of(answer) == 408 and b"did not arrive within 2 s" in answer
    assert 1.5 < elapsed < 4, elapsed


def test_idle_connections_are_closed_and_health_stays_answerable(
    tmp_path: Path, digits_crate_path: Path, start_server: Callable[..., Server]
) -> None:
    """Finding 3: connections that send nothing fill the connection limit; health checks are
    still answered, and the idle ones are closed at the header deadline."""
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(digits_crate_path)
    server = start_server(
        registry.root, "digits", "--max-connections", "32", "--header-timeout", "3"
    )
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(200)]
    opened = time.monotonic()
    time.sleep(0.3)
    with httpx.Client(base_url=server.url, timeout=5) as client:
        for path in ("/v2/health/live", "/v2/health/ready"):
            tick = time.monotonic()
            assert client.get(path).status_code == 200
            assert time.monotonic() - tick < 1
        assert client.get("/v2/models/digits").status_code == 503  # the limit holds otherwise
    for sock in idle:
        sock.settimeout(max(0.1, opened + 6 - time.monotonic()))
        assert sock.recv(1) == b""  # closed by the server
        sock.close()
    assert time.monotonic() - opened < 6
    assert httpx.get(server.url + "/v2/models/digits", timeout=5).status_code == 200


def test_a_kept_alive_connection_has_the_header_deadline_for_its_next_request(
    tmp_path: Path, digits_crate_path: Path, start_server: Callable[..., Server]
) -> None:
    """After a response, the next request's head is due within --header-timeout of it,
    however it trickles in (the deadline's timer was set when the connection opened)."""
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(digits_crate_path)
    server = start_server(registry.root, "digits", "--header-timeout", "2")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with sock:
        time.sleep(1.5)  # most of the first head's time gone before it is sent
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = sock.recv(65536)
        while not answer.endswith(b'{"live":true}'):
            answer += sock.recv(65536)
        assert status_of(answer) == 200
        answered, closed = time.monotonic(), False
        sock.sendall(b"GET /")
        while time.monotonic() - answered < 6 and not closed:
            try:
                closed = select.select([sock], [], [], 0.3)[0] != [] and sock.recv(1) == b""
                sock.sendall(b"a")  # one more byte of a request line that never ends
            except OSError:
                closed = True
        elapsed = time.monotonic() - answered
    assert closed and 1.5 < elapsed < 3.5, elapsed


def test_duplicate_requested_outputs_are_refused(served_digits: Server) -> None:
    """Finding 4: one output listed 20,000 times does not make a 20,000-fold response."""
    body = {**X, "outputs": [{"name": "output"}] * 20_000}
    body["inputs"] = [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]
    response = httpx.post(served_digits.url + "/v2/models/digits/infer", json=body, timeout=10)
    assert response.status_code == 400 and "requested twice" in response.json()["error"]
    assert len(response.content) < 1000


def _variant(base: Path, target: Path, version: str, parents: list[str]) -> Path:
    """A copy of the crate directory ``base`` as another version with the given parents."""
    import shutil

    shutil.copytree(base, target)
    raw = json.loads((target / "crate.json").read_text())
    raw["version"] = version
    raw["lineage"] = {"parents": [{"digest": d} for d in parents], "operation": "merge"}
    (target / "crate.json").write_text(json.dumps(raw))
    return target


def _fake_digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def test_lineage_is_capped_indexed_and_rendered_bounded(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """Finding 5: a version claims 64 parents (the cap) that each claim 64 more: the page stays
    small, draws only real parent-child lines, and says what it left out."""
    base = mc.pack(make_onnx(tmp_path / "m.onnx"), name="fam", version="1.0.0")
    root = base.unpack(tmp_path / "base")
    registry = mc.Registry.open(tmp_path / "registry")
    too_many = _variant(root, tmp_path / "many", "9.0.0", [_fake_digest(str(i)) for i in range(65)])
    with pytest.raises(CrateFormatError, match="at most 64 allowed, 65 given"):
        registry.publish(too_many)
    parents = []
    for i in range(64):
        crate = _variant(
            root, tmp_path / f"p{i}", f"1.0.{i}", [_fake_digest(f"{i}-{j}") for j in range(64)]
        )
        parents.append(registry.publish(crate).digest)
    registry.publish(_variant(root, tmp_path / "child", "2.0.0", parents))
    graph = registry.lineage("fam@2.0.0")
    assert [n.depth for n in graph.ancestors[:65]] == [1] * 64 + [2]
    assert graph.truncated and len(graph.ancestors) == 1000
    assert registry.lineage("fam@1.0.7").descendants[0].ref == "fam@2.0.0"

    server = start_server(registry.root, "fam@1.0.0")
    started = time.monotonic()
    page = httpx.get(server.url + "/ui/models/fam/2.0.0", timeout=30)
    assert page.status_code == 200 and time.monotonic() - started < 5
    assert len(page.content) < 1_000_000
    svg = page.text.split('<svg class="lineage"', 1)[1].split("</svg>", 1)[0]
    assert svg.count("<rect") == 1 + 2 * 9  # self, then 8 boxes and a "more" box per column
    assert "… 56 more" in svg and "more than 200 relatives" in svg
    assert svg.count("<line") == 8 + 8  # child->its 8 shown parents, 8 shown grandparents


def test_the_lineage_index_is_filled_for_registries_made_before_it(tmp_path: Path) -> None:
    """Migration 0005 reads the parents of versions published before the index existed."""
    import sqlite3

    registry = mc.Registry.open(tmp_path / "registry")
    parent = mc.pack(make_onnx(tmp_path / "m.onnx"), name="fam", version="1.0.0")
    registry.publish(parent)
    child = _variant(parent.unpack(tmp_path / "d"), tmp_path / "c", "1.1.0", [parent.digest])
    registry.publish(child)
    registry.close()
    with sqlite3.connect(tmp_path / "registry" / "registry.db") as db:  # as release 0004 left it
        for table in TABLES_AFTER_0004:
            db.execute(f"DROP TABLE {table}")
        db.execute("UPDATE alembic_version SET version_num = '0004'")
    reopened = mc.Registry.open(tmp_path / "registry")
    assert [n.ref for n in reopened.lineage("fam@1.0.0").descendants] == ["fam@1.1.0"]
    assert [n.ref for n in reopened.lineage("fam@1.1.0").ancestors] == ["fam@1.0.0"]


def test_host_names_are_checked_and_security_headers_sent(
    served_digits: Server,
    tmp_path: Path,
    digits_crate_path: Path,
    start_server: Callable[..., Server],
) -> None:
    """Finding 6: a loopback server without tokens answers only loopback Host names (DNS
    rebinding), and every response carries the browser-facing headers."""
    url = served_digits.url
    for path in ("/ui/", "/v2/models/digits", "/v2/registry/models"):
        rebound = httpx.get(url + path, headers={"Host": "attacker.example"})
        assert rebound.status_code == 421 and "--allowed-host" in rebound.json()["error"]
    infer = httpx.post(
        url + "/v2/models/digits/infer",
        json={"inputs": []},
        headers={"Host": "attacker.example:80"},
    )
    assert infer.status_code == 421
    answered = httpx.post(url + "/v2/models/digits/infer", json={"inputs": []})
    refused = httpx.post(url + "/v2/models/digits/infer", content=b"x", headers={"Host": "x.y"})
    for response in (answered, refused):  # the infer route answers outside the middleware
        assert response.headers["x-frame-options"] == "DENY", response.status_code
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert (answered.status_code, refused.status_code) == (400, 421)
    for host in (f"localhost:{served_digits.port}", "127.0.0.1", "[::1]:1", "app.localhost"):
        assert httpx.get(url + "/ui/", headers={"Host": host}).status_code == 200, host
    page = httpx.get(url + "/ui/models/digits/1.0.0")
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    policy = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "img-src 'self' data: blob:" in policy
    assert "default-src 'self'" in policy  # no remote images or scripts in model cards
    registry = mc.Registry.open(tmp_path / "other")
    registry.publish(digits_crate_path)
    named = start_server(registry.root, "digits", "--allowed-host", "models.example")
    assert httpx.get(named.url + "/ui/", headers={"Host": "models.example"}).status_code == 200
    assert httpx.get(named.url + "/ui/", headers={"Host": "evil.example"}).status_code == 421


def test_the_cookie_is_set_only_for_a_token_that_authenticates(
    guarded: tuple[Server, mc.Registry],
) -> None:
    """Finding 7: `?token=bogus` used to overwrite the session cookie."""
    server, _ = guarded
    bogus = httpx.get(server.url + "/ui/?token=bogus-token-0123456789")
    assert bogus.status_code == 401 and "set-cookie" not in bogus.headers
    good = httpx.get(server.url + f"/ui/?token={READER}")
    assert good.status_code == 200 and good.headers["set-cookie"].startswith("modelcrate_token=")


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        (["a", "a/b"], "'a' is also the directory of 'a/b'"),
        (["Model.onnx", "model.onnx"], "names must differ in more than case"),
    ],
)
def test_colliding_file_paths_are_refused_at_publish(
    tmp_path: Path, guarded: tuple[Server, mc.Registry], paths: list[str], message: str
) -> None:
    """Finding 8: a file list that cannot be written out as a directory is refused with one
    line, from the CLI and over HTTP, and nothing is stored."""
    server, registry = guarded
    crate = mc.pack(make_onnx(tmp_path / "m.onnx"), name="clash", version="1.0.0")
    root = crate.unpack(tmp_path / "clash")
    raw = json.loads((root / "crate.json").read_text())
    empty = hashlib.sha256(b"").hexdigest()
    raw["files"] += [{"path": p, "size": 0, "sha256": empty} for p in paths]
    (root / "crate.json").write_text(json.dumps(raw))
    command = [sys.executable, "-m", "modelcrate", "publish", str(root)]
    run = subprocess.run(
        [*command, "--registry", str(registry.root)], capture_output=True, text=True
    )
    assert run.returncode != 0 and message in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    over_http = httpx.post(
        server.url + "/v2/registry/versions",
        headers=auth(ADMIN),
        json={"manifest": json.dumps(raw)},
    )
    assert over_http.status_code == 400 and message in over_http.json()["error"]
    assert [m.name for m in registry.list_models()] == ["digits"]


def test_header_floods_get_431_in_bounded_memory(guarded: tuple[Server, mc.Registry]) -> None:
    """Finding 9: 8 connections each sending 64 MB of headers are cut at 64 KiB."""
    server, _ = guarded
    before = rss(server)
    for _ in range(8):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        with sock:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Flood: ")
            sent = 0
            while sent < 64 * MiB and not select.select([sock], [], [], 0)[0]:
                try:
                    sock.sendall(b"a" * 65536)
                except OSError:
                    break
                sent += 65536
            assert status_of(sock.recv(65536)) == 431
            assert sent < 8 * MiB  # cut at 64 KiB; the rest sat in socket buffers
    assert rss(server) - before < 64 * MiB
    assert httpx.get(server.url + "/v2/health/live").status_code == 200
