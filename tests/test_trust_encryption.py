"""Encryption at rest: recipients, passphrases, tampering, and no plaintext on disk."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

import modelcrate as mc
from conftest import Server, make_onnx, run_cli
from modelcrate.crate import Crate
from modelcrate.manifest import MANIFEST_NAME, parse_manifest
from modelcrate.trust.crypto import encrypt, unlock
from modelcrate.trust.keys import TrustedKeys, generate

X = np.arange(12, dtype=np.float32).reshape(3, 4)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    generate(directory / "ec")
    generate(directory / "x", "x25519")
    generate(directory / "rsa", "rsa")
    generate(directory / "stranger", "x25519")
    return directory


@pytest.fixture
def big_crate(tmp_path: Path) -> Crate:
    """A crate whose weights live in external data big enough for several 4 KiB chunks."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).standard_normal((4, 4096)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4096])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "src" / "big.onnx"
    path.parent.mkdir()
    onnx.save(model, path, save_as_external_data=True, location="big.onnx.data", size_threshold=0)
    return mc.pack(path, name="big", version="1.0.0")


def test_each_recipient_kind_and_a_passphrase_open_the_same_model(
    tmp_path: Path, registry: mc.Registry, keys: Path
) -> None:
    registry.publish(mc.pack(make_onnx(tmp_path / "tiny.onnx"), name="tiny", version="1.0.0"))
    expected = mc.load("tiny@1.0.0", registry=registry).predict(X)["y"]
    result = mc.encrypt(
        "tiny@1.0.0",
        recipients=[keys / "ec.pub", keys / "x.pub", keys / "rsa.pub"],
        passphrase="correct horse",
        registry=registry,
    )
    assert result.version == "1.0.0-enc"
    manifest = registry.manifest("tiny@1.0.0-enc")
    assert manifest.encryption is not None
    assert {r.kind for r in manifest.encryption.recipients} == {
        "ec",
        "x25519",
        "rsa-oaep",
        "scrypt",
    }
    assert manifest.lineage is not None and manifest.lineage.operation == "encrypt"
    for identity in ("ec.key", "x.key", "rsa.key"):
        model = mc.load("tiny@1.0.0-enc", registry=registry, identity=keys / identity)
        np.testing.assert_array_equal(model.predict(X)["y"], expected)
    by_passphrase = mc.load("tiny@1.0.0-enc", registry=registry, passphrase="correct horse")
    np.testing.assert_array_equal(by_passphrase.predict(X)["y"], expected)

    with pytest.raises(mc.DecryptionError, match="is encrypted; pass --identity"):
        mc.load("tiny@1.0.0-enc", registry=registry)
    with pytest.raises(mc.DecryptionError, match="not encrypted for this key"):
        mc.load("tiny@1.0.0-enc", registry=registry, identity=keys / "stranger.key")
    with pytest.raises(mc.DecryptionError, match="wrong passphrase"):
        mc.load("tiny@1.0.0-enc", registry=registry, passphrase="wrong")
    assert all(c.problem is None for c in registry.verify("tiny@1.0.0-enc"))


def test_ciphertext_is_at_rest_and_plaintext_never_reaches_the_disk(
    tmp_path: Path, home: Path, keys: Path, big_crate: Crate, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = mc.Registry.open()
    registry.publish(big_crate)
    plain = big_crate.read_bytes("big.onnx.data")
    run_cli("encrypt", "big@1.0.0", "--recipient", str(keys / "x.pub"), check=True)
    run_cli("delete", "big@1.0.0", check=True)
    run_cli("gc", "--grace", "0", check=True)

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    predicted = run_cli(
        "predict",
        "big@1.0.0-enc",
        "--identity",
        str(keys / "x.key"),
        "--json",
        "--data",
        json.dumps(X.tolist()),
    )
    assert predicted.returncode == 0, predicted.stderr
    assert np.asarray(json.loads(predicted.stdout)["y"]).shape == (3, 4096)

    needle = plain[4096:4160]  # 64 bytes from the middle of the weights
    for root in (home, scratch):
        for path in root.rglob("*"):
            if path.is_file():
                assert needle not in path.read_bytes(), f"plaintext weights found in {path}"


def _tampered(tmp_path: Path, crate: Crate, edit: Callable[[dict, Path], None]) -> Crate:
    """Unpack ``crate``, let ``edit`` change files and manifest, and re-list the hashes, as an
    attacker without the key (and without a signature to forge) would."""
    root = crate.unpack(tmp_path / f"t{len(list(tmp_path.iterdir()))}")
    raw = json.loads((root / MANIFEST_NAME).read_text())
    edit(raw, root)
    for entry in raw["files"]:
        data = (root / entry["path"]).read_bytes()
        entry["size"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (root / MANIFEST_NAME).write_bytes(json.dumps(raw).encode())
    return Crate.open(root)


def test_tampered_ciphertext_is_refused(tmp_path: Path, keys: Path, big_crate: Crate) -> None:
    sealed = encrypt(big_crate, recipients=[keys / "x.pub"], chunk_size=4096)
    unit = 4096 + 16
    data_name = "big.onnx.data"

    def swap_chunks(raw: dict, root: Path) -> None:
        blob = (root / data_name).read_bytes()
        (root / data_name).write_bytes(blob[unit : 2 * unit] + blob[:unit] + blob[2 * unit :])

    def drop_last_chunk(raw: dict, root: Path) -> None:
        blob = (root / data_name).read_bytes()
        (root / data_name).write_bytes(blob[:-unit])
        for item in raw["encryption"]["files"]:
            if item["path"] == data_name:  # a careful attacker fixes the plaintext size too
                item["size"] -= 4096

    def flip_a_bit(raw: dict, root: Path) -> None:
        blob = bytearray((root / data_name).read_bytes())
        blob[100] ^= 1
        (root / data_name).write_bytes(bytes(blob))

    def rename(raw: dict, root: Path) -> None:
        # Swap which ciphertext sits under which name: each is bound to its own path.
        a, b = root / "model.onnx", root / data_name
        a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
        a.write_bytes(b_bytes)
        b.write_bytes(a_bytes)
        sizes = {f["path"]: f["size"] for f in raw["encryption"]["files"]}
        for item in raw["encryption"]["files"]:
            other = data_name if item["path"] == "model.onnx" else "model.onnx"
            item["size"] = sizes[other]

    def truncate_wrapped_key(raw: dict, root: Path) -> None:
        wrapped = base64.b64decode(raw["encryption"]["recipients"][0]["wrapped"])
        raw["encryption"]["recipients"][0]["wrapped"] = base64.b64encode(wrapped[:-1]).decode()

    for edit in (swap_chunks, drop_last_chunk, flip_a_bit, rename, truncate_wrapped_key):
        bad = _tampered(tmp_path, sealed, edit)
        with pytest.raises(mc.DecryptionError, match="fails authentication|does not open"):
            mc.Model(unlock(bad, keys / "x.key"))

    # An extra member beside the encrypted files is refused before anything is read.
    archive = sealed.save(tmp_path / "sealed.crate")
    (tmp_path / "extra.bin").write_bytes(b"\0" * 10)
    with tarfile.open(archive, "a") as tar:
        tar.add(tmp_path / "extra.bin", arcname="extra.bin")
    with pytest.raises(mc.UnsafeContentError, match="not listed"):
        Crate.open(archive)


def test_encryption_section_is_covered_by_the_signature(
    tmp_path: Path, registry: mc.Registry, keys: Path
) -> None:
    generate(tmp_path / "signer")
    registry.publish(mc.pack(make_onnx(tmp_path / "tiny.onnx"), name="tiny", version="1.0.0"))
    mc.encrypt(
        "tiny@1.0.0", recipients=[keys / "x.pub"], key=tmp_path / "signer.key", registry=registry
    )
    trust = mc.Policy(True, TrustedKeys.from_paths([tmp_path / "signer.pub"]))
    assert registry.check_signature("tiny@1.0.0-enc", trust)
    manifest = parse_manifest(registry.manifest("tiny@1.0.0-enc").file_bytes())
    assert manifest.encryption is not None


def test_serve_with_identity_decrypts_in_memory(
    tmp_path: Path, keys: Path, start_server: Callable[..., Server]
) -> None:
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(mc.pack(make_onnx(tmp_path / "tiny.onnx"), name="tiny", version="1.0.0"))
    mc.encrypt("tiny@1.0.0", recipients=[keys / "ec.pub"], registry=registry)
    expected = mc.load("tiny@1.0.0", registry=registry).predict(X)["y"]
    server = start_server(registry.root, "tiny@1.0.0-enc", "--identity", str(keys / "ec.key"))
    body = {
        "inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": X.ravel().tolist()}]
    }
    answer = httpx.post(f"{server.url}/v2/models/tiny/infer", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    got = np.asarray(answer.json()["outputs"][0]["data"], dtype=np.float32).reshape(3, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-6)

    locked = start_server(registry.root, "tiny@1.0.0-enc", wait_ready=False)
    meta = httpx.get(f"{locked.url}/v2/models/tiny", timeout=5)
    assert "is encrypted; pass --identity" in meta.text
    assert os.environ.get("MODELCRATE_PASSPHRASE") is None
