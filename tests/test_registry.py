"""The embedded registry: immutable versions, aliases, rollback, delete/gc, verify, concurrency."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import modelcrate as mc
from conftest import corrupt_stored, make_onnx, run_cli, stored_chunk
from modelcrate.errors import IntegrityError, NotFound, RegistryError, UsageError, VersionConflict


def tiny(tmp_path: Path, version: str, seed: int = 0, tags: list[str] | None = None) -> mc.Crate:
    source = make_onnx(tmp_path / f"src-{version}-{seed}" / "m.onnx", seed=seed)
    return mc.pack(source, name="tiny", version=version, tags=tags, description="a tiny model")


def test_publish_is_idempotent_and_versions_are_immutable(
    registry: mc.Registry, tmp_path: Path
) -> None:
    first = registry.publish(tiny(tmp_path, "1.0.0"))
    assert first.created
    again = registry.publish(tiny(tmp_path, "1.0.0"))
    assert not again.created and again.digest == first.digest
    with pytest.raises(VersionConflict, match="tiny@1.0.0 already exists"):
        registry.publish(tiny(tmp_path, "1.0.0", seed=7))
    # The stored version is untouched by the refused publish.
    assert registry.resolve("tiny@1.0.0").digest == first.digest
    assert all(check.problem is None for check in registry.verify("tiny@1.0.0"))


def test_resolve_by_version_alias_digest_and_bare_name(
    registry: mc.Registry, tmp_path: Path
) -> None:
    one = registry.publish(tiny(tmp_path, "1.0.0"))
    two = registry.publish(tiny(tmp_path, "2.0.0", seed=1))
    registry.set_alias("tiny", "prod", "1.0.0")
    assert registry.resolve("tiny").version == "2.0.0"  # latest published
    assert registry.resolve("tiny@prod").digest == one.digest
    assert registry.resolve(f"tiny@{two.digest}").version == "2.0.0"
    assert registry.resolve("tiny@1.0.0").aliases == ["prod"]


def test_aliases_move_with_history_and_roll_back(registry: mc.Registry, tmp_path: Path) -> None:
    for i, version in enumerate(["1.0.0", "1.1.0", "1.2.0"]):
        registry.publish(tiny(tmp_path, version, seed=i))
    registry.set_alias("tiny", "prod", "1.0.0")
    registry.set_alias("tiny", "prod", "1.1.0")
    registry.set_alias("tiny", "prod", "1.2.0")
    assert registry.rollback("tiny", "prod").version == "1.1.0"
    assert registry.rollback("tiny", "prod").version == "1.0.0"
    with pytest.raises(RegistryError, match="no earlier target"):
        registry.rollback("tiny", "prod")
    history = registry.alias_history("tiny", "prod")
    assert [(e.action, e.previous, e.version) for e in history] == [
        ("set", None, "1.0.0"),
        ("set", "1.0.0", "1.1.0"),
        ("set", "1.1.0", "1.2.0"),
        ("rollback", "1.2.0", "1.1.0"),
        ("rollback", "1.1.0", "1.0.0"),
    ]
    model = mc.load("tiny@prod", registry=registry)
    assert model.manifest.version == "1.0.0"


def test_alias_to_a_missing_version_or_bad_alias_is_refused(
    registry: mc.Registry, tmp_path: Path
) -> None:
    registry.publish(tiny(tmp_path, "1.0.0"))
    with pytest.raises(NotFound, match="no such version"):
        registry.set_alias("tiny", "prod", "3.0.0")
    with pytest.raises(mc.BadReference):
        registry.set_alias("tiny", "1prod", "1.0.0")
    with pytest.raises(NotFound, match="no such alias"):
        registry.rollback("tiny", "prod")


def test_search_by_query_and_tag(
    registry: mc.Registry, tmp_path: Path, digits_crate_path: Path
) -> None:
    registry.publish(tiny(tmp_path, "1.0.0", tags=["tabular"]))
    registry.publish(digits_crate_path)
    assert [m.name for m in registry.list_models()] == ["digits", "tiny"]
    assert [m.name for m in registry.list_models("dig")] == ["digits"]
    assert [m.name for m in registry.list_models("handwritten")] == ["digits"]
    assert [m.name for m in registry.list_models(tag="tabular")] == ["tiny"]
    assert registry.list_models(tag="nope") == []


def test_delete_then_gc_frees_only_unreferenced_blobs(
    registry: mc.Registry, tmp_path: Path
) -> None:
    registry.publish(tiny(tmp_path, "1.0.0"))
    registry.publish(tiny(tmp_path, "2.0.0", seed=1))
    registry.set_alias("tiny", "prod", "1.0.0")
    with pytest.raises(RegistryError, match="alias"):
        registry.delete("tiny@1.0.0")
    with pytest.raises(UsageError, match="exact version"):
        registry.delete("tiny@prod")
    assert registry.gc(grace_seconds=0).blobs_removed == 0
    registry.delete("tiny@1.0.0", force=True)
    with pytest.raises(NotFound):
        registry.resolve("tiny@1.0.0")
    report = registry.gc(grace_seconds=0)
    assert report.blobs_removed == 1 and report.bytes_freed > 0
    # The surviving version still loads and verifies.
    assert all(c.problem is None for c in registry.verify("tiny@2.0.0"))
    mc.load("tiny@2.0.0", registry=registry).predict(np.zeros((1, 4), np.float32))


def test_gc_grace_period_protects_fresh_blobs(registry: mc.Registry, tmp_path: Path) -> None:
    registry.publish(tiny(tmp_path, "1.0.0"))
    registry.delete("tiny@1.0.0")
    assert registry.gc().blobs_removed == 0  # default grace: an hour
    assert registry.gc(grace_seconds=0).blobs_removed == 1


def test_a_corrupted_blob_is_reported_and_never_served(
    registry: mc.Registry, tmp_path: Path
) -> None:
    registry.publish(tiny(tmp_path, "1.0.0"))
    corrupt_stored(registry, "tiny@1.0.0", "model.onnx")
    problems = [c for c in registry.verify("tiny@1.0.0") if c.problem]
    assert [c.path for c in problems] == ["model.onnx"]
    assert "is corrupted in pack" in (problems[0].problem or "")
    with pytest.raises(IntegrityError, match="model.onnx is corrupted"):
        mc.load("tiny@1.0.0", registry=registry)
    with pytest.raises(IntegrityError):
        registry.pull("tiny@1.0.0", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    damaged = registry.verify_store()
    assert [(d.problem, d.versions) for d in damaged] == [("1 damaged chunk(s)", ["tiny@1.0.0"])]


def test_a_truncated_or_missing_pack_is_detected(registry: mc.Registry, tmp_path: Path) -> None:
    registry.publish(tiny(tmp_path, "1.0.0"))
    pack, offset, _ = stored_chunk(registry, "tiny@1.0.0", "model.onnx")
    pack.chmod(0o644)
    pack.write_bytes(pack.read_bytes()[: offset + 10])
    checks = {c.path: c.problem for c in registry.verify("tiny@1.0.0")}
    assert "truncated" in (checks["model.onnx"] or "")
    assert "truncated" in registry.verify_store()[0].problem
    pack.unlink()
    assert {c.path: c.problem for c in registry.verify("tiny@1.0.0")}["model.onnx"] == "missing"
    assert registry.verify_store()[0].versions == ["tiny@1.0.0"]
    # The copy publish left in the file cache still matches the manifest: it is served...
    mc.load("tiny@1.0.0", registry=registry).predict(np.zeros((1, 4), np.float32))
    # ...but once it is gone, the version cannot be loaded from the damaged store.
    shutil.rmtree(registry.root / "cache" if registry.root else tmp_path)
    with pytest.raises(NotFound, match="missing from the store"):
        mc.load("tiny@1.0.0", registry=registry)


def test_pull_writes_verified_files(registry: mc.Registry, tmp_path: Path) -> None:
    crate = tiny(tmp_path, "1.0.0")
    registry.publish(crate)
    registry.set_alias("tiny", "prod", "1.0.0")
    out = mc.pull("tiny@prod", tmp_path / "pulled", registry=registry)
    assert sorted(p.name for p in out.iterdir()) == ["crate.json", "model.onnx"]
    assert mc.Crate.open(out).digest == crate.digest


def test_location_comes_from_the_argument_then_modelcrate_home(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELCRATE_HOME", str(tmp_path / "from-env"))
    assert mc.Registry.open().root == tmp_path / "from-env"
    assert mc.Registry.open(tmp_path / "explicit").root == tmp_path / "explicit"
    monkeypatch.delenv("MODELCRATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert mc.Registry.open().root == tmp_path / "user" / ".modelcrate"
    with pytest.raises(UsageError, match="unknown scheme 's3'"):
        mc.Registry.open("s3://bucket/prefix")


def test_sqlite_is_in_wal_mode_with_integrity(registry: mc.Registry, tmp_path: Path) -> None:
    registry.publish(tiny(tmp_path, "1.0.0"))
    with sqlite3.connect(registry.root / "registry.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


PUBLISHER = textwrap.dedent(
    """
    import sys
    import modelcrate as mc
    from conftest import corrupt_stored, make_onnx, stored_chunk
    from pathlib import Path
    registry, work, first = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    for i in range(first, first + 5):
        source = make_onnx(work / f"v{i}" / "m.onnx", seed=i)
        mc.publish(mc.pack(source, name="tiny", version=f"1.0.{i}"), registry=registry)
    """
)


@pytest.mark.slow
def test_two_processes_publishing_different_versions_both_land(tmp_path: Path) -> None:
    registry_dir = tmp_path / "shared"
    mc.Registry.open(registry_dir).close()
    tests_dir = Path(__file__).parent
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                PUBLISHER,
                str(registry_dir),
                str(tmp_path / f"w{n}"),
                str(first),
            ],
            cwd=tests_dir,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, first in enumerate((0, 100))
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    registry = mc.Registry.open(registry_dir)
    versions = sorted(v.version for v in registry.versions("tiny"))
    assert versions == sorted(
        [f"1.0.{i}" for i in range(5)] + [f"1.0.{i}" for i in range(100, 105)]
    )
    for version in versions:
        assert all(c.problem is None for c in registry.verify(f"tiny@{version}"))


RACER = textwrap.dedent(
    """
    import sys
    import modelcrate as mc
    from conftest import corrupt_stored, make_onnx, stored_chunk
    from pathlib import Path
    registry, work, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    crate = mc.pack(make_onnx(work / "m.onnx", seed=seed), name="tiny", version="1.0.0")
    try:
        mc.publish(crate, registry=registry)
        print("won")
    except mc.VersionConflict as exc:
        print("conflict", exc)
    """
)


@pytest.mark.slow
def test_racing_publishers_of_one_version_exactly_one_wins(tmp_path: Path) -> None:
    registry_dir = tmp_path / "shared"
    mc.Registry.open(registry_dir).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(registry_dir), str(tmp_path / f"r{n}"), str(n)],
            cwd=Path(__file__).parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(6)
    ]
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        outcomes.append(out.split()[0])
    assert outcomes.count("won") == 1 and outcomes.count("conflict") == 5
    assert len(mc.Registry.open(registry_dir).versions("tiny")) == 1


def test_versions_that_share_tensors_share_storage(registry: mc.Registry, tmp_path: Path) -> None:
    """Four versions of an MLP whose 4 MB backbone is the same and whose head differs are
    stored in content-defined chunks: together they cost little more than one."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    backbone = rng.standard_normal((256, 4096)).astype(np.float32)
    for number in range(4):
        head = rng.standard_normal((4096, 10)).astype(np.float32)
        graph = helper.make_graph(
            [
                helper.make_node("MatMul", ["x", "w1"], ["h"]),
                helper.make_node("Relu", ["h"], ["r"]),
                helper.make_node("MatMul", ["r", "w2"], ["y"]),
            ],
            "mlp",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 256])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
            [numpy_helper.from_array(backbone, "w1"), numpy_helper.from_array(head, "w2")],
        )
        path = tmp_path / f"mlp{number}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        registry.publish(mc.pack(path, name="mlp", version=f"1.{number}.0"))
        if number == 0:
            one = registry.du("mlp").stored_bytes
    usage = registry.du("mlp")
    assert usage.logical_bytes > 3.9 * one
    assert usage.stored_bytes < 1.3 * one, (usage.stored_bytes, one)
    x = rng.standard_normal((2, 256)).astype(np.float32)
    expected = np.maximum(x @ backbone, 0) @ head
    got = mc.load("mlp@1.3.0", registry=registry).predict(x)["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    assert all(c.problem is None for c in registry.verify("mlp@1.3.0"))
    registry.delete("mlp@1.0.0")
    registry.gc(grace_seconds=0)  # chunks 1.1-1.3 still use are kept
    assert all(
        c.problem is None for v in ("1.1.0", "1.2.0", "1.3.0") for c in registry.verify(f"mlp@{v}")
    )


def test_an_empty_file_round_trips(registry: mc.Registry, tmp_path: Path) -> None:
    """An empty file is stored as no chunks at all; it must still read back, verify, pull and
    be reused by a republish."""
    (tmp_path / "card.md").write_text("")
    crate = mc.pack(
        make_onnx(tmp_path / "src" / "m.onnx"),
        name="tiny",
        version="1.0.0",
        model_card=tmp_path / "card.md",
    )
    registry.publish(crate)
    assert registry.publish(crate).created is False
    assert all(check.problem is None for check in registry.verify("tiny@1.0.0"))
    pulled = registry.pull("tiny@1.0.0", tmp_path / "out")
    assert (pulled / "README.md").read_bytes() == b""
    assert registry.files.stored(hashlib.sha256(b"").hexdigest())


def test_a_damaged_database_file_is_one_clear_error_and_is_left_as_it_was(
    tmp_path: Path, tiny_crate: Path
) -> None:
    """The database driver's errors come out as a RegistryError naming the problem (one
    line from the CLI, no traceback), and nothing rewrites the file."""
    root = tmp_path / "registry"
    mc.Registry.open(root).publish(tiny_crate)
    damaged = b"this is not a database " * 200
    (root / "registry.db").write_bytes(damaged)
    for path in root.glob("registry.db-*"):  # the WAL and its index
        path.unlink()
    with pytest.raises(RegistryError, match="not a database"):
        mc.Registry.open(root)
    listed = run_cli("list", "--registry", str(root))
    assert listed.returncode == 1, listed.stderr
    assert "not a database" in listed.stderr and "Traceback" not in listed.stderr
    assert len(listed.stderr.strip().splitlines()) == 1
    assert (root / "registry.db").read_bytes() == damaged
