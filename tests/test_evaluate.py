"""`modelcrate eval` / `mc.evaluate`: accuracy (or error) and latency of a version on a data
set, kept in the registry's history with the time and the data's fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import modelcrate as mc
from conftest import Digits, make_onnx, run_cli
from modelcrate.errors import InputError, UsageError


def test_eval_records_accuracy_and_latency_per_version(
    digits: Digits, digits_crate_path: Path, digits_v2_path: Path, tmp_path: Path, home: Path
) -> None:
    run_cli("publish", str(digits_crate_path), check=True)
    run_cli("publish", str(digits_v2_path), check=True)
    np.savez(tmp_path / "test.npz", x=digits.x_test, y=digits.y_test)
    results = {}
    for version in ("1.0.0", "1.1.0"):
        done = run_cli(
            "eval", f"digits@{version}", "--data", str(tmp_path / "test.npz"), "--json", check=True
        )
        results[version] = json.loads(done.stdout)
    for version, result in results.items():
        scores = mc.load(f"digits@{version}").predict(digits.x_test)["output"]
        assert result["accuracy"] == pytest.approx(
            float((scores.argmax(1) == digits.y_test).mean())
        )
        assert result["samples"] == len(digits.y_test) and result["recorded"] is True
        assert 0 < result["latency_ms_p50"] <= result["latency_ms_p99"]
        assert result["throughput_batch32"] > 0
    assert results["1.0.0"]["data"] == results["1.1.0"]["data"]  # the same data set
    assert results["1.0.0"]["data"].startswith("sha256:")

    history = mc.Registry.open().evaluations("digits")
    assert [e.version for e in history] == ["1.0.0", "1.1.0"]
    assert history[0].metrics["accuracy"] == pytest.approx(results["1.0.0"]["accuracy"])
    shown = json.loads(run_cli("show", "digits@1.1.0", "--json", check=True).stdout)
    assert [e["version"] for e in shown["evaluations"]] == ["1.1.0"]
    table = run_cli("show", "digits", check=True).stdout
    assert "evaluations" in table and "accuracy" in table
    assert "eval" in [e.action for e in mc.Registry.open().audit("digits")]
    plain = run_cli("eval", "digits@1.0.0", "--data", str(tmp_path / "test.npz"), "--no-record")
    assert plain.returncode == 0 and "accuracy" in plain.stdout and "not recorded" in plain.stdout
    assert len(mc.Registry.open().evaluations("digits")) == 2


def test_float_labels_give_errors_and_bad_data_is_refused(tmp_path: Path) -> None:
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(mc.pack(make_onnx(tmp_path / "m.onnx", width=1), name="tiny", version="1.0.0"))
    x = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    truth = mc.load("tiny@1.0.0", registry=registry).predict(x)["y"]
    y = truth + 0.5
    result = mc.evaluate("tiny@1.0.0", {"x": x, "y": y}, registry=registry, record=False)
    assert result.metrics["mse"] == pytest.approx(0.25) and result.metrics["mae"] == pytest.approx(
        0.5
    )
    assert result.recorded is None and registry.evaluations("tiny") == []
    with pytest.raises(InputError, match="different numbers of rows"):
        mc.evaluate("tiny@1.0.0", {"x": x, "y": y[:10]}, registry=registry)
    with pytest.raises(InputError, match="integer labels need class scores"):
        mc.evaluate("tiny@1.0.0", {"x": x, "y": np.zeros(50, np.int64)}, registry=registry)
    with pytest.raises(UsageError, match="no arrays for inputs"):
        mc.evaluate("tiny@1.0.0", {"a": x, "b": x}, registry=registry)
    bad = run_cli(
        "eval",
        "tiny@1.0.0",
        "--data",
        str(tmp_path / "missing.npz"),
        "--registry",
        str(registry.root),
    )
    assert bad.returncode == 2 and "no such array file" in bad.stderr
