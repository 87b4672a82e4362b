"""``modelcrate diff``: signature changes classified for old clients, files, per-tensor
weight changes (safetensors, ONNX embedded and external data), metrics, parity, lineage and
provenance; the CLI table and --json, mc.diff, and the web UI's comparison page."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch
from msgspec.structs import replace
from torch import nn

import modelcrate as mc
from conftest import Server, git_repo, make_onnx, run_cli
from modelcrate.compatibility import signature_changes
from modelcrate.manifest import Signature, checked


def spec(name: str, shape: list[int], dtype: str = "float32") -> dict[str, object]:
    return {"name": name, "dtype": dtype, "shape": shape}


def signature(inputs: list[dict[str, object]], outputs: list[dict[str, object]]) -> Signature:
    return checked(Signature, {"inputs": inputs, "outputs": outputs})


OLD = signature([spec("x", [-1, 4])], [spec("y", [-1, 2])])


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        (OLD, []),
        (
            signature([spec("x", [-1, 4])], [spec("y", [-1, 2]), spec("z", [-1])]),
            [("added", False)],
        ),
        (signature([spec("x", [-1, 4])], [spec("logits", [-1, 2])]), [("renamed", True)]),
        (
            signature([spec("x", [-1, 4]), spec("mask", [-1])], [spec("y", [-1, 2])]),
            [("added", True)],
        ),
        (signature([spec("x", [-1, 4], "float64")], [spec("y", [-1, 2])]), [("dtype", True)]),
        (signature([spec("x", [-1, 8])], [spec("y", [-1, 2])]), [("shape", True)]),
        (signature([spec("x", [-1, -1])], [spec("y", [-1, 2])]), [("shape", False)]),
        (signature([spec("x", [2, 4])], [spec("y", [-1, 2])]), [("shape", True)]),
        (signature([spec("x", [-1, 4])], [spec("y", [-1, 2, 1])]), [("shape", True)]),
        (signature([spec("x", [-1, 4])], [spec("y", [-1, -1])]), [("shape", True)]),
        (signature([spec("x", [-1, 4])], [spec("y", [1, 2])]), [("shape", False)]),
        (
            signature([spec("x", [-1, 4])], [spec("z", [-1, 2], "int64")]),
            [("removed", True), ("added", False)],
        ),
    ],
    ids=[
        "same",
        "output-added",
        "output-renamed",
        "input-added",
        "dtype",
        "fixed-dim",
        "input-widened",
        "input-fixed",
        "rank",
        "output-widened",
        "output-narrowed",
        "output-replaced",
    ],
)
def test_signature_changes_are_classified_for_old_clients(
    new: Signature, expected: list[tuple[str, bool]]
) -> None:
    assert [(c.change, c.breaking) for c in signature_changes(OLD, new)] == expected


class Net(nn.Module):
    def __init__(self, width: int = 10) -> None:
        super().__init__()
        self.body = nn.Linear(64, 32)
        self.head = nn.Linear(32, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


@pytest.fixture
def versions(registry: mc.Registry, tmp_path: Path) -> mc.Registry:
    """digits 1.0.0; 1.1.0 with one head weight changed; 2.0.0 with 12 classes; 1.0.0-fp16."""
    torch.manual_seed(0)
    net, x = Net(), torch.randn(4, 64)
    repo = git_repo(tmp_path / "train")
    registry.publish(
        mc.pack(
            net,
            example_inputs=(x,),
            name="digits",
            version="1.0.0",
            metrics={"acc": 0.9},
            source_dir=repo,
        )
    )
    with torch.no_grad():
        net.head.weight[3, 5] += 0.5
    registry.publish(
        mc.pack(
            net,
            example_inputs=(x,),
            name="digits",
            version="1.1.0",
            metrics={"acc": 0.92},
            source_dir=repo,
        )
    )
    registry.publish(
        mc.pack(Net(12), example_inputs=(x,), name="digits", version="2.0.0", source_dir=repo)
    )
    mc.optimize("digits@1.0.0", fp16=True, registry=registry)
    return registry


def test_diff_names_the_one_changed_weight_and_the_metric(versions: mc.Registry) -> None:
    result = mc.diff("digits@1.0.0", "digits@1.1.0", registry=versions)
    assert result.signature == [] and not result.breaking
    tensors = result.tensors
    assert tensors.format == "safetensors" and tensors.compared == 4 and tensors.unchanged == 3
    (change,) = tensors.changes
    assert change.name == "head.weight" and change.change == "values"
    assert change.max_abs_delta == pytest.approx(0.5, abs=1e-6)
    assert change.changed_fraction == pytest.approx(1 / 320)
    assert set(result.files["changed"]) == {"model.onnx", "model.pt2", "model.safetensors"}
    (metric,) = result.metrics
    assert (metric.name, metric.a, metric.b) == ("acc", 0.9, 0.92)
    assert metric.change == pytest.approx(0.02)
    assert result.provenance["a"]["source"]["branch"] == "train"
    assert result.provenance["changed"] == {}  # same code, same command


def test_diff_flags_breaking_outputs_and_reshaped_tensors(versions: mc.Registry) -> None:
    result = mc.diff("digits@1.0.0", "digits@2.0.0", registry=versions)
    (breaking,) = result.breaking
    assert breaking.describe() == "output 'output' shape [-1, 10] -> [-1, 12]"
    reshaped = {c.name: c for c in result.tensors.changes if c.change == "shape"}
    assert set(reshaped) == {"head.weight", "head.bias"}
    assert reshaped["head.weight"].shape_b == [12, 32]


def test_diff_of_an_optimized_child_shows_lineage_and_its_report(versions: mc.Registry) -> None:
    result = mc.diff("digits@1.0.0", "digits@1.0.0-fp16", registry=versions)
    assert result.lineage["b_derives_from_a"] and result.lineage["b"]["operation"] == "fp16"
    figures = {d.name: d for d in result.parity}
    assert figures["report size_ratio"].a is None and figures["report size_ratio"].b
    assert result.signature == []  # fp16 keeps the float32 interface


def test_cli_diff_table_and_json(versions: mc.Registry) -> None:
    where = ["--registry", str(versions.root)]
    table = run_cli("diff", "digits@1.0.0", "digits@2.0.0", *where, check=True).stdout
    assert "BREAKING for clients of digits@1.0.0" in table
    assert "head.weight" in table and "[12, 32]" in table
    as_json = json.loads(
        run_cli("diff", "digits@1.0.0", "digits@1.1.0", *where, "--json", check=True).stdout
    )
    assert as_json["breaking"] is False and as_json["identical"] is False
    assert [c["name"] for c in as_json["tensors"]["changes"]] == ["head.weight"]
    assert as_json["metrics"] == [
        {"name": "acc", "a": 0.9, "b": 0.92, "change": pytest.approx(0.02)}
    ]
    same = run_cli("diff", "digits@1.0.0", "digits@1.0.0", *where, check=True).stdout
    assert "identical" in same
    missing = run_cli("diff", "digits@1.0.0", "digits@9.9.9", *where)
    assert missing.returncode == 1 and "no such version" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize("external", [None, "tiny.onnx.data"], ids=["embedded", "external"])
def test_onnx_weights_compared_chunk_by_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, external: str | None
) -> None:
    """A weight spread over several chunks, changed only in the last: found, and measured."""
    import onnx
    from onnx import numpy_helper

    from modelcrate.diff import tensors as tensor_diff

    monkeypatch.setattr(tensor_diff, "CHUNK_ELEMENTS", 3)
    crates = []
    for version, bump in (("1.0.0", 0.0), ("1.1.0", 0.25)):
        source = make_onnx(tmp_path / version / "tiny.onnx")
        model = onnx.load(str(source))
        weight = numpy_helper.to_array(model.graph.initializer[0]).copy()  # 'W', 4 x 2
        weight[3, 1] += bump
        model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "W"))
        if external:
            onnx.save_model(
                model, str(source), save_as_external_data=True, location=external, size_threshold=0
            )
        else:
            onnx.save_model(model, str(source))
        crates.append(mc.pack(source, name="tiny", version=version))
    result = mc.diff(*crates)
    assert result.tensors.format == "onnx" and result.tensors.unchanged == 1
    (change,) = result.tensors.changes
    assert change.name == "W" and change.changed_fraction == pytest.approx(1 / 8)
    assert change.max_abs_delta == pytest.approx(0.25)


def test_diff_between_crate_files_and_different_code(tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "train")
    paths = []
    for version in ("1.0.0", "1.1.0"):
        (repo / "train.py").write_text(f"version = {version!r}\n")
        subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
        subprocess.run(["git", "-C", str(repo), "commit", "-qm", version], check=True)
        model = make_onnx(tmp_path / version / "m.onnx", seed=1 if version == "1.1.0" else 0)
        crate = mc.pack(model, name="tiny", version=version, source_dir=repo)
        paths.append(crate.save(tmp_path / f"tiny-{version}.crate"))
    result = mc.diff(*paths)
    assert set(result.provenance["changed"]) == {"commit"}
    assert {c.name for c in result.tensors.changes} == {"W", "b"}
    shown = run_cli("diff", str(paths[0]), str(paths[1]), check=True).stdout
    assert "commit" in shown and "provenance" in shown


def test_the_ui_comparison_page_shows_the_same_diff(
    versions: mc.Registry, start_server: Callable[..., Server]
) -> None:
    server = start_server(versions.root)
    page = httpx.get(f"{server.url}/ui/models/digits/compare?a=1.0.0&b=2.0.0", timeout=30)
    assert page.status_code == 200, page.text
    text = page.text
    assert "breaking for clients of 1.0.0" in text
    assert "head.weight" in text and "[12, 32]" in text
    assert "4 tensors in both" in text
    fine = httpx.get(f"{server.url}/ui/models/digits/compare?a=1.0.0&b=1.1.0", timeout=30).text
    assert "Signature</h2>" in fine and "unchanged" in fine and "1 changed, 3 unchanged" in fine
    commit = versions.manifest("digits@1.0.0").provenance.source.commit  # type: ignore[union-attr]
    version_page = httpx.get(f"{server.url}/ui/models/digits/1.0.0", timeout=30).text
    assert 'id="provenance"' in version_page and str(commit) in version_page


def test_bfloat16_safetensors_are_measured(tmp_path: Path) -> None:
    """numpy has no bfloat16: such weights are widened to float32 chunk by chunk."""
    from safetensors.torch import save_file

    from modelcrate.crate import file_entry

    torch.manual_seed(0)
    net, x = Net(), torch.randn(2, 64)
    crate = mc.pack(net, example_inputs=(x,), name="digits", version="1.0.0", provenance=False)
    directories = []
    for version, bump in (("1.0.0", 0.0), ("1.1.0", 0.5)):
        directory = crate.unpack(tmp_path / version)
        weights = {k: v.to(torch.bfloat16).clone() for k, v in net.state_dict().items()}
        weights["head.weight"][2, 7] += bump
        save_file(weights, str(directory / "model.safetensors"))
        files = [
            file_entry(directory / f.path, f.path) if f.path == "model.safetensors" else f
            for f in crate.manifest.files
        ]
        manifest = replace(crate.manifest, files=files, version=version)
        (directory / "crate.json").write_bytes(manifest.file_bytes())
        directories.append(directory)
    result = mc.diff(*directories)
    (change,) = result.tensors.changes
    assert change.name == "head.weight" and change.dtype_a == "bfloat16"
    assert change.max_abs_delta == pytest.approx(0.5, abs=0.02)  # bfloat16 rounding
    assert result.tensors.unchanged == 3
