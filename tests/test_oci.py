"""Crates as OCI artifacts against a real OCI registry (Debian's docker-registry)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

import modelcrate as mc
from conftest import make_onnx, run_cli
from services import OciRegistry


@pytest.fixture
def published(tmp_path: Path, home: Path) -> mc.Registry:
    source = make_onnx(tmp_path / "src" / "tiny.onnx", external="tiny.onnx.data")
    registry = mc.Registry.open()
    registry.publish(mc.pack(source, name="tiny", version="1.0.0"))
    return registry


def test_push_then_pull_through_a_real_oci_registry(
    tmp_path: Path, published: mc.Registry, oci_registry: OciRegistry
) -> None:
    target = f"oci://{oci_registry.host}/ml/tiny:1.0.0"
    pushed = run_cli("push", "tiny@1.0.0", target, "--json")
    assert pushed.returncode == 0, pushed.stderr

    accept = {"accept": "application/vnd.oci.image.manifest.v1+json"}
    manifest = httpx.get(
        f"http://{oci_registry.host}/v2/ml/tiny/manifests/1.0.0", headers=accept
    ).json()
    crate = published.manifest("tiny@1.0.0")
    assert manifest["config"]["mediaType"] == "application/vnd.modelcrate.crate.v1+json"
    assert manifest["annotations"]["dev.modelcrate.digest"] == crate.digest
    layers = {
        layer["annotations"]["org.opencontainers.image.title"]: layer
        for layer in manifest["layers"]
    }
    assert set(layers) == {f.path for f in crate.files}
    for entry in crate.files:  # one layer per file; the layer digest is the file's sha256
        assert layers[entry.path]["digest"] == f"sha256:{entry.sha256}"
        assert layers[entry.path]["mediaType"] == "application/vnd.cncf.model.weight.v1.raw"

    # Pull into another registry, and into a directory.
    other = tmp_path / "other"
    pulled = run_cli("pull", target, "--registry", str(other))
    assert pulled.returncode == 0, pulled.stderr
    assert mc.Registry.open(other).resolve("tiny@1.0.0").digest == crate.digest
    directory = mc.pull(target, tmp_path / "dir")
    x = np.ones((1, 4), np.float32)
    np.testing.assert_array_equal(
        mc.load(directory).predict(x)["y"], mc.load("tiny@1.0.0").predict(x)["y"]
    )


def test_a_foreign_or_tampered_artifact_is_refused(
    tmp_path: Path, published: mc.Registry, oci_registry: OciRegistry
) -> None:
    import oras.client

    client = oras.client.OrasClient(hostname=oci_registry.host, insecure=True)
    evil = tmp_path / "evil.txt"
    evil.write_text("not a model")
    client.push(
        target=f"{oci_registry.host}/ml/evil:1",
        files=[f"{evil}:text/plain"],
        disable_path_validation=True,
        quiet=True,
    )
    foreign = run_cli("pull", f"oci://{oci_registry.host}/ml/evil:1", "--to", str(tmp_path / "x"))
    assert foreign.returncode == 1 and "not a modelcrate artifact" in foreign.stderr
    assert not (tmp_path / "x").exists()

    missing = run_cli(
        "pull", f"oci://{oci_registry.host}/ml/nothing:1", "--to", str(tmp_path / "y")
    )
    assert missing.returncode == 1 and "no such tag" in missing.stderr
    assert all(check.problem is None for check in published.verify("tiny@1.0.0"))


def test_a_pull_checks_each_layer_as_it_arrives(
    tmp_path: Path, home: Path, oci_registry: OciRegistry
) -> None:
    """A pull hashes each file while it downloads (no second pass) and writes nothing on a
    mismatch: a layer crate.json does not list, a layer that is not the listed file, and a
    blob whose stored bytes were altered in the OCI registry are each refused, naming it."""
    import oras.client

    source = make_onnx(tmp_path / "src" / "tiny.onnx", external="tiny.onnx.data", seed=7)
    crate = mc.pack(source, name="tiny", version="7.0.0")
    unpacked = crate.unpack(tmp_path / "crate")
    client = oras.client.OrasClient(hostname=oci_registry.host, insecure=True)

    def push_as_crate(repository: str, files: dict[str, bytes]) -> str:
        """Push crate.json as the config and ``files`` as layers titled by their names."""
        folder = tmp_path / repository
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        config = f"{unpacked / 'crate.json'}:application/vnd.modelcrate.crate.v1+json"
        client.push(
            target=f"{oci_registry.host}/ml/{repository}:1",
            files=[str(folder / name) for name in files],
            manifest_config=config,
            disable_path_validation=True,
            quiet=True,
        )
        return f"oci://{oci_registry.host}/ml/{repository}:1"

    listed = {f.path: (unpacked / f.path).read_bytes() for f in crate.manifest.files}
    extra = push_as_crate("extra", {**listed, "evil.txt": b"not listed"})
    with pytest.raises(mc.UnsafeContentError, match="does not list: 'evil.txt'"):
        mc.pull(extra, tmp_path / "a")
    other = dict(listed)
    other["tiny.onnx.data"] = bytes(len(other["tiny.onnx.data"]))  # same size, other bytes
    swapped = push_as_crate("swapped", other)
    with pytest.raises(mc.IntegrityError, match="layer 'tiny.onnx.data' is not the file"):
        mc.pull(swapped, tmp_path / "b")

    target = push_as_crate("altered", listed)
    assert mc.pull(target, tmp_path / "intact").is_dir()  # pulls while the blob is intact
    entry = crate.manifest.file("tiny.onnx.data")
    [blob] = (oci_registry.root / "data").rglob(
        f"blobs/sha256/{entry.sha256[:2]}/{entry.sha256}/data"
    )
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    failed = run_cli("pull", target, "--to", str(tmp_path / "c"))
    assert failed.returncode == 1 and "tiny.onnx.data is corrupted" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".oci-pull-*"))


def test_a_load_through_an_oci_registry_fetches_only_the_files_its_runtime_reads(
    tmp_path: Path, home: Path, oci_registry: OciRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A torch-packed crate holds the weights three times (ONNX, .pt2, safetensors); loaded
    from an OCI registry for ONNX Runtime, crate.json and model.onnx alone are downloaded.
    ``to_torch()`` then downloads the .pt2, and every file is verified as it streams."""
    import oras.provider
    import torch

    torch.manual_seed(0)
    module = torch.nn.Linear(4, 3).eval()
    crate = mc.pack(module, example_inputs=(torch.zeros(1, 4),), name="lin", version="1.0.0")
    mc.Registry.open().publish(crate)
    location = f"oci://{oci_registry.host}/loads"
    pushed = run_cli("push", "lin@1.0.0", f"{location}/lin:1.0.0")
    assert pushed.returncode == 0, pushed.stderr
    fetched: list[str] = []
    original = oras.provider.Registry.get_blob

    def counted(self: object, container: object, digest: str, **options: object) -> object:
        fetched.append(digest)
        return original(self, container, digest, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(oras.provider.Registry, "get_blob", counted)
    model = mc.load("lin@1.0.0", registry=location)
    x = np.random.default_rng(0).random((2, 4), dtype=np.float32)
    [name] = [s.name for s in model.manifest.signature.inputs]
    want = module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(next(iter(model.predict({name: x}).values())), want, rtol=1e-5)
    paths = {f"sha256:{f.sha256}": f.path for f in crate.manifest.files}
    assert len(paths) >= 3
    assert [paths.get(digest, "crate.json") for digest in fetched] == ["crate.json", "model.onnx"]
    rebuilt = model.to_torch(trainable=False)
    np.testing.assert_allclose(rebuilt(torch.from_numpy(x)).detach().numpy(), want, rtol=1e-5)
    assert paths[fetched[-1]] == "model.pt2" and len(fetched) == 3
