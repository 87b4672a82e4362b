"""Signing: keys, OpenSSF model-signing bundles, registry policy on publish/pull/load/serve."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import modelcrate as mc
from conftest import Server, corrupt_stored, make_onnx, run_cli
from modelcrate.trust.keys import TrustedKeys, generate, key_id, load_public
from modelcrate.trust.signing import as_policy

MODEL_SIGNING = [sys.executable, "-m", "model_signing"]


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """keys/alice.{key,pub} and keys/bob.{key,pub} (EC P-256), and mallory/ outside it."""
    directory = tmp_path / "keys"
    generate(directory / "alice")
    generate(directory / "bob")
    generate(tmp_path / "mallory" / "mallory")
    return directory


def crate_file(tmp_path: Path, version: str = "1.0.0", seed: int = 0) -> Path:
    source = make_onnx(tmp_path / f"src-{version}" / "tiny.onnx", seed=seed)
    crate = mc.pack(source, name="tiny", version=version)
    return crate.save(tmp_path / f"tiny-{version}.crate")


def test_keys_generate_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    result = run_cli("keys", "generate", "--out", str(tmp_path / "me"))
    assert result.returncode == 0, result.stderr
    mode = stat.S_IMODE((tmp_path / "me.key").stat().st_mode)
    assert mode == 0o600
    assert (tmp_path / "me.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    again = run_cli("keys", "generate", "--out", str(tmp_path / "me"))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


def test_sign_then_verify_with_the_right_and_the_wrong_key(
    tmp_path: Path, home: Path, keys: Path
) -> None:
    run_cli("publish", str(crate_file(tmp_path)), check=True)
    signed = run_cli("sign", "tiny@1.0.0", "--key", str(keys / "alice.key"))
    assert signed.returncode == 0, signed.stderr
    good = run_cli("verify", "tiny@1.0.0", "--trust", str(keys / "alice.pub"), "--json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["signed_by"] == key_id(load_public(keys / "alice.pub"))
    by_dir = run_cli("verify", "tiny@1.0.0", "--trust", str(keys))
    assert by_dir.returncode == 0 and "signed by alice" in by_dir.stdout
    wrong = run_cli("verify", "tiny@1.0.0", "--trust", str(tmp_path / "mallory"))
    assert wrong.returncode == 1 and "not trusted" in wrong.stderr
    unsigned = crate_file(tmp_path, "2.0.0", seed=1)
    run_cli("publish", str(unsigned), check=True)
    nosig = run_cli("verify", "tiny@2.0.0", "--trust", str(keys))
    assert nosig.returncode == 1 and "not signed" in nosig.stderr


def test_our_signatures_pass_model_signing_verify_and_theirs_pass_ours(
    tmp_path: Path, registry: mc.Registry, keys: Path
) -> None:
    registry.publish(crate_file(tmp_path))
    registry.sign("tiny@1.0.0", keys / "alice.key")
    pulled = registry.pull("tiny@1.0.0", tmp_path / "pulled")
    theirs = subprocess.run(
        [
            *MODEL_SIGNING,
            "verify",
            "key",
            str(pulled),
            "--signature",
            f"{pulled}.sig",
            "--public_key",
            str(keys / "alice.pub"),
        ],
        capture_output=True,
        text=True,
    )
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    # A byte changed in the pulled copy: model_signing itself refuses it.
    (pulled / "model.onnx").write_bytes((pulled / "model.onnx").read_bytes() + b"\0")
    tampered = subprocess.run(
        [
            *MODEL_SIGNING,
            "verify",
            "key",
            str(pulled),
            "--signature",
            f"{pulled}.sig",
            "--public_key",
            str(keys / "alice.pub"),
        ],
        capture_output=True,
        text=True,
    )
    assert tampered.returncode != 0

    # Signed by the model_signing CLI over a pulled crate: we accept it as bob's signature.
    fresh = registry.pull("tiny@1.0.0", tmp_path / "fresh")
    made = subprocess.run(
        [
            *MODEL_SIGNING,
            "sign",
            "key",
            str(fresh),
            "--signature",
            str(tmp_path / "bob.sig"),
            "--private_key",
            str(keys / "bob.key"),
        ],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    registry.add_signature("tiny@1.0.0", (tmp_path / "bob.sig").read_bytes())
    bob_only = mc.Policy(True, TrustedKeys.from_paths([keys / "bob.pub"]))
    assert registry.check_signature("tiny@1.0.0", bob_only) == key_id(load_public(keys / "bob.pub"))


def test_publish_with_required_signature(tmp_path: Path, home: Path, keys: Path) -> None:
    path = crate_file(tmp_path)
    refused = run_cli("publish", str(path), "--require-signature", "--trust", str(keys))
    assert refused.returncode == 1 and "not signed" in refused.stderr
    assert mc.Registry.open().list_models() == []

    run_cli("sign", str(path), "--key", str(tmp_path / "mallory" / "mallory.key"), check=True)
    untrusted = run_cli("publish", str(path), "--require-signature", "--trust", str(keys))
    assert untrusted.returncode == 1 and "not trusted" in untrusted.stderr
    assert mc.Registry.open().list_models() == []

    run_cli("sign", str(path), "--key", str(keys / "alice.key"), check=True)
    assert Path(f"{path}.sig").is_file()
    ok = run_cli("publish", str(path), "--require-signature", "--trust", str(keys))
    assert ok.returncode == 0, ok.stderr
    registry = mc.Registry.open()
    assert len(registry.signatures("tiny@1.0.0")) == 1

    # A signature made for another crate does not pass for this one.
    other = crate_file(tmp_path, "2.0.0", seed=1)
    shutil.copy(f"{path}.sig", f"{other}.sig")
    mismatch = run_cli("publish", str(other), "--trust", str(keys))
    assert mismatch.returncode == 1 and "not for tiny@2.0.0" in mismatch.stderr
    assert [v.version for v in registry.versions("tiny")] == ["1.0.0"]


def test_registry_policy_applies_to_load_pull_and_predict(
    tmp_path: Path, home: Path, keys: Path
) -> None:
    signed, unsigned = crate_file(tmp_path), crate_file(tmp_path, "2.0.0", seed=1)
    mc.sign(signed, keys / "alice.key")
    mc.publish(signed)
    mc.publish(unsigned)
    policy = run_cli("policy", "set", "--require-signature", "--trust", str(keys), "--json")
    assert policy.returncode == 0, policy.stderr
    assert json.loads(policy.stdout)["require_signature"] is True

    assert mc.load("tiny@1.0.0").predict([[1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(mc.SignatureError, match="not signed"):
        mc.load("tiny@2.0.0")
    with pytest.raises(mc.SignatureError):
        mc.pull("tiny@2.0.0", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    predicted = run_cli("predict", "tiny@2.0.0", "--data", "[[1, 2, 3, 4]]")
    assert predicted.returncode == 1 and "not signed" in predicted.stderr

    # Dropping alice leaves a policy nobody can satisfy: refused, with a clear reason.
    run_cli("policy", "set", "--untrust", "alice", "--untrust", "bob", check=True)
    with pytest.raises(mc.SignatureError, match="no trusted keys"):
        mc.load("tiny@1.0.0")
    actions = [e.action for e in mc.Registry.open().audit()]
    assert actions.count("trust-key") == 2 and actions.count("untrust-key") == 2
    assert "policy" in actions


def test_a_blob_changed_after_signing_fails_the_signature(
    tmp_path: Path, registry: mc.Registry, keys: Path
) -> None:
    registry.publish(crate_file(tmp_path))
    registry.sign("tiny@1.0.0", keys / "alice.key")
    corrupt_stored(registry, "tiny@1.0.0", "model.onnx", at=-1)
    with pytest.raises(mc.SignatureError, match="model-signing rejects"):
        registry.check_signature("tiny@1.0.0", as_policy(keys))


def test_serve_with_trust_refuses_unsigned_versions_and_keeps_the_signed_one(
    tmp_path: Path, keys: Path, start_server: Callable[..., Server]
) -> None:
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(crate_file(tmp_path))
    registry.publish(crate_file(tmp_path, "2.0.0", seed=1))
    registry.sign("tiny@1.0.0", keys / "alice.key")
    registry.set_alias("tiny", "prod", "2.0.0")
    server = start_server(
        registry.root,
        "tiny@prod",
        "--trust",
        str(keys),
        "--poll-interval",
        "0.05",
        wait_ready=False,
    )
    ready = httpx.get(f"{server.url}/v2/models/tiny/ready", timeout=5)
    assert ready.status_code != 200
    meta = httpx.get(f"{server.url}/v2/models/tiny", timeout=5)
    assert "not signed" in meta.text

    registry.set_alias("tiny", "prod", "1.0.0")
    _wait_for_version(server, "1.0.0")
    registry.set_alias("tiny", "prod", "2.0.0")  # unsigned again: 1.0.0 keeps serving
    infer = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    for _ in range(10):
        answer = httpx.post(f"{server.url}/v2/models/tiny/infer", json=infer, timeout=5)
        assert answer.status_code == 200 and answer.json()["model_version"] == "1.0.0"
    assert "not signed" in server.output()


def _wait_for_version(server: Server, version: str) -> None:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        meta = httpx.get(f"{server.url}/v2/models/tiny", timeout=5)
        if meta.status_code == 200 and meta.json().get("versions") == [version]:
            return
        time.sleep(0.05)
    raise AssertionError(f"server never served {version}: {server.output()}")


def test_audit_records_who_did_what(tmp_path: Path, home: Path, keys: Path) -> None:
    import getpass

    run_cli("publish", str(crate_file(tmp_path)), check=True)
    run_cli("publish", str(crate_file(tmp_path, "2.0.0", seed=1)), check=True)
    run_cli("alias", "set", "tiny", "prod", "1.0.0", check=True)
    run_cli("alias", "set", "tiny", "prod", "2.0.0", check=True)
    run_cli("rollback", "tiny", "prod", check=True)
    run_cli("sign", "tiny@1.0.0", "--key", str(keys / "alice.key"), check=True)
    run_cli("delete", "tiny@2.0.0", check=True)
    run_cli("policy", "set", "--trust", str(keys / "bob.pub"), check=True)
    result = run_cli("audit", "--json")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert [e["action"] for e in entries] == [
        "publish",
        "publish",
        "alias-set",
        "alias-set",
        "alias-rollback",
        "sign",
        "delete",
        "trust-key",
    ]
    assert {e["actor"] for e in entries} == {getpass.getuser()}
    assert entries[0]["digest"].startswith("sha256:") and entries[0]["version"] == "1.0.0"
    only_tiny = json.loads(run_cli("audit", "tiny", "--json", check=True).stdout)
    assert len(only_tiny) == 7
