"""optimize/compare: int8 (dynamic, static), fp16, pruning, each a new version with a report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import modelcrate as mc
from conftest import Digits, run_cli
from modelcrate.errors import PackError, UsageError


@pytest.fixture
def published(registry: mc.Registry, digits_crate_path: Path) -> mc.Registry:
    registry.publish(digits_crate_path)
    return registry


def eval_set(digits: Digits) -> dict[str, np.ndarray]:
    return {"x": digits.x_test[:200], "y": digits.y_test[:200]}


def test_dynamic_int8_is_a_new_traceable_version(published: mc.Registry, digits: Digits) -> None:
    result = mc.optimize("digits@1.0.0", quantize="int8", data=eval_set(digits), registry=published)
    manifest = mc.load("digits@1.0.0-int8", registry=published).manifest
    assert manifest.digest == result.crate.digest
    parent = published.resolve("digits@1.0.0")
    assert manifest.lineage is not None
    assert manifest.lineage.parents[0].digest == parent.digest
    assert manifest.lineage.operation == "quantize"
    assert manifest.lineage.parameters["mode"] == "dynamic"
    assert manifest.artifacts[0].precision == "int8"
    report = manifest.report
    assert report is not None and report.parent == parent.digest and report.data == "user data"
    assert report.size_ratio < 0.5  # fc1 (1024x64) dominates and is int8 now
    assert report.top1_agreement is not None and report.top1_agreement >= 0.97
    assert report.accuracy is not None and report.parent_accuracy is not None
    assert abs(report.accuracy - report.parent_accuracy) <= 0.03
    assert manifest.labels == [str(i) for i in range(10)]
    y = mc.load("digits@1.0.0-int8", registry=published).predict(digits.x_test[:5])["output"]
    assert y.shape == (5, 10)


def test_static_int8_with_calibration_uses_qdq(published: mc.Registry, digits: Digits) -> None:
    import onnx

    result = mc.optimize(
        "digits@1.0.0", quantize="int8", calibrate={"x": digits.x_test[:64]}, registry=published
    )
    assert result.crate.manifest.version == "1.0.0-int8-static"
    graph = onnx.load_from_string(result.crate.read_bytes("model.onnx")).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}
    assert result.report.data == "crate samples"  # no --data: the samples kept at pack time
    assert result.report.top1_agreement is not None and result.report.top1_agreement >= 0.9


def test_fp16_halves_the_weights(published: mc.Registry, digits: Digits) -> None:
    result = mc.optimize("digits@1.0.0", fp16=True, registry=published)
    assert result.crate.manifest.artifacts[0].precision == "fp16"
    assert 0.4 < result.report.size_ratio < 0.6
    assert result.report.max_abs_diff < 1e-2
    model = mc.load("digits@1.0.0-fp16", registry=published)
    assert model.predict(digits.x_test[:3])["output"].dtype == np.float32  # float32 I/O kept


def test_pruning_zeroes_half_the_weights(published: mc.Registry, digits: Digits) -> None:
    result = mc.optimize("digits@1.0.0", prune=0.5, data=eval_set(digits), registry=published)
    assert result.crate.manifest.version == "1.0.0-pruned50"
    assert result.report.sparsity is not None and abs(result.report.sparsity - 0.5) < 0.01
    module = mc.load("digits@1.0.0-pruned50", registry=published).to_torch()
    weight = dict(module.named_parameters())["fc1.weight"]
    assert abs(float((weight == 0).float().mean()) - 0.5) < 0.01


def test_accuracy_floor_refuses_and_publishes_nothing(
    published: mc.Registry, digits: Digits
) -> None:
    before = [v.version for v in published.versions("digits")]
    with pytest.raises(PackError, match="nothing published"):
        mc.optimize(
            "digits@1.0.0",
            prune=0.95,
            data=eval_set(digits),
            max_accuracy_drop=0.001,
            registry=published,
        )
    with pytest.raises(PackError, match="agreement"):
        mc.optimize("digits@1.0.0", prune=0.95, min_agreement=0.9999, registry=published)
    assert [v.version for v in published.versions("digits")] == before


def test_clear_errors(published: mc.Registry, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="exactly one"):
        mc.optimize("digits@1.0.0", registry=published)
    with pytest.raises(UsageError, match="exactly one"):
        mc.optimize("digits@1.0.0", quantize="int8", fp16=True, registry=published)
    with pytest.raises(UsageError, match="only int8"):
        mc.optimize("digits@1.0.0", quantize="int4", registry=published)
    with pytest.raises(UsageError, match="--calibrate only applies"):
        mc.optimize(
            "digits@1.0.0", fp16=True, calibrate={"x": np.zeros((1, 1, 8, 8))}, registry=published
        )
    with pytest.raises(UsageError, match="between 0 and 1"):
        mc.optimize("digits@1.0.0", prune=1.5, registry=published)
    with pytest.raises(UsageError, match="no arrays for inputs"):
        mc.optimize(
            "digits@1.0.0",
            quantize="int8",
            data={"a": np.zeros(2), "b": np.zeros(2)},
            registry=published,
        )


def test_compare_two_versions(published: mc.Registry, digits: Digits) -> None:
    mc.optimize("digits@1.0.0", quantize="int8", registry=published)
    report = mc.compare(
        "digits@1.0.0", "digits@1.0.0-int8", data=eval_set(digits), registry=published
    )
    assert report.samples == 200 and report.size_ratio < 0.5
    assert report.accuracy is not None and report.top1_agreement is not None


def test_cli_optimize_and_compare(
    home: Path, tmp_path: Path, digits_crate_path: Path, digits: Digits
) -> None:
    run_cli("publish", str(digits_crate_path), check=True)
    np.savez(tmp_path / "eval.npz", x=digits.x_test[:100], y=digits.y_test[:100])
    out = json.loads(
        run_cli(
            "optimize",
            "digits@1.0.0",
            "--quantize",
            "int8",
            "--data",
            str(tmp_path / "eval.npz"),
            "--json",
            check=True,
        ).stdout
    )
    assert out["ref"] == "digits@1.0.0-int8" and out["report"]["data"] == "user data"
    table = run_cli(
        "compare",
        "digits@1.0.0",
        "digits@1.0.0-int8",
        "--data",
        str(tmp_path / "eval.npz"),
        check=True,
    ).stdout
    assert "size ratio" in table and "top-1 agreement" in table
    refused = run_cli(
        "optimize",
        "digits@1.0.0",
        "--prune",
        "0.97",
        "--data",
        str(tmp_path / "eval.npz"),
        "--max-accuracy-drop",
        "0.001",
    )
    assert refused.returncode == 1 and "nothing published" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_convert_to_ort_format_loads_back_and_matches(
    published: mc.Registry, digits: Digits
) -> None:
    result = mc.convert("digits@1.0.0", to="ort", registry=published)
    manifest = result.crate.manifest
    assert manifest.version == "1.0.0-ort"
    assert [a.kind for a in manifest.artifacts] == ["ort"]
    assert result.crate.read_bytes("model.ort")[4:8] == b"ORTM"
    assert manifest.lineage is not None and manifest.lineage.parameters == {"to": "ort"}
    assert result.report.max_abs_diff < 1e-4
    x = digits.x_test[:9]
    parent = mc.load("digits@1.0.0", registry=published).predict(x)["output"]
    child = mc.load("digits@1.0.0-ort", registry=published).predict(x)["output"]
    np.testing.assert_allclose(child, parent, atol=1e-5)


def test_convert_to_ort_optimized_onnx(published: mc.Registry) -> None:
    result = mc.convert("digits@1.0.0", to="onnx", registry=published)
    assert result.crate.manifest.version == "1.0.0-ortopt"
    assert result.report.max_abs_diff < 1e-4


def test_convert_errors(published: mc.Registry) -> None:
    with pytest.raises(UsageError, match="TFLite conversion needs a TensorFlow artifact"):
        mc.convert("digits@1.0.0", to="tflite", registry=published)
    with pytest.raises(UsageError, match="expected one of"):
        mc.convert("digits@1.0.0", to="coreml", registry=published)


def test_cli_convert(home: Path, digits_crate_path: Path) -> None:
    run_cli("publish", str(digits_crate_path), check=True)
    out = json.loads(run_cli("convert", "digits@1.0.0", "--to", "ort", "--json", check=True).stdout)
    assert out["ref"] == "digits@1.0.0-ort"
    refused = run_cli("convert", "digits@1.0.0", "--to", "tflite")
    assert refused.returncode == 2 and "TFLite" in refused.stderr
