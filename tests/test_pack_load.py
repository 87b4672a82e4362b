"""Pack from PyTorch / ONNX / .pt2, save, publish, load with ONNX Runtime, predict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import modelcrate as mc
from conftest import MLP, Digits, make_onnx, tiny_weights
from modelcrate.errors import InputError, NotFound, PackError, UsageError


def test_digits_round_trip_equals_torch(
    digits: Digits, digits_crate_path: Path, registry: mc.Registry
) -> None:
    registry.publish(digits_crate_path)
    model = mc.load("digits@1.0.0", registry=registry)
    x = digits.x_test[:64]
    with torch.no_grad():
        expected = digits.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x)["output"], expected, atol=1e-4)
    np.testing.assert_allclose(model(x)["output"], expected, atol=1e-4)
    assert digits.accuracy > 0.9


def test_manifest_records_signature_parity_and_dependencies(digits_crate_path: Path) -> None:
    manifest = mc.Crate.open(digits_crate_path).manifest
    spec = manifest.signature.inputs[0]
    assert (spec.name, spec.dtype, spec.shape) == ("x", "float32", [-1, 1, 8, 8])
    assert manifest.signature.outputs[0].shape == [-1, 10]
    assert [a.kind for a in manifest.artifacts] == ["onnx", "torch-export", "safetensors"]
    onnx = manifest.artifact("onnx")
    assert onnx is not None and onnx.parity is not None
    assert onnx.parity.max_abs_diff < 1e-4
    assert manifest.framework is not None and manifest.framework.name == "pytorch"
    assert manifest.dependencies["torch"] == torch.__version__.split("+")[0]
    assert manifest.labels == [str(i) for i in range(10)]
    assert manifest.model_card == "README.md"
    assert "accuracy" in manifest.metrics


def test_mlp_round_trip_through_a_saved_crate(mlp: MLP, tmp_path: Path) -> None:
    example = torch.randn(5, 20)
    crate = mc.pack(
        mlp,
        example_inputs=(example,),
        name="mlp",
        version="0.1.0",
        metrics={"f1": 0.5},
        description="an MLP",
    )
    path = crate.save(tmp_path / "mlp.crate")
    mc.publish(path, registry=tmp_path / "reg")
    model = mc.load("mlp", registry=tmp_path / "reg")
    x = np.random.default_rng(0).standard_normal((7, 20)).astype(np.float32)
    with torch.no_grad():
        expected = mlp(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict({"features": x})["output"], expected, atol=1e-4)


def test_packing_the_same_torch_model_twice_is_byte_identical(mlp: MLP, tmp_path: Path) -> None:
    example = (torch.ones(2, 20),)
    a = mc.pack(mlp, example_inputs=example, name="mlp", version="1").save(tmp_path / "a.crate")
    b = mc.pack(mlp, example_inputs=example, name="mlp", version="1").save(tmp_path / "b.crate")
    assert a.read_bytes() == b.read_bytes()


def test_to_torch_gives_a_trainable_module(digits: Digits, digits_crate_path: Path) -> None:
    module = mc.load(digits_crate_path).to_torch()
    x = torch.from_numpy(digits.x_test[:8])
    with torch.no_grad():
        np.testing.assert_allclose(module(x).numpy(), digits.model(x).numpy(), atol=1e-5)
    names = [name for name, _ in module.named_parameters()]
    assert names == [name for name, _ in digits.model.named_parameters()]
    before = [p.detach().clone() for p in module.parameters()]
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(module(x), torch.zeros(8, dtype=torch.long))
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))
    frozen = mc.load(digits_crate_path).to_torch(trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_safetensors_weights_load_into_the_users_own_module(
    digits: Digits, digits_crate_path: Path
) -> None:
    from safetensors.torch import load
    from train import DigitsCNN

    crate = mc.Crate.open(digits_crate_path)
    fresh = DigitsCNN()
    fresh.load_state_dict(load(crate.read_bytes("model.safetensors")))
    for a, b in zip(fresh.parameters(), digits.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_large_torch_module_exports_onnx_with_external_data(
    mlp: MLP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights past the threshold (1 GiB; lowered here) go to model.onnx.data, as a
    protobuf cannot hold more than 2 GiB; the crate lists, verifies and runs it."""
    from modelcrate.pack import torch as pack_torch

    monkeypatch.setattr(pack_torch, "EXTERNAL_DATA_BYTES", 1024)
    x = torch.randn(4, mlp.net[0].in_features)
    crate = mc.pack(mlp, example_inputs=(x,), name="big", version="1.0.0")
    onnx_artifact = crate.manifest.artifact("onnx")
    assert onnx_artifact is not None and onnx_artifact.data_files == ["model.onnx.data"]
    assert onnx_artifact.parity is not None and onnx_artifact.parity.max_abs_diff < 1e-4
    path = crate.save(tmp_path / "big.crate")
    with torch.no_grad():
        expected = mlp(x).numpy()
    np.testing.assert_allclose(mc.load(path).predict(x.numpy())["output"], expected, atol=1e-5)


def test_pack_from_a_pt2_file(digits: Digits, tmp_path: Path) -> None:
    program = torch.export.export(
        digits.model,
        (torch.zeros(2, 1, 8, 8),),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    torch.export.save(program, str(tmp_path / "model.pt2"))
    crate = mc.pack(tmp_path / "model.pt2", name="digits", version="1.1.0")
    assert crate.read_bytes("model.pt2") == (tmp_path / "model.pt2").read_bytes()
    x = digits.x_test[:10]
    with torch.no_grad():
        expected = digits.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(mc.load(crate).predict(x)["output"], expected, atol=1e-4)
    assert crate.manifest.signature.inputs[0].shape == [-1, 1, 8, 8]


def test_torch_runtime_agrees_with_onnxruntime(digits: Digits, digits_crate_path: Path) -> None:
    x = digits.x_test[:16]
    by_ort = mc.load(digits_crate_path).predict(x)["output"]
    by_torch = mc.load(digits_crate_path, runtime="torch").predict(x)["output"]
    np.testing.assert_allclose(by_ort, by_torch, atol=1e-4)


def test_pack_from_an_onnx_file(tmp_path: Path) -> None:
    crate = mc.pack(make_onnx(tmp_path / "tiny.onnx"), name="tiny", version="1.0.0")
    manifest = crate.manifest
    assert manifest.framework is not None and manifest.framework.name == "onnx"
    assert manifest.artifacts[0].opset == 17
    assert manifest.signature.inputs[0].shape == [-1, 4]
    weight, bias = tiny_weights()
    x = np.eye(4, dtype=np.float32)
    np.testing.assert_allclose(mc.load(crate).predict(x)["y"], x @ weight + bias, rtol=1e-6)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            np.zeros((3, 8, 8), np.float32),
            r"expected shape \[-1, 1, 8, 8\] \(float32\), got \[3, 8, 8\]",
        ),
        (np.zeros((2, 1, 8, 9), np.float32), r"got \[2, 1, 8, 9\]"),
        (np.array([["a"]]), r"expected \[-1, 1, 8, 8\] \(float32\), got \[1, 1\] \(<U1\)"),
        ({"y": np.zeros((1, 1, 8, 8))}, r"missing \['x'\].*unknown \['y'\]"),
        ([[1, 2], [3]], "not an array"),
    ],
    ids=["rank", "dim", "dtype-string", "wrong-name", "ragged"],
)
def test_bad_inputs_name_the_input_and_the_shapes(
    digits_crate_path: Path, value: object, message: str
) -> None:
    model = mc.load(digits_crate_path)
    with pytest.raises(InputError, match=message):
        model.predict(value)


def test_safe_casts_are_made_for_the_caller(digits_crate_path: Path) -> None:
    model = mc.load(digits_crate_path)
    as_float64 = model.predict(np.ones((1, 1, 8, 8), dtype=np.float64))["output"]
    as_int = model.predict(np.ones((1, 1, 8, 8), dtype=np.int64))["output"]
    np.testing.assert_array_equal(as_float64, as_int)


def test_float_input_for_an_integer_signature_is_refused() -> None:
    from modelcrate.manifest import TensorSpec
    from modelcrate.model import conform

    spec = TensorSpec(name="ids", dtype="int64", shape=[-1])
    assert conform(spec, np.array([1, 2], dtype=np.int32)).dtype == np.int64
    with pytest.raises(InputError, match="ids"):
        conform(spec, np.array([1.5]))


def test_unknown_references_are_clear(registry: mc.Registry, digits_crate_path: Path) -> None:
    with pytest.raises(NotFound, match="no model named 'nothing'"):
        mc.load("nothing@1.0.0", registry=registry)
    registry.publish(digits_crate_path)
    with pytest.raises(NotFound, match="no such version"):
        mc.load("digits@9.9.9", registry=registry)
    with pytest.raises(NotFound, match="no alias 'prod'"):
        mc.load("digits@prod", registry=registry)


def test_packing_needs_example_inputs_and_a_known_source(mlp: MLP, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="example_inputs"):
        mc.pack(mlp, name="mlp", version="1.0.0")
    with pytest.raises(UsageError, match="cannot pack a dict"):
        mc.pack({}, name="x", version="1.0.0")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x01\x02 not a model")
    with pytest.raises(PackError, match="not a valid ONNX model"):
        mc.pack(garbage, name="x", version="1.0.0")
    with pytest.raises(mc.BadReference):
        mc.pack(garbage, name="X!", version="1.0.0")


def test_parity_failure_stops_packing(mlp: MLP) -> None:
    with pytest.raises(PackError, match="differs from torch"):
        mc.pack(
            mlp,
            example_inputs=(torch.randn(2, 20),),
            name="mlp",
            version="1",
            parity_tolerance=-1.0,
        )


def test_loading_needs_no_torch(digits_crate_path: Path, tmp_path: Path) -> None:
    """A fresh interpreter loads and runs the crate without importing torch."""
    code = (
        "import sys, numpy as np, modelcrate as mc\n"
        f"m = mc.load({str(digits_crate_path)!r})\n"
        "print(m.predict(np.zeros((1, 1, 8, 8), np.float32))['output'].shape)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 10)"


def test_to_torch_without_a_pt2_artifact_converts_the_onnx(tmp_path: Path) -> None:
    crate = mc.pack(make_onnx(tmp_path / "m.onnx"), name="tiny", version="1.0.0")
    module = mc.load(crate).to_torch()  # the ONNX rebuilt in torch, checked against ORT
    x = np.ones((3, 4), np.float32)
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, mc.load(crate).predict(x)["y"], atol=1e-5)
