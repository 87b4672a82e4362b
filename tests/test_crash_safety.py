"""kill -9 during publish: every version is absent or complete, earlier ones untouched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import modelcrate as mc
from conftest import make_onnx
from modelcrate.registry.blobs import FileBlobStore

PUBLISHER = textwrap.dedent(
    """
    import sys
    import modelcrate as mc
    crate = mc.Crate.open(sys.argv[2])
    mc.Registry.open(sys.argv[1])  # imports and schema set-up done before "ready"
    print("ready", flush=True)
    mc.publish(crate, registry=sys.argv[1])
    print("done", flush=True)
    """
)


def start(registry_dir: Path | str, crate: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(registry_dir), str(crate)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_killed_publishes_leave_versions_absent_or_complete(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    registry_dir: Path | str = tmp_path / "registry"
    blob_tmp = tmp_path / "registry" / "blobs" / "tmp"
    if backend == "postgresql":
        postgres = request.getfixturevalue("postgres")
        registry_dir = f"{postgres.database()}?blobs={tmp_path / 'blobs'}"
        blob_tmp = tmp_path / "blobs" / "tmp"
    registry = mc.Registry.open(registry_dir)
    first = mc.pack(make_onnx(tmp_path / "v0" / "m.onnx", seed=0), name="tiny", version="1.0.0")
    registry.publish(first)
    before = {c.path: c.problem for c in registry.verify("tiny@1.0.0")}
    blobs = registry.blobs
    assert isinstance(blobs, FileBlobStore)
    packs_before = {p: blobs.pack_path(p).read_bytes() for p, _, _ in blobs.iter_packs()}
    assert packs_before  # the first version's chunks live in a pack
    crates = []
    for i in range(1, 9):
        # A few MB of external data, so the kill lands in the middle of blob writes.
        source = make_onnx(tmp_path / f"v{i}" / "m.onnx", seed=i, external="weights.bin")
        (tmp_path / f"v{i}" / "pad.bin").write_bytes(os.urandom(4 * 1024 * 1024))
        crate = mc.pack(source, name="tiny", version=f"1.0.{i}", model_card=None)
        crates.append(crate.save(tmp_path / f"tiny-{i}.crate"))
    # Time one complete publish, then kill the others at fractions of that time.
    probe = mc.pack(
        make_onnx(tmp_path / "probe" / "m.onnx", seed=99, external="w.bin"),
        name="probe",
        version="1.0.0",
    ).save(tmp_path / "probe.crate")
    proc = start(registry_dir, probe)
    started = time.perf_counter()
    assert proc.stdout is not None and proc.stdout.readline().strip() == "done"
    duration = time.perf_counter() - started
    proc.wait(timeout=60)
    proc.stdout.close()
    for i, path in enumerate(crates):
        proc = start(registry_dir, path)
        time.sleep(duration * i / (len(crates) - 2))  # from the start to just past the end
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.stdout is not None
        proc.stdout.close()
    registry = mc.Registry.open(registry_dir)
    landed = registry.versions("tiny")
    print(
        "landed after kills:",
        [v.version for v in landed],
        "tmp files:",
        len(list(blob_tmp.iterdir())),
    )
    for version in landed:
        checks = registry.verify(version.ref)
        assert all(c.problem is None for c in checks), (version.ref, checks)
        mc.load(version.ref, registry=registry)
    assert {c.path: c.problem for c in registry.verify("tiny@1.0.0")} == before
    for pack, data in packs_before.items():  # packs are written once, never appended to
        assert blobs.pack_path(pack).read_bytes() == data
    # Packs whose index never committed (killed between rename and commit) are unindexed
    # files that gc reclaims; every indexed pack is whole.
    assert registry.verify_store() == []
    # A later, complete publish of every killed version still works.
    for path in crates:
        registry.publish(path)
    assert len(registry.versions("tiny")) == 1 + len(crates)
