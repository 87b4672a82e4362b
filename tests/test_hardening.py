"""Hostile inputs: lying safetensors headers, tar and gzip bombs, fuzzed archives and fuzzed
infer requests. Each must end in a clear modelcrate error, never a crash, and leave what is
already stored intact."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import resource
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelcrate as mc
from conftest import make_onnx
from modelcrate.crate import Crate
from modelcrate.errors import CrateFormatError, InputError, ModelcrateError
from modelcrate.model import read_safetensors
from modelcrate.server.oip import Limits, decode_request

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _with_header(header: dict[str, object], payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + payload


# -- safetensors ---------------------------------------------------------------


def test_a_safetensors_header_claiming_a_terabyte_is_refused_in_o1_memory() -> None:
    data = (10**12).to_bytes(8, "little") + b'{"a": 1}'
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CrateFormatError, match="header claims 1000000000000 bytes"):
        read_safetensors(data, "samples.safetensors")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert after - before < 50_000  # KiB: nothing near the claimed size was allocated


def test_samples_with_a_lying_header_fail_clearly_from_a_crate(tmp_path: Path) -> None:
    crate = mc.pack(make_onnx(tmp_path / "tiny.onnx"), name="tiny", version="1.0.0")
    root = crate.unpack(tmp_path / "dir")
    raw = json.loads((root / "crate.json").read_text())
    bad = (2**63 - 1).to_bytes(8, "little") + b"{}"
    (root / "samples.safetensors").write_bytes(bad)
    raw["samples"] = "samples.safetensors"
    raw["files"].append(
        {"path": "samples.safetensors", "size": len(bad), "sha256": hashlib.sha256(bad).hexdigest()}
    )
    (root / "crate.json").write_text(json.dumps(raw))
    with pytest.raises(CrateFormatError, match="safetensors header claims"):
        mc.load(root).samples()


@st.composite
def lying_offsets(draw: st.DrawFn) -> bytes:
    """A float32 tensor whose offsets overlap, leave gaps, overflow or disagree with its shape."""
    count = draw(st.integers(0, 8))
    payload = bytes(draw(st.integers(0, 64)))
    start = draw(st.one_of(st.integers(0, 64), st.integers(2**62, 2**64 - 1)))
    end = draw(st.one_of(st.integers(0, 64), st.integers(2**62, 2**64 - 1)))
    shape = draw(st.lists(st.integers(0, 2**40), max_size=3))
    header = {"a": {"dtype": "F32", "shape": shape, "data_offsets": [start, end]}}
    if draw(st.booleans()):
        header["b"] = {"dtype": "F32", "shape": [count], "data_offsets": [0, 4 * count]}
    return _with_header(header, payload)


@FUZZ
@given(data=lying_offsets())
def test_lying_safetensors_offsets_never_crash(data: bytes) -> None:
    try:
        tensors = read_safetensors(data, "x.safetensors")
    except CrateFormatError:
        return
    for array in tensors.values():  # accepted only when every tensor fits the buffer exactly
        assert array.nbytes <= len(data)


# -- archives ------------------------------------------------------------------


def test_a_member_claiming_60_gb_is_refused_without_reading_it(tmp_path: Path) -> None:
    info = tarfile.TarInfo("model.onnx")
    info.size = 60 * 1024**3
    header = info.tobuf(tarfile.PAX_FORMAT)
    bomb = tmp_path / "bomb.crate"
    bomb.write_bytes(header + b"\0" * 1024)
    with pytest.raises(ModelcrateError, match="truncated or oversized|not a readable"):
        Crate.open(bomb)


def test_compressed_archives_are_refused_never_inflated(tiny_crate: Path, tmp_path: Path) -> None:
    # 1 GB of zeros gzip to about 1 MB: a crate is never decompressed, so it is never inflated.
    bomb = tmp_path / "zeros.crate"
    with gzip.open(bomb, "wb", compresslevel=9) as out:
        chunk = b"\0" * (1024 * 1024)
        for _ in range(1024):
            out.write(chunk)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CrateFormatError, match="not a readable .crate"):
        Crate.open(bomb)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000
    gzipped = tmp_path / "tiny.crate.gz"
    gzipped.write_bytes(gzip.compress(tiny_crate.read_bytes()))
    with pytest.raises(CrateFormatError):
        Crate.open(gzipped)


@FUZZ
@given(
    edits=st.lists(st.tuples(st.integers(0, 2**31), st.integers(1, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 2**31)),
)
def test_fuzzed_archives_fail_cleanly_or_read_back_exactly(
    tiny_crate: Path,
    tmp_path_factory: pytest.TempPathFactory,
    edits: list[tuple[int, int]],
    cut: int | None,
) -> None:
    original = tiny_crate.read_bytes()
    data = bytearray(original)
    for position, flip in edits:
        data[position % len(data)] ^= flip
    if cut is not None:
        data = data[: cut % len(data)]
    path = tmp_path_factory.mktemp("fuzz") / "f.crate"
    path.write_bytes(bytes(data))
    try:
        crate = Crate.open(path)
        crate.verify()
        contents = {f.path: crate.read_bytes(f.path) for f in crate.manifest.files}
    except ModelcrateError:
        return
    # What survives: flips in tar padding or unused header fields (content untouched), or
    # in crate.json's metadata, which makes a different manifest and so a different digest
    # (what a pinned digest or a signature catches). The files are always the originals.
    good = Crate.open(tiny_crate)
    assert contents == {f.path: good.read_bytes(f.path) for f in good.manifest.files}
    assert (crate.digest == good.digest) == (crate.manifest == good.manifest)


# -- OIP request decoder ---------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_datatypes = st.sampled_from(
    ["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "FP8", ""]
)
_tensor = st.fixed_dictionaries(
    {
        "name": st.one_of(st.text(max_size=6), _json),
        "shape": st.one_of(st.lists(st.integers(-2, 2**40), max_size=4), _json),
        "datatype": st.one_of(_datatypes, _json),
        "data": _json,
    },
    optional={
        "parameters": st.one_of(
            st.dictionaries(
                st.sampled_from(["binary_data_size", "classification"]), st.integers(-5, 2**40)
            ),
            _json,
        )
    },
)
_request = st.one_of(
    _json,
    st.fixed_dictionaries(
        {"inputs": st.lists(_tensor, max_size=3)},
        optional={"outputs": _json, "parameters": _json, "id": _json},
    ),
)


@FUZZ
@given(document=_request, binary=st.binary(max_size=64), split=st.booleans())
def test_fuzzed_infer_requests_are_decoded_or_refused_with_input_error(
    document: object, binary: bytes, split: bool
) -> None:
    header = json.dumps(document, allow_nan=True).encode()
    body = header + binary if split else header
    length = str(len(header)) if split else None
    try:
        request = decode_request(body, length, Limits(max_elements=10_000))
    except InputError:
        return
    for array in request.inputs.values():
        assert isinstance(array, np.ndarray) and array.size <= 10_000


@FUZZ
@given(body=st.binary(max_size=256), length=st.one_of(st.none(), st.text(max_size=6)))
def test_arbitrary_bytes_never_crash_the_decoder(body: bytes, length: str | None) -> None:
    with contextlib.suppress(InputError):
        decode_request(body, length, Limits())


# -- evidence: every bad input, its error, and the registry afterwards ----------------


def _member(name: str, data: bytes = b"x", **fields: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    if info.type != tarfile.REGTYPE:
        info.size = 0
    return info, data


def _retar(
    crate: Path,
    *,
    patch: dict[str, object] | None = None,
    edit: dict[str, bytes] | None = None,
    extra: list[tuple[tarfile.TarInfo, bytes]] | None = None,
    listed: dict[str, bytes] | None = None,
    size_delta: int = 0,
) -> bytes:
    """The crate re-tarred with its manifest patched, member bytes replaced (``edit``, hashes
    left as they were), members added unlisted (``extra``) or listed with correct hashes."""
    with tarfile.open(crate) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
    manifest = json.loads(files["crate.json"])
    manifest.update(patch or {})
    manifest["files"][0]["size"] += size_delta
    for name, data in (listed or {}).items():
        manifest["files"].append(
            {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
        files[name] = data
    files["crate.json"] = json.dumps(manifest).encode()
    files.update(edit or {})
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            tar.addfile(_member(name, data)[0], io.BytesIO(data))
        for info, data in extra or []:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def bad_crates(tiny_crate: Path) -> dict[str, bytes]:
    import pickle

    original = tiny_crate.read_bytes()
    with tarfile.open(tiny_crate) as tar:
        model = tar.getmember("model.onnx")
        onnx_bytes = tar.extractfile(model).read()  # type: ignore[union-attr]
    flipped = bytearray(onnx_bytes)
    flipped[len(flipped) // 2] ^= 0xFF
    return {
        "truncated mid-file": original[: model.offset_data + model.size // 2],
        "gzip-compressed": gzip.compress(original),
        "not a tar": b"\x00garbage" * 100,
        "schema_version 99": _retar(tiny_crate, patch={"schema_version": 99}),
        "manifest key naming code": _retar(tiny_crate, patch={"module": "os.system"}),
        "manifest lies about a size": _retar(tiny_crate, size_delta=7),
        "flipped byte": _retar(tiny_crate, edit={"model.onnx": bytes(flipped)}),
        "../ member": _retar(tiny_crate, extra=[_member("../escape.txt")]),
        "a/../../ member": _retar(tiny_crate, extra=[_member("a/../../escape.txt")]),
        "absolute member": _retar(tiny_crate, extra=[_member("/tmp/escape.txt")]),
        "backslash member": _retar(tiny_crate, extra=[_member("a\\..\\escape.txt")]),
        "symlink member": _retar(
            tiny_crate, extra=[_member("link", type=tarfile.SYMTYPE, linkname="/etc/passwd")]
        ),
        "hardlink member": _retar(
            tiny_crate, extra=[_member("hard", type=tarfile.LNKTYPE, linkname="/etc/passwd")]
        ),
        "device member": _retar(
            tiny_crate, extra=[_member("dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)]
        ),
        "setuid member": _retar(tiny_crate, extra=[_member("run.sh", mode=0o4755)]),
        "duplicate member": _retar(tiny_crate, extra=[_member("model.onnx", b"second")]),
        "unlisted member": _retar(tiny_crate, extra=[_member("extra.bin")]),
        "listed pickle": _retar(tiny_crate, listed={"w.bin": pickle.dumps({"a": 1}, 4)}),
        "10,001 members": _retar(tiny_crate, extra=[_member(f"m{i}") for i in range(10_001)]),
    }


def test_bad_inputs_leave_the_registry_intact(tmp_path: Path, tiny_crate: Path) -> None:
    """Publish a good version, throw every kind of bad crate at `publish` and `verify`, then
    check every stored version is still exactly what it was. The printed table is the
    evidence in the trust issue's closing note (pytest -s shows it)."""
    from conftest import run_cli

    registry_dir = tmp_path / "registry"
    good = run_cli("publish", str(tiny_crate), "--registry", str(registry_dir))
    assert good.returncode == 0, good.stderr
    before = mc.Registry.open(registry_dir).manifest("tiny@1.0.0").digest
    rows = []
    for number, (name, data) in enumerate(bad_crates(tiny_crate).items()):
        path = tmp_path / f"bad-{number}.crate"
        path.write_bytes(data)
        for command in ("publish", "verify"):
            result = run_cli(command, str(path), "--registry", str(registry_dir))
            error = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
            assert result.returncode != 0, (name, command, result.stdout)
            assert error.startswith("error:") and "Traceback" not in result.stderr, (name, error)
        rows.append(f"| {name} | {error.removeprefix('error: ')[:110]} |")
    assert not list(tmp_path.rglob("escape.txt"))
    verify = run_cli("verify", "tiny@1.0.0", "--registry", str(registry_dir))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    after = mc.Registry.open(registry_dir)
    assert [v.version for v in after.versions("tiny")] == ["1.0.0"]
    assert after.manifest("tiny@1.0.0").digest == before
    print("\n| bad input | error |\n| --- | --- |\n" + "\n".join(rows))
