"""The packed chunk store (issue 13): files across packs, chunks shared between packs, crashes
mid-pack, damaged packs, gc repacking, the file cache, and registries from earlier releases."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import modelcrate as mc
from conftest import TABLES_AFTER_0004, run_cli
from modelcrate.registry import packs
from modelcrate.registry.blobs import FileBlobStore

N = 256  # W is N x N float32: 256 KiB of external data


def big_onnx(directory: Path, *, seed: int = 0, rows_changed: int | None = None) -> Path:
    """y = x @ W with W as external data. ``rows_changed``: W equals seed 0's W except that
    many leading rows (a fine-tune that changed a little)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((N, N)).astype(np.float32)
    if rows_changed is not None:
        weight[:rows_changed] = np.random.default_rng(seed).standard_normal((rows_changed, N))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", N])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        model,
        str(directory / "m.onnx"),
        save_as_external_data=True,
        location="m.onnx.data",
        size_threshold=0,
    )
    return directory / "m.onnx"


def expected(source: Path) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.ones((1, N), np.float32)})[0]


def predict(registry: mc.Registry, ref: str) -> np.ndarray:
    return mc.load(ref, registry=registry).predict(np.ones((1, N), np.float32))["y"]


def packs_of(registry: mc.Registry, ref: str, path: str) -> set[str | None]:
    located = registry.files.locate(registry.manifest(ref).file(path).sha256)
    assert located is not None
    return {c.pack for c in located}


def pack_files(registry: mc.Registry) -> list[Path]:
    assert registry.root is not None
    return sorted((registry.root / "blobs" / "packs").glob("*/*.pack"))


@pytest.fixture
def small_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packs, "PACK_TARGET", 64 * 1024)  # a 256 KiB file spans several


def test_a_file_spans_several_packs_and_reads_back(
    registry: mc.Registry, tmp_path: Path, small_packs: None
) -> None:
    source = big_onnx(tmp_path / "v1")
    registry.publish(mc.pack(source, name="big", version="1.0.0"))
    assert len(packs_of(registry, "big@1.0.0", "m.onnx.data")) >= 3
    assert len(list((registry.root or tmp_path).rglob("*.pack"))) >= 3
    assert all(c.problem is None for c in registry.verify("big@1.0.0"))
    assert registry.verify_store() == []
    np.testing.assert_allclose(predict(registry, "big@1.0.0"), expected(source), rtol=1e-5)
    registry.pull("big@1.0.0", tmp_path / "out")
    assert (tmp_path / "out" / "m.onnx.data").read_bytes() == (
        tmp_path / "v1" / "m.onnx.data"
    ).read_bytes()


def test_versions_share_chunks_across_packs(registry: mc.Registry, tmp_path: Path) -> None:
    first = big_onnx(tmp_path / "v1")
    second = big_onnx(tmp_path / "v2", seed=7, rows_changed=8)
    registry.publish(mc.pack(first, name="big", version="1.0.0"))
    before = registry.du("big").stored_bytes
    registry.publish(mc.pack(second, name="big", version="1.1.0"))
    shared = packs_of(registry, "big@1.0.0", "m.onnx.data")
    assert len(shared) == 1  # one publish, one pack
    mixed = packs_of(registry, "big@1.1.0", "m.onnx.data")
    assert shared < mixed and len(mixed) == 2  # old chunks where they were, new ones beside
    assert registry.du("big").stored_bytes < before * 1.3
    np.testing.assert_allclose(predict(registry, "big@1.1.0"), expected(second), rtol=1e-5)
    np.testing.assert_allclose(predict(registry, "big@1.0.0"), expected(first), rtol=1e-5)


def test_a_crash_mid_pack_leaves_nothing_indexed_and_gc_sweeps_it(
    registry: mc.Registry, tmp_path: Path
) -> None:
    registry.publish(mc.pack(big_onnx(tmp_path / "v1"), name="big", version="1.0.0"))
    blobs = registry.blobs
    assert isinstance(blobs, FileBlobStore)
    # A writer that dies before sealing: its half-written pack is a temp file, never indexed.
    writer = packs.PackWriter(registry.db, blobs)
    writer.add(hashlib.sha256(b"x" * 100).hexdigest(), b"x" * 100)
    assert writer.handle is not None
    writer.handle.close()  # the process dies here: the temp file stays behind
    torn = writer.staged
    assert torn.parent == blobs.tmp and torn.stat().st_size > 100
    # A pack renamed into place whose index transaction never committed (kill -9 between).
    orphan = "ab" * 16
    shutil.copy(pack_files(registry)[0], blobs.tmp / "copy")
    blobs.put_pack(blobs.tmp / "copy", orphan)
    assert registry.verify_store() == []  # the index names neither
    old = 1_000_000_000
    os.utime(torn, (old, old))
    os.utime(blobs.pack_path(orphan), (old, old))
    registry.gc()  # default grace: both are old enough to go, the live pack stays
    assert not torn.exists() and not blobs.pack_path(orphan).exists()
    assert len(pack_files(registry)) == 1
    assert predict(registry, "big@1.0.0").shape == (1, N)


def test_a_torn_pack_is_reported_with_the_versions_it_affects(
    registry: mc.Registry, tmp_path: Path
) -> None:
    registry.publish(mc.pack(big_onnx(tmp_path / "v1"), name="big", version="1.0.0"))
    registry.publish(
        mc.pack(big_onnx(tmp_path / "v2", seed=3, rows_changed=4), name="big", version="1.1.0")
    )
    first_pack = next(iter(packs_of(registry, "big@1.0.0", "m.onnx.data")))
    assert isinstance(registry.blobs, FileBlobStore)
    path = registry.blobs.pack_path(first_pack or "")
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-10])  # the trailer is gone
    damaged = registry.verify_store()
    assert [d.pack for d in damaged] == [first_pack]
    assert damaged[0].versions == ["big@1.0.0", "big@1.1.0"]  # 1.1.0 reuses its chunks
    result = run_cli("verify", "--registry", str(registry.root), check=False)
    assert result.returncode == 1
    assert "affected versions: big@1.0.0, big@1.1.0" in result.stderr


def test_gc_repacks_and_every_live_version_still_loads(
    registry: mc.Registry, tmp_path: Path
) -> None:
    sources = {}
    for number in range(4):  # 4 unrelated versions, one pack each
        sources[number] = big_onnx(tmp_path / f"v{number}", seed=number + 1, rows_changed=N)
        registry.publish(mc.pack(sources[number], name="big", version=f"1.{number}.0"))
    assert len(pack_files(registry)) == 4
    for number in (0, 2):
        registry.delete(f"big@1.{number}.0")
    stored = sum(p.stat().st_size for p in pack_files(registry))
    report = registry.gc(grace_seconds=0)
    # 1.2.0's pack holds nothing live; 1.0.0's still holds the graph (m.onnx) the others
    # share, so it and the two live packs (all small) are merged into one.
    assert (report.packs_removed, report.packs_rewritten) == (1, 3)
    assert len(pack_files(registry)) == 1
    assert sum(p.stat().st_size for p in pack_files(registry)) < stored * 0.6
    assert registry.verify_store() == []
    for number in (1, 3):
        ref = f"big@1.{number}.0"
        assert all(c.problem is None for c in registry.verify(ref))
        shutil.rmtree(registry.root / "cache" if registry.root else tmp_path, ignore_errors=True)
        np.testing.assert_allclose(predict(registry, ref), expected(sources[number]), rtol=1e-5)
    assert "gc" in [e.action for e in registry.audit()]


def test_the_file_cache_is_checked_at_every_load_and_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = mc.Registry(tmp_path / "registry", cache_bytes=600 * 1024)
    sources = [big_onnx(tmp_path / f"v{n}", seed=n + 1, rows_changed=N) for n in range(3)]
    for number, source in enumerate(sources):
        registry.publish(mc.pack(source, name="big", version=f"1.{number}.0"))
    predict(registry, "big@1.0.0")
    cached = tmp_path / "registry" / "cache" / "crates"
    [entry] = list(cached.iterdir())
    data = entry / "m.onnx.data"
    assert data.stat().st_nlink == 2  # a hard link to the content-addressed copy
    assert not os.access(data, os.W_OK) or os.getuid() == 0  # read-only (root may write)
    # A cached file changed behind our back is caught by the next load, then replaced.
    data.chmod(0o644)
    with data.open("r+b") as handle:
        handle.write(b"\0\0\0\0")
    with pytest.raises(mc.IntegrityError, match="m.onnx.data is corrupted"):
        predict(registry, "big@1.0.0")
    np.testing.assert_allclose(predict(registry, "big@1.0.0"), expected(sources[0]), rtol=1e-5)
    # The bound: three 256 KiB versions do not fit in 600 KiB; the least recently used goes.
    monkeypatch.setattr("modelcrate.registry.cache.IN_USE_SECONDS", 0.0)
    for ref in ("big@1.1.0", "big@1.2.0"):
        predict(registry, ref)
    assert len(list(cached.iterdir())) == 2
    assert registry.du().cache_bytes <= 600 * 1024
    assert registry.du().cache_bytes >= 2 * N * N * 4


def published_linear(registry: mc.Registry) -> Callable[[], None]:
    """Publish lin@1.0.0, a torch Linear packed with its three forms of the weights; the
    returned check loads it through ONNX Runtime and compares a prediction with torch's."""
    import torch

    torch.manual_seed(0)
    module = torch.nn.Linear(4, 3).eval()
    registry.publish(
        mc.pack(module, example_inputs=(torch.zeros(1, 4),), name="lin", version="1.0.0")
    )
    x = np.random.default_rng(0).random((2, 4), dtype=np.float32)
    want = module(torch.from_numpy(x)).detach().numpy()

    def check() -> None:
        model = mc.load("lin@1.0.0", registry=registry)
        [name] = [s.name for s in model.manifest.signature.inputs]
        got = next(iter(model.predict({name: x}).values()))
        np.testing.assert_allclose(got, want, rtol=1e-5)

    return check


def test_a_load_hashes_only_the_files_its_runtime_reads(tmp_path: Path) -> None:
    """A torch-packed crate holds the weights three times (ONNX, .pt2, safetensors): a load
    through ONNX Runtime copies model.onnx alone out of the store into the cache and
    hashes it alone, so a damaged safetensors copy in the cache does not stop it, while
    whoever reads that file is refused."""
    registry = mc.Registry(tmp_path / "registry")
    check_linear = published_linear(registry)
    check_linear()
    [entry] = list((tmp_path / "registry" / "cache" / "crates").iterdir())
    assert sorted(p.name for p in entry.iterdir()) == ["model.onnx"]
    everything = registry.get("lin@1.0.0").localize()  # every file: the entry grows
    assert everything is not None
    everything.wait()
    assert sorted(p.name for p in entry.iterdir()) == sorted(
        f.path for f in registry.manifest("lin@1.0.0").files
    )
    damaged = entry / "model.safetensors"
    damaged.chmod(0o644)
    with damaged.open("r+b") as handle:
        handle.seek(-4, os.SEEK_END)
        handle.write(b"\xff\xff\xff\xff")
    check_linear()  # loads through ONNX Runtime again
    copy = registry.get("lin@1.0.0").localize()
    assert copy is not None
    with pytest.raises(mc.IntegrityError, match="model.safetensors is corrupted"):
        copy.wait()


@pytest.mark.parametrize("form", ["directory", "crate file"])
def test_a_local_crate_load_hashes_only_the_files_its_runtime_reads(
    form: str, tmp_path: Path
) -> None:
    """``mc.load`` of a crate directory or ``.crate`` file screens every file (there, its
    listed size, not a pickle) and hashes what its runtime reads: a damaged .pt2 does not
    stop a load through ONNX Runtime, and is refused by ``to_torch()``, which reads it.
    A file of the wrong size is refused at load."""
    import tarfile

    import torch

    torch.manual_seed(0)
    module = torch.nn.Linear(4, 3).eval()
    crate = mc.pack(module, example_inputs=(torch.zeros(1, 4),), name="lin", version="1.0.0")
    pt2 = next(f.path for f in crate.manifest.files if f.path.endswith(".pt2"))
    directory = crate.unpack(tmp_path / "lin")
    archive = crate.save(tmp_path / "lin.crate")
    if form == "directory":
        target, damaged, at = directory, directory / pt2, (directory / pt2).stat().st_size // 2
    else:
        with tarfile.open(archive) as tar:
            member = tar.getmember(pt2)
        target, damaged, at = archive, archive, member.offset_data + member.size // 2
    with damaged.open("r+b") as handle:
        handle.seek(at)
        flipped = bytes([handle.read(1)[0] ^ 0xFF])
        handle.seek(at)
        handle.write(flipped)
    model = mc.load(target)
    x = np.random.default_rng(0).random((2, 4), dtype=np.float32)
    [name] = [s.name for s in model.manifest.signature.inputs]
    want = module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(next(iter(model.predict({name: x}).values())), want, rtol=1e-5)
    with pytest.raises(mc.IntegrityError, match=f"{pt2} is corrupted"):
        model.to_torch()
    if form == "directory":
        weights = directory / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-10])
        with pytest.raises(mc.IntegrityError, match=r"model.safetensors is corrupted \(expected"):
            mc.load(directory)


def test_loads_reading_some_files_and_all_files_race_to_one_entry(tmp_path: Path) -> None:
    """On a cold cache, loads through ONNX Runtime (model.onnx) and copies of every file
    fill one entry at once: each gets what it reads, intact, and the entry ends whole."""
    from concurrent.futures import ThreadPoolExecutor

    registry = mc.Registry(tmp_path / "registry")
    check_linear = published_linear(registry)
    files = sorted(f.path for f in registry.manifest("lin@1.0.0").files)

    def load_or_copy(n: int) -> None:
        if n % 2:
            check_linear()
        else:
            copy = registry.get("lin@1.0.0").localize()
            assert copy is not None
            copy.wait()
            assert sorted(p.name for p in copy.directory.iterdir()) == files

    for _ in range(3):
        shutil.rmtree(tmp_path / "registry" / "cache", ignore_errors=True)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(load_or_copy, range(8)))
        [entry] = list((tmp_path / "registry" / "cache" / "crates").iterdir())
        assert sorted(p.name for p in entry.iterdir()) == files


def to_earlier_layout(registry: mc.Registry, ref: str) -> None:
    """Rewrite a registry as releases before packs left it: the first file of ``ref`` stored
    whole as a loose blob, the others as loose chunk blobs (schema 0003, no pack tables)."""
    assert registry.root is not None and isinstance(registry.blobs, FileBlobStore)
    manifest = registry.manifest(ref)
    loose = registry.root / "blobs" / "sha256"
    with sqlite3.connect(registry.root / "registry.db") as db:
        for number, entry in enumerate(manifest.files):
            data = registry.files.open(entry.sha256).read()
            if number == 0:
                db.execute("DELETE FROM file_chunks WHERE file_sha = ?", (entry.sha256,))
                (loose / entry.sha256[:2]).mkdir(parents=True, exist_ok=True)
                (loose / entry.sha256[:2] / entry.sha256).write_bytes(data)
                continue
            start = 0
            for chunk in registry.files.locate(entry.sha256) or []:
                (loose / chunk.sha256[:2]).mkdir(parents=True, exist_ok=True)
                (loose / chunk.sha256[:2] / chunk.sha256).write_bytes(
                    data[start : start + chunk.size]
                )
                start += chunk.size
        db.execute("DROP TABLE chunks")
        db.execute("DROP TABLE packs")
        for table in TABLES_AFTER_0004:
            db.execute(f"DROP TABLE {table}")
        db.execute("UPDATE alembic_version SET version_num = '0003'")
    shutil.rmtree(registry.root / "blobs" / "packs")
    shutil.rmtree(registry.root / "cache", ignore_errors=True)


def test_a_registry_from_before_packs_is_adopted_and_repacked(
    registry: mc.Registry, tmp_path: Path
) -> None:
    source = big_onnx(tmp_path / "v1")
    registry.publish(mc.pack(source, name="big", version="1.0.0"))
    root = registry.root
    assert root is not None
    to_earlier_layout(registry, "big@1.0.0")
    registry.close()
    old = mc.Registry.open(root)  # migration 0004 adds the pack index
    assert all(c.problem is None for c in old.verify("big@1.0.0"))
    np.testing.assert_allclose(predict(old, "big@1.0.0"), expected(source), rtol=1e-5)
    assert list((root / "blobs" / "sha256").rglob("*")) != []
    # A new version sharing the loose chunks is stored without copying them.
    old.publish(
        mc.pack(big_onnx(tmp_path / "v2", seed=2, rows_changed=4), name="big", version="1.1.0")
    )
    report = old.gc(grace_seconds=0)  # loose chunks and whole files move into packs
    assert [p for p in (root / "blobs" / "sha256").rglob("*") if p.is_file()] == []
    assert report.bytes_freed >= 0
    assert old.verify_store() == []
    shutil.rmtree(root / "cache", ignore_errors=True)
    for ref in ("big@1.0.0", "big@1.1.0"):
        assert all(c.problem is None for c in old.verify(ref))
        predict(old, ref)


def test_publish_warms_the_cache_and_gc_forgets_deleted_versions(
    registry: mc.Registry, tmp_path: Path
) -> None:
    source = big_onnx(tmp_path / "v1")
    registry.publish(mc.pack(source, name="big", version="1.0.0"))
    assert registry.root is not None
    cache = registry.root / "cache"
    data_sha = registry.manifest("big@1.0.0").file("m.onnx.data").sha256
    warmed = cache / "files" / data_sha[:2] / data_sha
    assert warmed.read_bytes() == (tmp_path / "v1" / "m.onnx.data").read_bytes()
    inode = warmed.stat().st_ino
    predict(registry, "big@1.0.0")  # the first load links the warmed file: nothing copied
    [crate_dir] = list((cache / "crates").iterdir())
    assert (crate_dir / "m.onnx.data").stat().st_ino == inode
    registry.delete("big@1.0.0")
    registry.gc(grace_seconds=0)
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_sixteen_first_loads_at_once_share_one_cache_entry(
    registry: mc.Registry, tmp_path: Path
) -> None:
    sources = [big_onnx(tmp_path / f"v{n}", seed=n + 1, rows_changed=N) for n in range(2)]
    for number, source in enumerate(sources):
        registry.publish(mc.pack(source, name="big", version=f"1.{number}.0"))
    assert registry.root is not None
    from concurrent.futures import ThreadPoolExecutor

    for _ in range(3):  # a cold cache each round: every load races to fill it
        shutil.rmtree(registry.root / "cache", ignore_errors=True)
        refs = [f"big@1.{n % 2}.0" for n in range(16)]
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(lambda ref: predict(registry, ref), refs))
        for ref, answer in zip(refs, answers, strict=True):
            np.testing.assert_allclose(answer, expected(sources[int(ref[-3])]), rtol=1e-5)
