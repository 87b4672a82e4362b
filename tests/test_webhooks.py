"""Webhooks: publish and alias events reach a receiver on loopback, signed; a receiver that
fails first gets the event again from a running server; bad input is refused clearly."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import modelcrate as mc
from conftest import SECRET, Receiver, Server, make_onnx, run_cli, valid_signature


def test_events_reach_the_receiver_signed(
    tmp_path: Path, home: Path, receiver: Callable[..., Receiver]
) -> None:
    hook = receiver()
    (tmp_path / "hook.secret").write_text(SECRET + "\n")
    added = run_cli(
        "webhooks",
        "add",
        hook.url,
        "--events",
        "publish,alias",
        "--secret-file",
        str(tmp_path / "hook.secret"),
        "--json",
        check=True,
    )
    hook_id = json.loads(added.stdout)["id"]
    for version, seed in (("1.0.0", 0), ("1.1.0", 1)):
        source = make_onnx(tmp_path / f"{version}.onnx", seed=seed)
        crate = tmp_path / f"{version}.crate"
        run_cli(
            "pack",
            str(source),
            "--name",
            "tiny",
            "--version",
            version,
            "-o",
            str(crate),
            "--no-provenance",
            check=True,
        )
        run_cli("publish", str(crate), check=True)
    run_cli("alias", "set", "tiny", "prod", "1.0.0", check=True)
    run_cli("alias", "set", "tiny", "prod", "1.1.0", check=True)
    run_cli("rollback", "tiny", "prod", check=True)
    run_cli("delete", "tiny@1.1.0", "--force")  # not subscribed: no event
    hook.wait_for(5)  # sent by each command right after its commit, no server running
    events = hook.events()
    assert [(e["event"], e["action"], e["version"]) for e in events] == [
        ("publish", "publish", "1.0.0"),
        ("publish", "publish", "1.1.0"),
        ("alias", "alias-set", "1.0.0"),
        ("alias", "alias-set", "1.1.0"),
        ("alias", "alias-rollback", "1.0.0"),
    ]
    assert events[3]["alias"] == "prod" and events[3]["previous"] == "1.0.0"
    assert events[0]["model"] == "tiny" and events[0]["digest"].startswith("sha256:")
    assert all(valid_signature(h, b) for h, b in hook.requests)
    headers, body = hook.requests[0]
    assert headers["X-Modelcrate-Event"] == "publish"
    assert not valid_signature({**headers, "X-Modelcrate-Signature": "t=1,v1=00"}, body)

    listed = json.loads(run_cli("webhooks", "list", "--json", check=True).stdout)
    assert listed[0]["pending"] == 0 and listed[0]["last_delivered"] is True
    assert "secret" not in listed[0]
    tested = run_cli("webhooks", "test", str(hook_id), check=True)
    assert "delivered" in tested.stdout and hook.events()[-1]["event"] == "test"
    audit = [e.action for e in mc.Registry.open().audit()]
    assert "webhook-add" in audit


def test_a_failed_delivery_is_retried_by_a_running_server(
    tmp_path: Path, receiver: Callable[..., Receiver], start_server: Callable[..., Server]
) -> None:
    hook = receiver(fail=1)  # the first attempt gets a 500
    registry = mc.Registry.open(tmp_path / "registry")
    hook_id = registry.add_webhook(hook.url, ["publish"], SECRET).id
    registry.publish(mc.pack(make_onnx(tmp_path / "m.onnx"), name="tiny", version="1.0.0"))
    hook.wait_for(1)
    (pending,) = registry.webhooks()
    assert pending.pending == 1 and pending.last_status == 500 and not pending.last_delivered
    down = receiver()
    down.server.shutdown()
    down.server.server_close()  # nothing listens there any more
    down_id = registry.add_webhook(down.url, ["publish"], SECRET).id
    registry.publish(mc.pack(make_onnx(tmp_path / "n.onnx", seed=1), name="tiny", version="1.1.0"))

    start_server(registry.root, "tiny@1.0.0")
    hook.wait_for(3)  # 1.1.0 (sent at once) and 1.0.0 again, after its backoff
    versions = [json.loads(body)["version"] for _, body in hook.requests]
    assert sorted(versions) == ["1.0.0", "1.0.0", "1.1.0"]
    first, retry = [(h, b) for h, b in hook.requests if json.loads(b)["version"] == "1.0.0"]
    assert first[1] == retry[1]  # the same event, the same delivery id, signed afresh
    assert first[0]["X-Modelcrate-Delivery"] == retry[0]["X-Modelcrate-Delivery"]
    assert all(valid_signature(h, b) for h, b in hook.requests)
    deadline = time.monotonic() + 10
    while registry.webhooks()[0].pending and time.monotonic() < deadline:
        time.sleep(0.1)
    hooks = {h.id: h for h in registry.webhooks()}
    assert hooks[hook_id].pending == 0 and hooks[hook_id].last_delivered
    assert hooks[down_id].pending == 1 and "ConnectError" in (hooks[down_id].last_error or "")


def test_bad_webhooks_are_refused_clearly(tmp_path: Path, home: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text(SECRET)
    short = tmp_path / "short"
    short.write_text("abc")
    cases = [
        (["ftp://example/x", "--events", "publish", "--secret-file", str(secret)], "http://"),
        (
            ["http://127.0.0.1:9/x", "--events", "publish,nope", "--secret-file", str(secret)],
            "unknown webhook events ['nope']",
        ),
        (
            ["http://127.0.0.1:9/x", "--events", "publish", "--secret-file", str(short)],
            "at least 16 characters",
        ),
        (
            ["http://127.0.0.1:9/x", "--events", "publish", "--secret-file", str(tmp_path / "no")],
            "No such file",
        ),
    ]
    for args, message in cases:
        result = run_cli("webhooks", "add", *args)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
    missing = run_cli("webhooks", "test", "42")
    assert missing.returncode != 0 and "no webhook 42" in missing.stderr
    registry = mc.Registry.open()
    hook = registry.add_webhook("http://127.0.0.1:9/x", ["alias"], SECRET)
    run_cli("webhooks", "remove", str(hook.id), check=True)
    assert registry.webhooks() == []


def test_a_poll_with_nothing_due_imports_no_http_client(tmp_path: Path) -> None:
    """A server polls for due deliveries every second. With none due, the poll must not
    import httpx: with what its command line brings, ~0.1 s of imports holding the GIL,
    a second after startup, while the server answers its first requests."""
    code = (
        "import sys, modelcrate as mc\n"
        "registry = mc.Registry.open(sys.argv[1])\n"
        "assert registry.deliver_webhooks() == []\n"
        "print('httpx' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "registry")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "False"
