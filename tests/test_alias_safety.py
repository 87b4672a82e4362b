"""Signature-safe alias moves: alias set and rollback refuse a target that breaks the current
target's clients, naming the change, unless --allow-breaking (which the audit log records);
the same rule over the registry's HTTP API, the web UI's admin action and OCI tags."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import modelcrate as mc
from conftest import Server, make_onnx, run_cli
from modelcrate.errors import BreakingChange
from services import OciRegistry

ADMIN = "admin-token-0123456789abcdef"


def publish(
    registry: mc.Registry | mc.ModelRegistry, tmp_path: Path, version: str, width: int
) -> None:
    source = make_onnx(tmp_path / version / "tiny.onnx", width=width, seed=len(version))
    registry.publish(mc.pack(source, name="tiny", version=version))


@pytest.fixture
def tiny(registry: mc.Registry, tmp_path: Path) -> mc.Registry:
    """1.0.0 and 1.1.0 (y: [N, 2]); 2.0.0 returns y: [N, 3], which breaks 1.x clients."""
    publish(registry, tmp_path, "1.0.0", 2)
    publish(registry, tmp_path, "1.1.0", 2)
    publish(registry, tmp_path, "2.0.0", 3)
    registry.set_alias("tiny", "prod", "1.0.0")
    return registry


def test_a_breaking_move_is_refused_and_nothing_moves(tiny: mc.Registry) -> None:
    assert tiny.set_alias("tiny", "prod", "1.1.0").version == "1.1.0"  # compatible
    with pytest.raises(BreakingChange) as refused:
        tiny.set_alias("tiny", "prod", "2.0.0")
    assert "output 'y' shape [-1, 2] -> [-1, 3]" in str(refused.value)
    assert "--allow-breaking" in str(refused.value)
    assert tiny.resolve("tiny@prod").version == "1.1.0"
    assert [e.version for e in tiny.alias_history("tiny", "prod")] == ["1.0.0", "1.1.0"]

    moved = tiny.set_alias("tiny", "prod", "2.0.0", allow_breaking=True)
    assert (moved.version, moved.previous) == ("2.0.0", "1.1.0")
    audit = [e for e in tiny.audit() if e.action == "alias-set"][-1]
    assert "breaking, allowed: output 'y' shape" in audit.detail

    # Rolling back is a move too: 1.1.0 breaks the clients 2.0.0 has now.
    with pytest.raises(BreakingChange, match="1.1.0 breaks the signature of 2.0.0"):
        tiny.rollback("tiny", "prod")
    assert tiny.resolve("tiny@prod").version == "2.0.0"
    assert tiny.rollback("tiny", "prod", allow_breaking=True).version == "1.1.0"
    # A new alias has no clients yet: any target is fine.
    assert tiny.set_alias("tiny", "canary", "2.0.0").version == "2.0.0"


def test_cli_alias_set_and_rollback_need_allow_breaking(tiny: mc.Registry) -> None:
    where = ["--registry", str(tiny.root)]
    refused = run_cli("alias", "set", "tiny", "prod", "2.0.0", *where)
    assert refused.returncode == 1, refused.stdout
    assert "2.0.0 breaks the signature of 1.0.0" in refused.stderr
    assert "Traceback" not in refused.stderr
    moved = run_cli("alias", "set", "tiny", "prod", "2.0.0", "--allow-breaking", *where)
    assert moved.returncode == 0, moved.stderr
    assert "tiny@prod → 2.0.0 (was 1.0.0)" in moved.stdout
    back = run_cli("rollback", "tiny", "prod", *where)
    assert back.returncode == 1 and "breaks the signature" in back.stderr
    back = run_cli("rollback", "tiny", "prod", "--allow-breaking", *where)
    assert back.returncode == 0, back.stderr
    assert tiny.resolve("tiny@prod").version == "1.0.0"


def test_over_http_the_registry_api_and_the_ui_refuse_with_409(
    tiny: mc.Registry, tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        f'[[tokens]]\nname = "ops"\ntoken = "{ADMIN}"\nscopes = ["read", "write", "admin"]\n'
    )
    server = start_server(tiny.root, "--token-file", str(tokens))
    remote = mc.open_registry(server.url, token=ADMIN)
    try:
        with pytest.raises(BreakingChange, match="output 'y' shape"):
            remote.set_alias("tiny", "prod", "2.0.0")
        assert tiny.resolve("tiny@prod").version == "1.0.0"
        assert remote.set_alias("tiny", "prod", "2.0.0", allow_breaking=True).version == "2.0.0"
    finally:
        remote.close()

    headers = {"authorization": f"Bearer {ADMIN}"}
    url = f"{server.url}/ui/api/models/tiny/aliases/prod"
    answer = httpx.post(f"{url}/set", json={"version": "1.0.0"}, headers=headers)
    assert answer.status_code == 409 and answer.json()["code"] == "breaking_change"
    answer = httpx.post(f"{url}/rollback", json={}, headers=headers)
    assert answer.status_code == 409, answer.text
    answer = httpx.post(f"{url}/rollback", json={"allow_breaking": True}, headers=headers)
    assert answer.status_code == 200 and answer.json()["version"] == "1.0.0"
    assert tiny.resolve("tiny@prod").version == "1.0.0"


def test_oci_tags_move_only_to_compatible_versions(
    tmp_path: Path, oci_registry: OciRegistry
) -> None:
    oci = mc.open_registry(f"oci://{oci_registry.host}/safety")
    publish(oci, tmp_path, "1.0.0", 2)
    publish(oci, tmp_path, "2.0.0", 3)
    oci.set_alias("tiny", "prod", "1.0.0")
    with pytest.raises(BreakingChange, match="output 'y' shape"):
        oci.set_alias("tiny", "prod", "2.0.0")
    assert oci.resolve("tiny@prod").version == "1.0.0"
    assert oci.set_alias("tiny", "prod", "2.0.0", allow_breaking=True).previous == "1.0.0"
    assert oci.resolve("tiny@prod").version == "2.0.0"
