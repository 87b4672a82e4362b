"""Reuse: fine-tuning with frozen backbones, feature extraction, pipelines, ensembles,
distillation and lineage, through the Python API, the CLI and the server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors.numpy import load as load_safetensors
from torch import nn
from train import DigitsCNN, digits_data

import modelcrate as mc
from conftest import Digits, Server, run_cli


@pytest.fixture(scope="module")
def half_trained() -> DigitsCNN:
    """A digits CNN that has only ever seen the classes 0-4."""
    x_train, _, y_train, _ = digits_data()
    keep = y_train < 5
    torch.manual_seed(0)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.from_numpy(x_train[keep]), torch.from_numpy(y_train[keep])
    for _ in range(15):
        for start in range(0, len(x), 64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(
                model(x[start : start + 64]), y[start : start + 64]
            ).backward()
            optimizer.step()
    return model.eval()


@pytest.fixture
def base(half_trained: DigitsCNN, registry: mc.Registry) -> mc.Registry:
    """digits@1.0.0 (classes 0-4 only) published, with prod pointing at it."""
    _, x_test, _, _ = digits_data()
    crate = mc.pack(
        half_trained,
        example_inputs=(torch.from_numpy(x_test[:32]),),
        name="digits",
        version="1.0.0",
        labels=[str(i) for i in range(10)],
    )
    registry.publish(crate)
    registry.set_alias("digits", "prod", "1.0.0")
    return registry


def accuracy(model: mc.Model, x: np.ndarray, y: np.ndarray) -> float:
    return float((model.predict(x)["output"].argmax(axis=1) == y).mean())


def test_finetuning_a_frozen_backbone_learns_held_out_classes_and_changes_only_the_head(
    base: mc.Registry,
) -> None:
    x_train, x_test, y_train, y_test = digits_data()
    held_out = y_test >= 5
    before = accuracy(mc.load("digits@prod", registry=base), x_test[held_out], y_test[held_out])
    child = mc.finetune(
        "digits@prod",
        data=(x_train, y_train),
        head=10,
        epochs=10,
        lr=1e-2,
        freeze="backbone",
        version="2.0.0",
        registry=base,
    )
    mc.publish(child, registry=base)
    after = accuracy(mc.load("digits@2.0.0", registry=base), x_test[held_out], y_test[held_out])
    assert before < 0.05 and after > before + 0.4, (before, after)

    parent_weights = load_safetensors(base.get("digits@1.0.0").read_bytes("model.safetensors"))
    child_weights = load_safetensors(base.get("digits@2.0.0").read_bytes("model.safetensors"))
    assert set(parent_weights) == set(child_weights)
    for name, tensor in parent_weights.items():
        same = tensor.tobytes() == child_weights[name].tobytes()
        assert same == (not name.startswith("fc2.")), name  # backbone bit-identical, head new

    manifest = child.manifest
    assert manifest.lineage is not None and manifest.lineage.operation == "finetune"
    assert manifest.lineage.parents[0].digest == base.resolve("digits@1.0.0").digest
    params = manifest.lineage.parameters
    assert str(params["data"]).startswith("sha256:") and params["freeze"] == "backbone"
    assert params["examples"] == len(x_train) and params["frozen_tensors"] == 4
    assert manifest.metrics["accuracy"] > manifest.metrics["accuracy_before"]


def test_to_torch_names_parameters_and_freezes_by_prefix(base: mc.Registry) -> None:
    model = mc.load("digits@prod", registry=base)
    frozen = model.to_torch(trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())
    partly = model.to_torch(freeze=["conv", "fc1"])
    trainable = sorted(n for n, p in partly.named_parameters() if p.requires_grad)
    assert trainable == ["fc2.bias", "fc2.weight"]
    backbone = model.to_torch(freeze="backbone")
    assert sorted(n for n, p in backbone.named_parameters() if p.requires_grad) == trainable
    with pytest.raises(mc.UsageError, match="matches no parameter; modules: conv, fc1, fc2"):
        model.to_torch(freeze="decoder")


def test_finetune_and_lineage_from_the_cli(base: mc.Registry, tmp_path: Path) -> None:
    x_train, _, y_train, _ = digits_data()
    data = tmp_path / "train.npz"
    np.savez(data, x=x_train[:400], y=y_train[:400])
    result = run_cli(
        "finetune",
        "digits@prod",
        "--data",
        str(data),
        "--epochs",
        "3",
        "--name",
        "digits",
        "--version",
        "2.0.0",
        "--registry",
        str(base.root),
    )
    assert result.returncode == 0, result.stderr
    assert "published digits@2.0.0" in result.stdout
    run_cli(
        "optimize", "digits@2.0.0", "--quantize", "int8", "--registry", str(base.root), check=True
    )

    up = json.loads(
        run_cli(
            "lineage", "digits@2.0.0-int8", "--json", "--registry", str(base.root), check=True
        ).stdout
    )
    assert [a["ref"] for a in up["ancestors"]] == ["digits@2.0.0", "digits@1.0.0"]
    assert up["operation"] == "quantize"
    down = run_cli("lineage", "digits@1.0.0", "--registry", str(base.root), check=True).stdout
    assert "digits@2.0.0" in down and "finetune" in down and "digits@2.0.0-int8" in down
    missing = run_cli(
        "finetune",
        "digits@prod",
        "--data",
        str(tmp_path / "none.npz"),
        "--registry",
        str(base.root),
    )
    assert missing.returncode != 0 and "Traceback" not in missing.stderr


def test_feature_extractor_returns_the_named_layer(
    digits: Digits, registry: mc.Registry, digits_crate_path: Path
) -> None:
    registry.publish(digits_crate_path)
    features = mc.feature_extractor("digits@1.0.0", layer="fc1", registry=registry)
    got = next(iter(features.predict(digits.x_test[:5]).values()))
    with torch.no_grad():
        x = torch.from_numpy(digits.x_test[:5])
        expected = digits.model.fc1(torch.relu(digits.model.conv(x)).flatten(1)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert features.manifest.signature.outputs[0].shape == [-1, 64]
    assert features.manifest.lineage is not None
    assert features.manifest.lineage.operation == "feature-extractor"
    mc.publish(features, registry=registry)
    assert registry.resolve("digits-features@1.0.0-fc1")
    modules = {layer.module for layer in mc.layers(mc.load("digits@1.0.0", registry=registry))}
    assert {"conv", "fc1", "fc2"} <= modules
    with pytest.raises(mc.UsageError, match="no layer 'decoder'; torch modules: conv, fc1, fc2"):
        mc.feature_extractor("digits@1.0.0", layer="decoder", registry=registry)


class Prep(nn.Module):
    """Raw 8x8 pixel rows (0..16) to the [N, 1, 8, 8] images in [0, 1] the CNN expects."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels / 16.0).reshape(-1, 1, 8, 8)


@pytest.fixture
def composed(registry: mc.Registry, digits_crate_path: Path, digits_v2_path: Path) -> mc.Registry:
    registry.publish(digits_crate_path)
    registry.publish(digits_v2_path)
    registry.set_alias("digits", "prod", "1.0.0")
    raw = np.zeros((4, 64), np.float32)
    registry.publish(
        mc.pack(
            Prep(),
            example_inputs=(torch.from_numpy(raw),),
            name="prep",
            version="1",
            input_names=["pixels"],
        )
    )
    return registry


def test_a_pipeline_equals_its_members_in_sequence_and_pins_them(
    composed: mc.Registry, digits: Digits
) -> None:
    raw = (digits.x_test[:16].reshape(16, 64) * 16.0).astype(np.float32)
    pipe = mc.pipeline(
        "prep@1", "digits@prod", name="digits-e2e", version="1.0.0", registry=composed
    )
    mc.publish(pipe, registry=composed)
    composed.set_alias("digits", "prod", "1.1.0")  # pinned by digest: the pipeline is unmoved
    model = mc.load("digits-e2e@1.0.0", registry=composed)
    assert model.manifest.signature.inputs[0].name == "pixels"
    staged = mc.load("prep@1", registry=composed).predict(raw)["output"]
    expected = mc.load("digits@1.0.0", registry=composed).predict(staged)["output"]
    np.testing.assert_array_equal(model.predict(raw)["output"], expected)
    assert model.labels == [str(i) for i in range(10)]

    with pytest.raises(mc.UsageError, match=r"digits@1.0.0 outputs 'output' \[-1, 10\]"):
        mc.pipeline("digits@1.0.0", "prep@1", name="backwards", version="1", registry=composed)
    with pytest.raises(mc.RegistryError, match="member of digits-e2e@1.0.0"):
        composed.delete("prep@1")


def test_an_ensemble_equals_the_mean_of_its_members(composed: mc.Registry, digits: Digits) -> None:
    for seed in (1, 2):
        torch.manual_seed(seed)
        other = DigitsCNN().eval()
        composed.publish(
            mc.pack(
                other,
                example_inputs=(torch.from_numpy(digits.x_test[:8]),),
                name="digits",
                version=f"0.{seed}.0",
                labels=[str(i) for i in range(10)],
            )
        )
    members = ["digits@1.0.0", "digits@0.1.0", "digits@0.2.0"]
    x = digits.x_test[:20]
    outputs = [mc.load(m, registry=composed).predict(x)["output"] for m in members]
    mean = mc.ensemble(members, combine="mean", name="vote", version="1.0.0", registry=composed)
    mc.publish(mean, registry=composed)
    np.testing.assert_allclose(
        mc.load("vote@1.0.0", registry=composed).predict(x)["output"],
        np.mean(outputs, axis=0),
        rtol=1e-6,
    )
    votes = mc.ensemble(members, combine="vote", name="vote", version="2.0.0", registry=composed)
    shares = mc.Model(votes, registry=composed).predict(x)["output"]
    expected = np.mean([np.eye(10)[o.argmax(axis=1)] for o in outputs], axis=0)
    np.testing.assert_allclose(shares, expected, rtol=1e-6)
    with pytest.raises(mc.UsageError, match="inputs"):
        mc.ensemble(["digits@1.0.0", "prep@1"], name="bad", version="1", registry=composed)


def test_a_composition_needs_its_members_in_the_registry(
    composed: mc.Registry, tmp_path: Path
) -> None:
    pipe = mc.pipeline("prep@1", "digits@1.0.0", name="e2e", version="1", registry=composed)
    with (
        mc.Registry.open(tmp_path / "elsewhere") as other,
        pytest.raises(mc.NotFound, match="not in this registry; publish it first"),
    ):
        other.publish(pipe)


def test_a_pipeline_serves_as_one_oip_model(
    composed: mc.Registry, digits: Digits, start_server: Callable[..., Server]
) -> None:
    mc.publish(
        mc.pipeline(
            "prep@1", "digits@1.0.0", name="digits-e2e", version="1.0.0", registry=composed
        ),
        registry=composed,
    )
    raw = (digits.x_test[:3].reshape(3, 64) * 16.0).astype(np.float32)
    expected = mc.load("digits-e2e@1.0.0", registry=composed).predict(raw)["output"]
    server = start_server(composed.root, "digits-e2e@1.0.0")
    body = {
        "inputs": [
            {"name": "pixels", "shape": [3, 64], "datatype": "FP32", "data": raw.ravel().tolist()}
        ]
    }
    answer = httpx.post(f"{server.url}/v2/models/digits-e2e/infer", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    got = np.asarray(answer.json()["outputs"][0]["data"], np.float32).reshape(3, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


class Student(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_distilling_a_smaller_student_agrees_with_the_teacher(
    digits: Digits, registry: mc.Registry, digits_crate_path: Path
) -> None:
    registry.publish(digits_crate_path)
    x_train, _, _, _ = digits_data()  # used without labels
    torch.manual_seed(0)
    student = mc.distill("digits@1.0.0", Student(), x_train, epochs=30, lr=5e-3, registry=registry)
    metrics = student.manifest.metrics
    assert metrics["agreement"] > 0.85 and metrics["parameter_ratio"] < 0.1, metrics
    mc.publish(student, registry=registry)
    graph = mc.lineage("digits@1.0.0", registry=registry)
    assert [(d.ref, d.operation) for d in graph.descendants] == [
        ("digits-student@1.0.0", "distill")
    ]
    teacher = mc.load("digits@1.0.0", registry=registry).predict(digits.x_test)["output"]
    pupil = mc.load("digits-student@1.0.0", registry=registry).predict(digits.x_test)["output"]
    assert (teacher.argmax(1) == pupil.argmax(1)).mean() > 0.8
