"""Shared registries: metadata in a real PostgreSQL, blobs in S3 (moto) or a shared directory;
alembic migrations on SQLite and PostgreSQL; several servers on one registry."""

from __future__ import annotations

import multiprocessing
import re
import sqlite3
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from msgspec.structs import replace
from sqlalchemy import create_engine

import modelcrate as mc
from conftest import Server, make_onnx, run_cli
from services import S3, Postgres


def tiny(tmp_path: Path, version: str, seed: int = 0) -> Path:
    source = make_onnx(tmp_path / f"src-{version}-{seed}" / "tiny.onnx", seed=seed)
    return mc.pack(source, name="tiny", version=version).save(
        tmp_path / f"tiny-{version}-{seed}.crate"
    )


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    from modelcrate.trust.keys import generate

    generate(tmp_path / "keys" / "me")
    return tmp_path / "keys"


@pytest.fixture
def shared_url(postgres: Postgres, s3: S3) -> str:
    return f"{postgres.database()}?blobs=s3://{s3.bucket()}/models"


def test_the_cli_on_postgresql_and_s3(
    tmp_path: Path, shared_url: str, s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELCRATE_REGISTRY", shared_url)
    published = run_cli("publish", str(tiny(tmp_path, "1.0.0")))
    assert published.returncode == 0, published.stderr
    run_cli("alias", "set", "tiny", "prod", "1.0.0", check=True)
    listed = run_cli("list", "--json", check=True)
    assert '"prod": "1.0.0"' in listed.stdout
    predicted = run_cli("predict", "tiny@prod", "--data", "[[1, 2, 3, 4]]", "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert run_cli("verify", "tiny@prod").returncode == 0
    bucket = shared_url.rsplit("s3://", 1)[1].split("/")[0]
    keys = s3.keys(bucket)
    # One publish, one pack object (its key from a random id, never a client's name), read
    # back by ranged GETs.
    assert len(keys) == 1 and re.fullmatch(r"models/packs/[0-9a-f]{2}/[0-9a-f]{32}\.pack", keys[0])
    assert mc.Registry.open(shared_url).verify_store() == []
    pulled = run_cli("pull", "tiny@1.0.0", "--to", str(tmp_path / "pulled"))
    assert pulled.returncode == 0 and (tmp_path / "pulled" / "model.onnx").is_file()
    audit = run_cli("audit", "--json", check=True).stdout
    assert '"publish"' in audit and '"alias-set"' in audit


def test_missing_blob_store_and_unreachable_database_are_clear_errors(postgres: Postgres) -> None:
    url = postgres.database()
    with pytest.raises(mc.UsageError, match=r"needs a blob store: add \?blobs="):
        mc.Registry.open(url)
    with pytest.raises(mc.RegistryError, match="cannot reach PostgreSQL"):
        mc.Registry.open("postgresql://postgres@127.0.0.1:1/nowhere?blobs=/tmp/x")


def test_a_password_never_shows_in_a_registry_location_or_error(
    tmp_path: Path, postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Registry.location`` (shown to people, and naming the machine's cache for the
    registry) and every error keep the database address without its password."""
    url = postgres.database().replace("postgres@", "postgres:s3cret-pw@", 1)
    registry = mc.Registry.open(f"{url}?blobs={tmp_path / 'blobs'}")  # trust auth: any password
    assert "s3cret-pw" not in registry.location
    assert registry.location.startswith("postgresql://postgres:***@127.0.0.1:")
    assert registry.location.endswith(f"?blobs={tmp_path / 'blobs'}")
    unreachable = "postgresql://me:s3cret-pw@127.0.0.1:1/nowhere?blobs=/tmp/x&password=other-pw"
    with pytest.raises(mc.RegistryError) as caught:
        mc.Registry.open(unreachable)
    assert "me:***@127.0.0.1:1" in str(caught.value) and "password=***" in str(caught.value)
    monkeypatch.setenv("MODELCRATE_REGISTRY", unreachable)
    listed = run_cli("list")
    assert listed.returncode != 0 and "cannot reach PostgreSQL" in listed.stderr
    assert "s3cret-pw" not in listed.stderr + listed.stdout
    assert "other-pw" not in listed.stderr + listed.stdout + str(caught.value)


def _publish(url: str, path: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        mc.Registry.open(url).publish(path)
        results.put("won")
    except mc.VersionConflict:
        results.put("conflict")
    except Exception as exc:  # reported to the test, which fails on it
        results.put(f"error: {type(exc).__name__}: {exc}")


def test_racing_publishers_on_postgresql_exactly_one_wins(
    tmp_path: Path, postgres: Postgres
) -> None:
    url = f"{postgres.database()}?blobs={tmp_path / 'blobs'}"
    mc.Registry.open(url)  # migrate once, like an admin would
    crates = [str(tiny(tmp_path, "1.0.0", seed=seed)) for seed in range(6)]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    racers = [context.Process(target=_publish, args=(url, c, results)) for c in crates]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=120)
    outcomes = sorted(results.get(timeout=5) for _ in racers)
    assert outcomes == ["conflict"] * 5 + ["won"], outcomes
    registry = mc.Registry.open(url)
    assert [v.version for v in registry.versions("tiny")] == ["1.0.0"]
    assert all(check.problem is None for check in registry.verify("tiny@1.0.0"))


def test_three_servers_on_one_postgresql_registry_follow_alias_moves(
    tmp_path: Path, postgres: Postgres, start_server: Callable[..., Server]
) -> None:
    url = f"{postgres.database()}?blobs={tmp_path / 'blobs'}"
    registry = mc.Registry.open(url)
    for number, version in enumerate(["1.0.0", "2.0.0", "3.0.0"]):
        registry.publish(tiny(tmp_path, version, seed=number))
    registry.set_alias("tiny", "prod", "1.0.0")
    servers = [start_server(url, "tiny@prod", "--poll-interval", "0.2") for _ in range(3)]
    for target in ("2.0.0", "3.0.0"):
        registry.set_alias("tiny", "prod", target)
        moved = time.monotonic()
        pending = set(range(3))
        while pending and time.monotonic() - moved < 2.0:
            for number in list(pending):
                meta = httpx.get(f"{servers[number].url}/v2/models/tiny", timeout=5).json()
                if meta["versions"] == [target]:
                    pending.discard(number)
            time.sleep(0.05)
        assert not pending, f"servers {sorted(pending)} still not on {target} after 2 s"
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    answers = [
        httpx.post(f"{s.url}/v2/models/tiny/infer", json=body, timeout=5).json() for s in servers
    ]
    assert {a["model_version"] for a in answers} == {"3.0.0"}
    assert len({tuple(np.round(a["outputs"][0]["data"], 5)) for a in answers}) == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_build_exactly_the_tables_the_queries_use(
    backend: str, tmp_path: Path, postgres: Postgres
) -> None:
    from sqlalchemy import inspect

    from modelcrate.registry.db import TABLES

    if backend == "sqlite":
        registry = mc.Registry.open(tmp_path / "registry")
        url = f"sqlite:///{tmp_path / 'registry' / 'registry.db'}"
    else:
        url = postgres.database()
        registry = mc.Registry.open(f"{url}?blobs={tmp_path / 'blobs'}")
        url = url.replace("postgresql://", "postgresql+psycopg://")
    engine = create_engine(url)
    schema = inspect(engine)
    found = {
        table: (
            tuple(schema.get_pk_constraint(table)["constrained_columns"]),
            {c["name"] for c in schema.get_columns(table)},
        )
        for table in schema.get_table_names()
        if table != "alembic_version"
    }
    engine.dispose()
    registry.close()
    wanted = {table: (key, {*key, *rest}) for table, (key, rest) in TABLES.items()}
    assert found == wanted


def test_a_registry_from_before_migrations_is_adopted_with_its_data(
    tmp_path: Path, tiny_crate: Path
) -> None:
    from modelcrate.registry.migrate import SCHEMA_HEAD, upgrade

    root = tmp_path / "old"
    root.mkdir()
    upgrade(f"sqlite:///{root / 'registry.db'}", "0001")  # what the first release made,
    with sqlite3.connect(root / "registry.db") as db:
        db.execute("DROP TABLE alembic_version")  # which kept no migration record
        db.execute("INSERT INTO aliases VALUES ('old', 'prod', '9.9.9', 0)")
    registry = mc.Registry.open(root)
    registry.publish(tiny_crate)
    with sqlite3.connect(root / "registry.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchone() == (SCHEMA_HEAD,)
        assert db.execute("SELECT version FROM aliases WHERE name = 'old'").fetchone() == ("9.9.9",)
    assert registry.audit()[0].action == "publish"


def test_backup_and_restore_round_trip_byte_for_byte(
    tmp_path: Path, home: Path, keys_dir: Path
) -> None:
    run_cli("publish", str(tiny(tmp_path, "1.0.0")), check=True)
    run_cli("publish", str(tiny(tmp_path, "2.0.0", seed=1)), check=True)
    run_cli("alias", "set", "tiny", "prod", "1.0.0", check=True)
    run_cli("alias", "set", "tiny", "prod", "2.0.0", check=True)
    run_cli("sign", "tiny@1.0.0", "--key", str(keys_dir / "me.key"), check=True)
    run_cli("policy", "set", "--trust", str(keys_dir / "me.pub"), check=True)
    first = tmp_path / "backup.tar"
    made = run_cli("backup", "--to", str(first), "--json")
    assert made.returncode == 0, made.stderr
    assert '"versions": 2' in made.stdout

    target = tmp_path / "restored"
    restored = run_cli("restore", str(first), "--registry", str(target))
    assert restored.returncode == 0, restored.stderr
    before, after = mc.Registry.open(home), mc.Registry.open(target)
    for name in ("tiny@1.0.0", "tiny@2.0.0"):
        assert after.resolve(name).digest == before.resolve(name).digest
        assert all(c.problem is None for c in after.verify(name))
    assert after.alias_history("tiny", "prod") == before.alias_history("tiny", "prod")
    assert after.audit() == before.audit()
    assert after.signatures("tiny@1.0.0") == before.signatures("tiny@1.0.0")
    assert after.policy() == before.policy()
    second = tmp_path / "again.tar"
    run_cli("backup", "--to", str(second), "--registry", str(target), check=True)
    assert second.read_bytes() == first.read_bytes()  # byte for byte

    again = run_cli("restore", str(first), "--registry", str(target))
    assert again.returncode == 1 and "needs an empty registry" in again.stderr
    with tarfile.open(first) as tar:
        blob = [m for m in tar.getmembers() if m.name.startswith("blobs/")][-1]
    tampered = bytearray(first.read_bytes())
    tampered[blob.offset_data + blob.size // 2] ^= 0xFF  # inside the last blob
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(tampered))
    refused = run_cli("restore", str(bad), "--registry", str(tmp_path / "fresh"))
    assert refused.returncode == 1 and "does not match its digest" in refused.stderr
    assert mc.Registry.open(tmp_path / "fresh").list_models() == []


def test_du_counts_shared_blobs_once(tmp_path: Path, registry: mc.Registry) -> None:
    crate = mc.Crate.open(tiny(tmp_path, "1.0.0"))
    registry.publish(crate)
    # Same files, new version: the logical size doubles, the stored size does not.
    registry.publish(mc.Crate(replace(crate.manifest, version="1.0.1"), crate.source))
    usage = registry.du("tiny")
    assert usage.logical_bytes == 2 * usage.stored_bytes
    assert [v.new_bytes for v in usage.versions] == [usage.stored_bytes, 0]
    shown = run_cli("du", "tiny", "--registry", str(registry.root), check=True).stdout
    assert "(0.50x)" in shown


def test_a_backup_restored_into_postgresql_takes_new_versions(
    tmp_path: Path, postgres: Postgres
) -> None:
    """Restored rows keep their ids; the next publish, alias move and audit entry on
    PostgreSQL must not collide with them (the id sequences move past the restored ids)."""
    source = mc.Registry.open(tmp_path / "embedded")
    source.publish(tiny(tmp_path, "1.0.0"))
    source.set_alias("tiny", "prod", "1.0.0")
    source.backup(tmp_path / "backup.tar")
    shared = mc.Registry.open(f"{postgres.database()}?blobs={tmp_path / 'blobs'}")
    shared.restore(tmp_path / "backup.tar")
    shared.publish(tiny(tmp_path, "2.0.0", seed=1))
    shared.set_alias("tiny", "prod", "2.0.0")
    assert [v.version for v in shared.versions("tiny")] == ["1.0.0", "2.0.0"]
    assert [e.action for e in shared.audit()][-2:] == ["publish", "alias-set"]
    shared.close()
