"""Rollouts against a real server under load: a candidate that disagrees with stable is
rolled back in canary and in shadow mode with every request answered 200; a healthy one is
promoted through all steps; a slow one breaches --max-p99-ms; webhooks get every event."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import modelcrate as mc
from conftest import SECRET, Receiver, Server, make_onnx, matmul_chain, run_cli, valid_signature
from services import Postgres


class Load:
    """Clients sending /v2/models/tiny/infer (the alias) until stopped; every status kept.
    Returns once every client has had an answer, so the test runs under load from its start."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url = url + "/v2/models/tiny/infer"
        self.statuses: list[int] = []
        self.versions: set[str] = set()  # model_version of each answer
        self.answered: set[int] = set()  # clients that have had an answer
        self.running = True
        self.threads = [threading.Thread(target=self.send, args=(i,)) for i in range(clients)]
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(self.answered) < clients and time.monotonic() < deadline:
            time.sleep(0.01)
        if len(self.answered) < clients:
            self.stop()
            raise AssertionError("a client of the load never got an answer")

    def send(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(timeout=30) as client:
            while self.running:
                x = rng.standard_normal(4).round(3).tolist()
                body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x}]}
                response = client.post(self.url, json=body)
                self.statuses.append(response.status_code)
                self.answered.add(seed)
                if response.status_code == 200:
                    self.versions.add(response.json()["model_version"])

    def stop(self) -> list[int]:
        self.running = False
        for thread in self.threads:
            thread.join()
        return self.statuses


@pytest.fixture
def tiny(
    tmp_path: Path, start_server: Callable[..., Server]
) -> Iterator[tuple[mc.Registry, Server]]:
    """tiny@1.0.0 behind prod, candidates 1.1.0 (other weights: disagrees), 1.2.0 (the same
    weights: agrees) and 1.3.0 (a much slower graph), served as tiny@prod."""
    registry = mc.Registry.open(tmp_path / "registry")
    sources = {
        "1.0.0": make_onnx(tmp_path / "a" / "m.onnx", seed=0),
        "1.1.0": make_onnx(tmp_path / "b" / "m.onnx", seed=1),
        "1.2.0": make_onnx(tmp_path / "c" / "m.onnx", seed=0),
        "1.3.0": matmul_chain(tmp_path / "slow.onnx", [4] + [1024] * 12 + [2]),  # much slower
    }
    for version, source in sources.items():
        registry.publish(mc.pack(source, name="tiny", version=version))
    registry.set_alias("tiny", "prod", "1.0.0")
    yield registry, start_server(registry.root, "tiny@prod", "--poll-interval", "0.1")


def wait_until_ended(registry: mc.Registry, timeout: float = 60.0) -> mc.Rollout:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = registry.rollout("tiny", "prod")
        if found is not None and found.state != "running":
            return found
        time.sleep(0.1)
    raise AssertionError(f"the rollout did not end: {registry.rollout('tiny', 'prod')}")


def test_a_disagreeing_canary_is_rolled_back_with_no_failed_request(
    tiny: tuple[mc.Registry, Server], receiver: Callable[..., Receiver]
) -> None:
    registry, server = tiny
    hook = receiver()
    registry.add_webhook(hook.url, ["rollout", "alert"], SECRET)
    load = Load(server.url)
    try:
        started = run_cli(
            "rollout",
            "start",
            "tiny",
            "prod",
            "1.1.0",
            "--canary",
            "50",
            "--steps",
            "50,100",
            "--interval",
            "60s",
            "--max-disagreement",
            "0.2",
            "--registry",
            str(registry.root),
            "--json",
            check=True,
        )
        assert json.loads(started.stdout)["state"] == "running"
        ended = wait_until_ended(registry)
    finally:
        statuses = load.stop()
    assert ended.state == "rolled_back" and "disagreement" in ended.reason
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert registry.resolve("tiny@prod").version == "1.0.0"  # the alias never moved
    assert ended.figures["1.1.0"]["compared"] >= 20 and ended.figures["1.1.0"]["disagreement"] > 0.2
    breach = next(e for e in registry.audit("tiny") if e.action == "slo-breach")
    assert "disagreement" in breach.detail and "1.1.0: compared" in breach.detail
    actions = [e.action for e in registry.audit("tiny")]
    assert actions[-3:] == ["rollout-start", "rollout-rollback", "slo-breach"] or actions[-2:] == [
        "rollout-rollback",
        "slo-breach",
    ]
    hook.wait_for(3)
    events = hook.events()
    assert [(e["event"], e["action"]) for e in events] == [
        ("rollout", "rollout-start"),
        ("rollout", "rollout-rollback"),
        ("alert", "slo-breach"),
    ]
    assert events[2]["figures"]["1.1.0"]["disagreement"] > 0.2
    assert all(valid_signature(h, b) for h, b in hook.requests)
    status = json.loads(
        run_cli(
            "rollout",
            "status",
            "tiny",
            "prod",
            "--json",
            "--registry",
            str(registry.root),
            check=True,
        ).stdout
    )
    assert status["state"] == "rolled_back" and status["figures"]["1.0.0"]["requests"] > 0
    page = httpx.get(server.url + "/ui/models/tiny", timeout=10).text
    shown = page.split('id="rollout-prod"')[1].split("</section>")[0]
    assert "rolled_back" in shown and "disagreement" in shown and "1.1.0" in shown


def test_a_healthy_canary_is_promoted_through_every_step(tiny: tuple[mc.Registry, Server]) -> None:
    registry, server = tiny
    load = Load(server.url)
    try:
        mc.rollout(
            "tiny",
            "prod",
            "1.2.0",
            steps=[25, 50, 100],
            interval="1s",
            max_error_rate=0.01,
            max_disagreement=0.01,
            registry=registry,
        )
        ended = wait_until_ended(registry)
        time.sleep(1.0)  # the server swaps to the promoted version under load
    finally:
        statuses = load.stop()
    assert ended.state == "promoted" and ended.step == 2, ended
    assert set(statuses) == {200}
    assert load.versions == {"1.0.0", "1.2.0"}  # answers name the version that gave them
    metrics = httpx.get(server.url + "/metrics", timeout=5).text
    assert (
        'version="1.2.0"' in metrics
        and 'modelcrate_request_latency_seconds_count{model="tiny",version="1.0.0"}' in metrics
    )
    assert registry.resolve("tiny@prod").version == "1.2.0"
    steps = [e.detail for e in registry.audit("tiny") if e.action == "rollout-step"]
    assert [s.split("now ")[-1] for s in steps] == ["50%", "100%"]
    ready = httpx.get(server.url + "/v2/models/tiny", timeout=5).json()
    assert ready["versions"] == ["1.2.0"]


def test_a_disagreeing_shadow_is_rolled_back_and_the_alias_never_moves(
    tiny: tuple[mc.Registry, Server],
) -> None:
    registry, server = tiny
    load = Load(server.url)
    try:
        run_cli(
            "rollout",
            "start",
            "tiny",
            "prod",
            "1.1.0",
            "--shadow",
            "--interval",
            "5m",
            "--max-disagreement",
            "0.2",
            "--registry",
            str(registry.root),
            check=True,
        )
        ended = wait_until_ended(registry)
    finally:
        statuses = load.stop()
    assert ended.state == "rolled_back" and ended.mode == "shadow" and ended.weight == 0
    assert set(statuses) == {200}
    assert registry.resolve("tiny@prod").version == "1.0.0"


def test_a_slow_candidate_breaches_the_p99_limit(tiny: tuple[mc.Registry, Server]) -> None:
    registry, server = tiny
    load = Load(server.url, clients=2)
    try:
        mc.rollout(
            "tiny", "prod", "1.3.0", canary=50, interval="5m", max_p99_ms=5, registry=registry
        )
        ended = wait_until_ended(registry, timeout=90)
    finally:
        statuses = load.stop()
    assert ended.state == "rolled_back" and "p99" in ended.reason, ended
    assert ended.figures["1.3.0"]["p99_ms"] > 5
    assert set(statuses) == {200}


def test_a_candidate_that_fails_its_warm_up_is_rolled_back(
    tiny: tuple[mc.Registry, Server], tmp_path: Path
) -> None:
    registry, server = tiny
    broken = helper.make_graph(  # x / 0: NaN on the warm-up's zeros
        [
            helper.make_node("Div", ["x", "zero"], ["y0"]),
            helper.make_node("Slice", ["y0", "s", "e", "a"], ["y"]),
        ],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [
            numpy_helper.from_array(np.zeros(4, np.float32), "zero"),
            numpy_helper.from_array(np.array([0], np.int64), "s"),
            numpy_helper.from_array(np.array([2], np.int64), "e"),
            numpy_helper.from_array(np.array([1], np.int64), "a"),
        ],
    )
    model = helper.make_model(broken, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(tmp_path / "broken.onnx"))
    registry.publish(mc.pack(tmp_path / "broken.onnx", name="tiny", version="1.9.0"))
    load = Load(server.url, clients=1)
    try:
        mc.rollout("tiny", "prod", "1.9.0", canary=50, registry=registry)
        ended = wait_until_ended(registry)
    finally:
        statuses = load.stop()
    assert ended.state == "rolled_back" and "failed to load" in ended.reason, ended
    assert "not finite" in ended.reason and set(statuses) == {200}
    assert registry.resolve("tiny@prod").version == "1.0.0"


def test_rollout_commands_refuse_bad_input_clearly(tiny: tuple[mc.Registry, Server]) -> None:
    registry, _ = tiny
    where = ["--registry", str(registry.root)]
    cases = [
        (["start", "tiny", "staging", "1.1.0"], "no such alias"),
        (["start", "tiny", "prod", "1.0.0"], "already points at 1.0.0"),
        (["start", "tiny", "prod", "9.9.9"], "9.9.9"),
        (["start", "tiny", "prod", "1.1.0", "--steps", "50,10"], "rising percentages"),
        (["start", "tiny", "prod", "1.1.0", "--steps", "10,50"], "ending at 100"),
        (["start", "tiny", "prod", "1.1.0", "--interval", "soon"], "not a duration"),
        (["promote", "tiny", "prod"], "no rollout is running"),
        (["status", "tiny", "prod"], "no rollout on tiny@prod"),
    ]
    for args, message in cases:
        result = run_cli("rollout", *args, *where)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    run_cli("rollout", "start", "tiny", "prod", "1.1.0", *where, check=True)
    twice = run_cli("rollout", "start", "tiny", "prod", "1.2.0", *where)
    assert twice.returncode != 0 and "is running" in twice.stderr
    run_cli("rollout", "abort", "tiny", "prod", *where, check=True)
    aborted = registry.rollout("tiny", "prod")
    assert aborted is not None and aborted.state == "aborted"
    assert registry.resolve("tiny@prod").version == "1.0.0"


def test_two_servers_on_postgresql_decide_once(
    tmp_path: Path, postgres: Postgres, start_server: Callable[..., Server]
) -> None:
    url = f"{postgres.database()}?blobs={tmp_path / 'blobs'}"
    registry = mc.Registry.open(url)
    for version, seed in (("1.0.0", 0), ("1.1.0", 1)):
        source = make_onnx(tmp_path / version / "m.onnx", seed=seed)
        registry.publish(mc.pack(source, name="tiny", version=version))
    registry.set_alias("tiny", "prod", "1.0.0")
    servers = [start_server(url, "tiny@prod", "--poll-interval", "0.1") for _ in range(2)]
    loads = [Load(s.url, clients=2) for s in servers]
    try:
        mc.rollout(
            "tiny",
            "prod",
            "1.1.0",
            canary=50,
            interval="5m",
            max_disagreement=0.2,
            registry=registry,
        )
        ended = wait_until_ended(registry)
    finally:
        statuses = [s for load in loads for s in load.stop()]
    assert ended.state == "rolled_back" and set(statuses) == {200}
    actions = [e.action for e in registry.audit("tiny")]
    assert actions.count("rollout-rollback") == 1 and actions.count("slo-breach") == 1
    # The lease: whoever holds it decides; another holder waits for it to lapse.
    for server in servers:  # only the two of us now
        server.stop()
    again = mc.rollout("tiny", "prod", "1.1.0", canary=10, registry=registry)
    assert registry.claim_rollout(again.id, "a", 60)
    assert not registry.claim_rollout(again.id, "b", 60)
    assert registry.claim_rollout(again.id, "a", 60)  # the holder renews
    registry.abort_rollout("tiny", "prod")
    assert not registry.claim_rollout(again.id, "a", 60)  # ended: nobody decides
