"""One registry interface: `open_registry` picks the backend from the location's scheme, and
`load`, `pull`, `push` and `serve --registry` work the same against each of them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import modelcrate as mc
from conftest import Server, make_onnx
from modelcrate.registry.oci import OciRegistry
from modelcrate.registry.remote import RemoteRegistry
from services import OciRegistry as OciService

X = np.ones((2, 4), np.float32)


@pytest.fixture
def local(tmp_path: Path) -> mc.Registry:
    registry = mc.Registry.open(tmp_path / "local")
    registry.publish(mc.pack(make_onnx(tmp_path / "m.onnx"), name="tiny", version="1.0.0"))
    registry.set_alias("tiny", "prod", "1.0.0")
    return registry


def test_the_scheme_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(mc.open_registry(tmp_path / "r"), mc.Registry)
    assert isinstance(mc.open_registry(f"file://{tmp_path}/r2"), mc.Registry)
    assert isinstance(mc.open_registry("https://models.example"), RemoteRegistry)
    assert isinstance(mc.open_registry("oci://127.0.0.1:5000/ml"), OciRegistry)
    with pytest.raises(mc.UsageError, match="unknown scheme 'ftp'"):
        mc.open_registry("ftp://host/x")
    with pytest.raises(mc.UsageError, match=r"open_registry\(location\)"):
        mc.Registry.open("https://models.example")


def test_load_pull_and_serve_through_a_server(
    local: mc.Registry, tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    server = start_server(local.root, "tiny@prod")
    expected = mc.load("tiny@1.0.0", registry=local).predict(X)["y"]
    remote = mc.open_registry(server.url)
    try:
        assert [m.name for m in remote.list_models()] == ["tiny"]
        assert remote.resolve("tiny@prod").version == "1.0.0"
        model = mc.load("tiny@prod", registry=remote)
        np.testing.assert_allclose(model.predict(X)["y"], expected)
    finally:
        remote.close()
    np.testing.assert_allclose(mc.load("tiny@prod", registry=server.url).predict(X)["y"], expected)
    pulled = mc.pull("tiny@1.0.0", tmp_path / "pulled", registry=server.url)
    assert mc.Crate.open(pulled).digest == local.resolve("tiny@1.0.0").digest
    # A second server reading its models from the first one, through the same interface.
    relay = start_server(server.url, "tiny@prod")
    with mc.Client(relay.url) as client:
        np.testing.assert_allclose(client.predict("tiny", X)["y"], expected)


def test_push_load_and_alias_through_an_oci_registry(
    local: mc.Registry, oci_registry: OciService
) -> None:
    location = f"oci://{oci_registry.host}/ml"
    result = mc.push("tiny@1.0.0", location, registry=local)
    assert result.created and (result.name, result.version) == ("tiny", "1.0.0")
    oci = mc.open_registry(location)
    assert oci.resolve("tiny@1.0.0").digest == local.resolve("tiny@1.0.0").digest
    oci.set_alias("tiny", "prod", "1.0.0")  # one more tag on the same artifact
    model = mc.load("tiny@prod", registry=location)
    expected = mc.load("tiny@1.0.0", registry=local).predict(X)["y"]
    np.testing.assert_allclose(model.predict(X)["y"], expected)
    with pytest.raises(mc.UsageError, match="does not list its repositories"):
        oci.list_models()
    # The registry's root as the location (its host:port is no tag): repository tiny.
    root = f"oci://{oci_registry.host}"
    assert mc.push("tiny@1.0.0", root, registry=local).created
    assert mc.open_registry(root).resolve("tiny@1.0.0").digest == result.digest
