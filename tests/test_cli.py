"""The modelcrate command, run as a real subprocess against a temp MODELCRATE_HOME."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import Digits, make_onnx, run_cli


def test_the_issue_workflow_end_to_end(home: Path, tmp_path: Path, digits: Digits) -> None:
    source = make_onnx(tmp_path / "model.onnx")
    labels = tmp_path / "labels.txt"
    labels.write_text("left\nright\n")
    packed = run_cli(
        "pack",
        str(source),
        "--name",
        "tiny",
        "--version",
        "1.0.0",
        "--labels",
        str(labels),
        "--metric",
        "accuracy=0.9",
        "--tag",
        "demo",
        cwd=tmp_path,
        check=True,
    )
    crate = tmp_path / "tiny-1.0.0.crate"
    assert crate.is_file() and "packed tiny@1.0.0" in packed.stdout

    inspected = json.loads(run_cli("inspect", str(crate), "--json", check=True).stdout)
    assert inspected["manifest"]["labels"] == ["left", "right"]
    assert inspected["manifest"]["metrics"] == {"accuracy": 0.9}
    table = run_cli("inspect", str(crate), check=True).stdout
    assert "signature" in table and "model.onnx" in table

    published = json.loads(run_cli("publish", str(crate), "--json", check=True).stdout)
    assert published["created"] is True and published["digest"] == inspected["digest"]
    assert (
        json.loads(run_cli("publish", str(crate), "--json", check=True).stdout)["created"] is False
    )

    run_cli(
        "pack",
        str(make_onnx(tmp_path / "v2" / "m.onnx", seed=3)),
        "--name",
        "tiny",
        "--version",
        "1.1.0",
        "-o",
        str(tmp_path / "v2.crate"),
        check=True,
    )
    run_cli("publish", str(tmp_path / "v2.crate"), check=True)

    listed = json.loads(run_cli("list", "--json", check=True).stdout)
    assert [(m["name"], m["latest"], m["versions"]) for m in listed] == [("tiny", "1.1.0", 2)]
    shown = json.loads(run_cli("show", "tiny", "--json", check=True).stdout)
    assert [v["version"] for v in shown] == ["1.0.0", "1.1.0"]
    one = json.loads(run_cli("show", "tiny@1.0.0", "--json", check=True).stdout)
    assert one["manifest"]["tags"] == ["demo"]

    run_cli("alias", "set", "tiny", "prod", "1.0.0", check=True)
    run_cli("alias", "set", "tiny", "prod", "1.1.0", check=True)
    history = json.loads(run_cli("alias", "history", "tiny", "prod", "--json", check=True).stdout)
    assert [h["version"] for h in history] == ["1.0.0", "1.1.0"]
    rolled = run_cli("rollback", "tiny", "prod", check=True)
    assert "→ 1.0.0" in rolled.stdout

    x = np.ones((2, 4), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    by_file = json.loads(
        run_cli(
            "predict", "tiny@prod", "--input", str(tmp_path / "x.npy"), "--json", check=True
        ).stdout
    )
    by_data = json.loads(
        run_cli(
            "predict", "tiny@prod", "--data", "[[1,1,1,1],[1,1,1,1]]", "--json", check=True
        ).stdout
    )
    assert by_file == by_data and np.asarray(by_file["y"]).shape == (2, 2)
    human = run_cli("predict", "tiny@prod", "--data", "[[1,1,1,1]]", check=True).stdout
    assert "top label" in human

    run_cli("pull", "tiny@prod", "--to", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out" / "crate.json").is_file()
    verified = json.loads(run_cli("verify", "tiny@1.0.0", "--json", check=True).stdout)
    assert verified["ok"] is True

    assert run_cli("delete", "tiny@1.0.0").returncode == 1  # prod points at it
    run_cli("delete", "tiny@1.0.0", "--force", check=True)
    gc = json.loads(run_cli("gc", "--grace", "0", "--json", check=True).stdout)
    assert gc["blobs_removed"] == 1


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("show", "ghost"), 1, "error: no model named 'ghost'"),
        (("show", "Bad!"), 2, "error: model name 'Bad!'"),
        (("predict", "ghost@prod", "--data", "[1]"), 1, "no model named 'ghost'"),
        (("predict", "ghost@prod"), 2, "exactly one of --input FILE or --data JSON"),
        (("predict", "ghost@prod", "--data", "[1,"), 1, "--data is not valid JSON"),
        (("publish", "missing.crate"), 1, "no such crate file or directory"),
        (("pack", "missing.onnx", "--name", "a", "--version", "1"), 2, "no such model file"),
        (("rollback", "ghost", "prod"), 1, "no model named 'ghost'"),
        (("frobnicate",), 2, "No such command"),
    ],
    ids=[
        "unknown-model",
        "bad-name",
        "predict-unknown",
        "predict-no-input",
        "bad-json",
        "missing-crate",
        "missing-source",
        "rollback-unknown",
        "unknown-cmd",
    ],
)
def test_errors_are_one_clear_line_with_the_right_exit_code(
    home: Path, tmp_path: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_bad_metric_and_pickled_npy_are_refused(home: Path, tmp_path: Path) -> None:
    source = make_onnx(tmp_path / "m.onnx")
    bad_metric = run_cli(
        "pack", str(source), "--name", "a", "--version", "1", "--metric", "acc", cwd=tmp_path
    )
    assert bad_metric.returncode == 2 and "expected name=number" in bad_metric.stderr
    run_cli("pack", str(source), "--name", "tiny", "--version", "1.0.0", cwd=tmp_path, check=True)
    run_cli("publish", str(tmp_path / "tiny-1.0.0.crate"), check=True)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    result = run_cli("predict", "tiny", "--input", str(tmp_path / "objects.npy"))
    assert result.returncode == 1 and "not a readable" in result.stderr
    wrong_shape = run_cli("predict", "tiny", "--data", "[[1, 2, 3]]")
    assert wrong_shape.returncode == 1
    assert "input 'x': expected shape [-1, 4] (float32), got [1, 3] (int64)" in wrong_shape.stderr


def test_debug_shows_the_traceback(home: Path) -> None:
    result = run_cli("--debug", "show", "ghost")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_registry_option_wins_over_modelcrate_home(home: Path, tmp_path: Path) -> None:
    source = make_onnx(tmp_path / "m.onnx")
    run_cli("pack", str(source), "--name", "tiny", "--version", "1.0.0", cwd=tmp_path, check=True)
    other = tmp_path / "other-registry"
    run_cli("publish", str(tmp_path / "tiny-1.0.0.crate"), "--registry", str(other), check=True)
    assert json.loads(run_cli("list", "--json", check=True).stdout) == []
    assert len(json.loads(run_cli("list", "--json", "-r", str(other), check=True).stdout)) == 1


def test_pack_a_pt2_file_from_the_cli(home: Path, tmp_path: Path, digits: Digits) -> None:
    import torch

    program = torch.export.export(
        digits.model, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, str(tmp_path / "model.pt2"))
    run_cli(
        "pack",
        str(tmp_path / "model.pt2"),
        "--name",
        "digits",
        "--version",
        "1.1.0",
        cwd=tmp_path,
        check=True,
    )
    manifest = json.loads(
        run_cli("inspect", str(tmp_path / "digits-1.1.0.crate"), "--json", check=True).stdout
    )["manifest"]
    assert [a["kind"] for a in manifest["artifacts"]] == ["onnx", "torch-export", "safetensors"]
