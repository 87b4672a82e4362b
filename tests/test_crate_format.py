"""The .crate file: reproducible bytes, directory form, and refusal of every archive trick."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

import modelcrate as mc
from conftest import make_onnx
from modelcrate.errors import CrateFormatError, IntegrityError, UnsafeContentError


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]


def write_tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def regular(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def rebuild(
    crate_path: Path,
    target: Path,
    extra: list[tuple[tarfile.TarInfo, bytes | None]],
    drop: tuple[str, ...] = (),
) -> Path:
    """The crate's members (minus ``drop``) followed by ``extra`` members."""
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = [
        regular(name, data) for name, data in members(crate_path).items() if name not in drop
    ]
    return write_tar(target, entries + extra)


def test_packing_twice_gives_identical_bytes(tmp_path: Path) -> None:
    source = make_onnx(tmp_path / "m.onnx")
    first = mc.pack(source, name="tiny", version="1.0.0").save(tmp_path / "a.crate")
    second = mc.pack(source, name="tiny", version="1.0.0").save(tmp_path / "b.crate")
    assert first.read_bytes() == second.read_bytes()
    assert mc.Crate.open(first).digest == mc.Crate.open(second).digest


def test_tar_layout_is_pinned(tiny_crate: Path) -> None:
    raw = tiny_crate.read_bytes()
    # First header: crate.json, mode 0644, uid/gid 0, mtime 0, POSIX ustar magic.
    assert raw[0:11] == b"crate.json\x00"
    assert raw[100:108] == b"0000644\x00"
    assert raw[108:116] == b"0000000\x00" and raw[116:124] == b"0000000\x00"
    assert raw[136:148] == b"00000000000\x00"
    assert raw[257:263] == b"ustar\x00"
    with tarfile.open(tiny_crate) as tar:
        names = tar.getnames()
    assert names == ["crate.json", *sorted(names[1:])]
    assert len(raw) % 10240 == 0  # whole tar records, uncompressed


def test_crate_json_in_the_archive_matches_the_digest(tiny_crate: Path) -> None:
    manifest_bytes = members(tiny_crate)["crate.json"]
    canonical = json.dumps(json.loads(manifest_bytes), sort_keys=True, separators=(",", ":"))
    expected = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    assert mc.Crate.open(tiny_crate).digest == expected


def test_directory_form_round_trips(tiny_crate: Path, tmp_path: Path) -> None:
    crate = mc.Crate.open(tiny_crate)
    directory = crate.unpack(tmp_path / "unpacked")
    again = mc.Crate.open(directory)
    again.verify()
    assert again.digest == crate.digest
    assert again.save(tmp_path / "again.crate").read_bytes() == tiny_crate.read_bytes()


def test_unpack_refuses_a_non_empty_directory(tiny_crate: Path, tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(CrateFormatError, match="not empty"):
        mc.Crate.open(tiny_crate).unpack(target)
    assert (target / "keep.txt").read_text() == "mine"


def link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def device(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info, None


BAD_MEMBERS = {
    "dotdot": [regular("../evil.txt", b"x")],
    "nested-dotdot": [regular("a/../../evil.txt", b"x")],
    "absolute": [regular("/tmp/evil.txt", b"x")],
    "backslash": [regular("a\\..\\evil.txt", b"x")],
    "symlink": [link("evil-link", "/etc/passwd", tarfile.SYMTYPE)],
    "hardlink": [link("evil-hard", "/etc/passwd", tarfile.LNKTYPE)],
    "device": [device("evil-dev")],
    "setuid": [regular("evil.sh", b"#!/bin/sh\n", mode=0o4755)],
    "directory": [link("somedir", "", tarfile.DIRTYPE)],
    "unlisted-file": [regular("extra.bin", b"not in the manifest")],
    "duplicate": [regular("model.onnx", b"second copy")],
}


@pytest.mark.parametrize("case", list(BAD_MEMBERS), ids=list(BAD_MEMBERS))
def test_archive_tricks_are_refused(case: str, tiny_crate: Path, tmp_path: Path) -> None:
    bad = rebuild(tiny_crate, tmp_path / f"{case}.crate", BAD_MEMBERS[case])
    before = set(tmp_path.parent.rglob("evil*"))
    with pytest.raises(CrateFormatError):
        mc.load(bad)
    with pytest.raises(CrateFormatError):
        mc.publish(bad, registry=tmp_path / "registry")
    assert set(tmp_path.parent.rglob("evil*")) == before  # nothing was written anywhere
    assert mc.Registry.open(tmp_path / "registry").list_models() == []


def test_missing_manifest_is_refused(tiny_crate: Path, tmp_path: Path) -> None:
    bad = rebuild(tiny_crate, tmp_path / "bad.crate", [], drop=("crate.json",))
    with pytest.raises(CrateFormatError, match="no crate.json"):
        mc.Crate.open(bad)


def test_too_many_members_is_refused(tmp_path: Path) -> None:
    entries = [regular(f"f{i}", b"") for i in range(10_001)]
    with pytest.raises(UnsafeContentError, match="more than"):
        mc.Crate.open(write_tar(tmp_path / "bomb.crate", entries))


def test_manifest_that_lies_about_a_size_is_refused(tiny_crate: Path, tmp_path: Path) -> None:
    files = members(tiny_crate)
    manifest = json.loads(files["crate.json"])
    manifest["files"][0]["size"] += 1000
    lying = json.dumps(manifest).encode()
    bad = rebuild(
        tiny_crate, tmp_path / "bad.crate", [regular("crate.json", lying)], drop=("crate.json",)
    )
    with pytest.raises(IntegrityError, match="crate.json says"):
        mc.Crate.open(bad)


@pytest.mark.parametrize(
    "where", ["manifest-data", "model-header", "model-data"], ids=lambda w: str(w)
)
def test_truncated_archive_is_refused(where: str, tiny_crate: Path, tmp_path: Path) -> None:
    with tarfile.open(tiny_crate) as tar:
        info = {m.name: m for m in tar}
    cut = {
        "manifest-data": info["crate.json"].offset_data + 10,
        "model-header": info["model.onnx"].offset + 100,
        "model-data": info["model.onnx"].offset_data + info["model.onnx"].size // 2,
    }[where]
    bad = tmp_path / "cut.crate"
    bad.write_bytes(tiny_crate.read_bytes()[:cut])
    with pytest.raises((CrateFormatError, IntegrityError)):
        mc.load(bad)


def test_a_flipped_byte_is_detected(tiny_crate: Path, tmp_path: Path) -> None:
    files = members(tiny_crate)
    data = bytearray(files["model.onnx"])
    data[len(data) // 2] ^= 0xFF
    bad = rebuild(
        tiny_crate,
        tmp_path / "flipped.crate",
        [regular("model.onnx", bytes(data))],
        drop=("model.onnx",),
    )
    with pytest.raises(IntegrityError, match="model.onnx"):
        mc.load(bad)
    with pytest.raises(IntegrityError, match="model.onnx"):
        mc.publish(bad, registry=tmp_path / "registry")
    assert mc.Registry.open(tmp_path / "registry").list_models() == []


class Canary:
    """Unpickling this writes a file: proof that a pickle was executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.path), "pwned"))  # type: ignore[return-value]


def test_a_listed_pickle_with_a_correct_hash_is_refused(tiny_crate: Path, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    payload = pickle.dumps(Canary(str(canary)), protocol=4)
    files = members(tiny_crate)
    manifest = json.loads(files["crate.json"])
    manifest["files"].append(
        {"path": "weights.bin", "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    )
    bad = rebuild(
        tiny_crate,
        tmp_path / "pickle.crate",
        [regular("crate.json", json.dumps(manifest).encode()), regular("weights.bin", payload)],
        drop=("crate.json",),
    )
    with pytest.raises(UnsafeContentError, match="pickle"):
        mc.load(bad)
    with pytest.raises(UnsafeContentError, match="pickle"):
        mc.publish(bad, registry=tmp_path / "registry")
    assert not canary.exists()


def test_safetensors_header_is_not_mistaken_for_a_pickle(tmp_path: Path) -> None:
    from modelcrate.crate import sniff_pickle

    # A safetensors header of 640 bytes starts with 0x80 0x02, like a protocol-2 pickle.
    head = (640).to_bytes(8, "little") + b'{"__metadata__":{}}'
    assert not sniff_pickle(head)
    assert sniff_pickle(pickle.dumps([1, 2, 3], protocol=2))


def test_onnx_external_data_outside_the_crate_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.bin"
    source = make_onnx(tmp_path / "model" / "m.onnx", external="weights.bin")
    import onnx

    model = onnx.load(str(source), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    outside.write_bytes((tmp_path / "model" / "weights.bin").read_bytes())
    onnx.save_model(model, str(source))
    with pytest.raises(CrateFormatError, match="external data"):
        mc.pack(source, name="evil", version="1.0.0")


def test_onnx_external_data_not_listed_for_the_artifact_is_refused(tmp_path: Path) -> None:
    """A crate whose model.onnx reads a file its manifest does not declare as its data."""
    source = make_onnx(tmp_path / "model" / "m.onnx", external="weights.bin")
    crate = mc.pack(source, name="evil", version="1.0.0")
    manifest = crate.manifest.to_dict()
    manifest["artifacts"][0]["data_files"] = []
    target = tmp_path / "dir"
    crate.unpack(target)
    (target / "crate.json").write_text(json.dumps(manifest))
    with pytest.raises(CrateFormatError, match="does not list"):
        mc.load(target)


@pytest.mark.parametrize("search", ["memmem", "byte-string"])
@pytest.mark.parametrize("shift", [-8, -5, -1])
def test_undeclared_external_data_is_found_across_the_search_blocks(
    tmp_path: Path, shift: int, search: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model file is searched for external-data entries a block at a time: an entry
    (here the only one) whose key straddles the end of the first block is found as well,
    by the C library's memmem or, where it has none, a byte-string search."""
    import onnx
    from onnx import numpy_helper

    from modelcrate.runtimes import onnxruntime
    from modelcrate.runtimes.onnxruntime import SEARCH_BLOCK, external_data_files

    if search == "byte-string":
        monkeypatch.setattr(onnxruntime, "_memmem", lambda: None)
    else:
        assert onnxruntime._memmem() is not None  # this machine's C library has it

    source = make_onnx(tmp_path / "model" / "m.onnx", external="weights.bin")
    model = onnx.load(str(source), load_external_data=False)
    inline = {t.name: t for t in onnx.load(str(source)).graph.initializer}
    entries = [t if t.name == "W" else inline[t.name] for t in model.graph.initializer]
    target, length = SEARCH_BLOCK + shift, SEARCH_BLOCK // 2
    for _ in range(3):  # an inline tensor before the entries moves the key to ``target``
        del model.graph.initializer[:]
        padding = numpy_helper.from_array(np.zeros(length, np.uint8), "padding")
        model.graph.initializer.extend([padding, *entries])
        onnx.save_model(model, str(source))
        length += target - source.read_bytes().find(b"location")
    assert source.read_bytes().find(b"location") == target
    assert source.read_bytes().count(b"location") == 1
    assert external_data_files(source.read_bytes()) == ["weights.bin"]  # in memory, too
    crate = mc.pack(source, name="evil", version="1.0.0")
    assert crate.manifest.artifacts[0].data_files == ["weights.bin"]
    manifest = crate.manifest.to_dict()
    manifest["artifacts"][0]["data_files"] = []
    crate.unpack(tmp_path / "dir")
    (tmp_path / "dir" / "crate.json").write_text(json.dumps(manifest))
    with pytest.raises(CrateFormatError, match="does not list"):
        mc.load(tmp_path / "dir")
    from modelcrate.runtimes.from_onnx import crate_module

    with pytest.raises(CrateFormatError, match="does not list"):  # the torch conversion too
        crate_module(mc.Crate.open(tmp_path / "dir"))


def test_a_local_copy_of_files_the_manifest_does_not_list_is_refused(
    tiny_crate: Path, tmp_path: Path
) -> None:
    """``localize(paths)`` and ``unpack(dir, paths)`` name the files a caller reads; a name
    the manifest does not list is refused, naming it, before anything is written."""
    crate = mc.Crate.open(tiny_crate)
    with pytest.raises(CrateFormatError, match="no file 'weights.bin'"):
        crate.localize(["model.onnx", "weights.bin"])
    with pytest.raises(CrateFormatError, match="no file 'weights.bin'"):
        crate.unpack(tmp_path / "out", ["weights.bin"])
    assert not (tmp_path / "out").exists()
    copy = crate.unpack(tmp_path / "some", ["model.onnx"])
    assert sorted(p.name for p in copy.iterdir()) == ["crate.json", "model.onnx"]


def test_onnx_with_external_data_packs_and_runs(tmp_path: Path) -> None:
    from conftest import tiny_weights

    source = make_onnx(tmp_path / "model" / "m.onnx", external="weights.bin")
    crate = mc.pack(source, name="tiny", version="1.0.0")
    assert crate.manifest.artifacts[0].data_files == ["weights.bin"]
    path = crate.save(tmp_path / "tiny.crate")
    x = np.ones((3, 4), dtype=np.float32)
    weight, bias = tiny_weights()
    np.testing.assert_allclose(mc.load(path).predict(x)["y"], x @ weight + bias, rtol=1e-6)
