"""Provenance at pack: a real Git repository (git init, commit, modify) is read with git
itself; credentials never reach the manifest; outside a work tree nothing is recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import modelcrate as mc
from conftest import git_repo, make_onnx, run_cli

REMOTE = "https://user:secret@git.example.com/team/train.git"


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A training repository: one commit on branch 'train', a remote with credentials."""
    path = git_repo(tmp_path / "train", remote=REMOTE)
    (path / "config.yaml").write_text("lr: 0.1\n")
    (path / "models").mkdir()
    (path / "models" / ".keep").write_text("")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "config")
    return path


def test_pack_inside_a_work_tree_records_the_commit_and_flags_a_dirty_tree(
    repo: Path, tmp_path: Path
) -> None:
    model = make_onnx(tmp_path / "m.onnx")
    clean = mc.pack(model, name="tiny", version="1.0.0", source_dir=repo / "models")
    source = clean.manifest.provenance.source  # type: ignore[union-attr]
    assert source.commit == git(repo, "rev-parse", "HEAD")
    assert source.branch == "train" and source.path == "models"
    assert source.remote == "https://git.example.com/team/train.git"
    assert "secret" not in clean.manifest.file_bytes().decode()
    assert not source.dirty and source.changed_files == []

    (repo / "train.py").write_text("print('training harder')\n")  # tracked, modified
    (repo / "notes.txt").write_text("untracked files are not the code that ran\n")
    git(repo, "mv", "config.yaml", "settings.yaml")  # a rename names the new path
    dirty = mc.pack(model, name="tiny", version="1.0.1", source_dir=repo)
    origin = dirty.manifest.provenance
    assert origin is not None and origin.source.dirty
    assert origin.source.changed_files == ["settings.yaml", "train.py"]
    assert origin.source.changed_count == 2
    assert origin.python and origin.platform and origin.packages["onnx"]
    assert origin.command is not None

    # A detached HEAD has no branch; the commit is still recorded.
    git(repo, "checkout", "-q", "--detach")
    detached = mc.pack(model, name="tiny", version="1.0.2", source_dir=repo).manifest
    assert detached.provenance is not None
    assert detached.provenance.source.branch is None
    assert detached.provenance.source.commit == source.commit


def test_cli_pack_in_a_repository_and_inspect_shows_the_source(repo: Path, tmp_path: Path) -> None:
    model = make_onnx(tmp_path / "m.onnx")
    (repo / "train.py").write_text("print('changed')\n")
    packed = run_cli(
        "pack",
        str(model),
        "--name",
        "tiny",
        "--version",
        "1.0.0",
        "-o",
        str(tmp_path / "t.crate"),
        cwd=repo,
    )
    assert packed.returncode == 0, packed.stderr
    shown = run_cli("inspect", str(tmp_path / "t.crate"), check=True).stdout
    commit = git(repo, "rev-parse", "HEAD")
    assert "git.example.com/team/train.git" in shown and "secret" not in shown
    assert commit in shown and "train" in shown
    assert "yes, 1 files: train.py" in shown
    assert "python -m modelcrate pack" in shown  # the command that ran

    as_json = json.loads(run_cli("inspect", str(tmp_path / "t.crate"), "--json").stdout)
    recorded = as_json["manifest"]["provenance"]
    assert recorded["source"]["commit"] == commit and recorded["source"]["dirty"] is True
    assert recorded["command"].startswith("python -m modelcrate pack ")


def test_no_provenance_and_outside_a_work_tree_record_nothing(repo: Path, tmp_path: Path) -> None:
    model = make_onnx(tmp_path / "m.onnx")
    off = run_cli(
        "pack",
        str(model),
        "--name",
        "tiny",
        "--version",
        "1.0.0",
        "--source-dir",
        str(repo),
        "--no-provenance",
        "-o",
        str(tmp_path / "off.crate"),
    )
    assert off.returncode == 0, off.stderr
    assert mc.Crate.open(tmp_path / "off.crate").manifest.provenance is None
    shown = run_cli("inspect", str(tmp_path / "off.crate"), check=True).stdout
    assert "none recorded" in shown

    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    packed = run_cli(
        "pack", str(model), "--name", "tiny", "--version", "1.0.0", "-o", "o.crate", cwd=outside
    )
    assert packed.returncode == 0, packed.stderr
    assert "not inside a Git work tree" in packed.stdout
    assert mc.Crate.open(outside / "o.crate").manifest.provenance is None
    assert (
        mc.pack(model, name="tiny", version="1.0.0", source_dir=outside).manifest.provenance is None
    )

    missing = run_cli(
        "pack",
        str(model),
        "--name",
        "tiny",
        "--version",
        "1.0.0",
        "--source-dir",
        str(tmp_path / "nowhere"),
    )
    assert missing.returncode == 2 and "source directory does not exist" in missing.stderr


def test_secrets_on_the_command_line_are_redacted(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_onnx(tmp_path / "m.onnx")
    argv = [
        str(repo / "train.py"),
        "--api-token",
        "tok-123",
        "--db-password=pw-456",
        "--data",
        "s3://key:sk-789@bucket/train.npz",
        "--epochs",
        "3",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    manifest = mc.pack(model, name="tiny", version="1.0.0", source_dir=repo).manifest
    assert manifest.provenance is not None
    command = manifest.provenance.command
    assert (
        command
        == "train.py --api-token '***' '--db-password=***' --data s3://bucket/train.npz --epochs 3"
    )
    text = manifest.file_bytes().decode()
    assert not any(secret in text for secret in ("tok-123", "pw-456", "sk-789"))


def test_the_same_code_and_command_pack_to_the_same_digest(repo: Path, tmp_path: Path) -> None:
    """Provenance holds no clock: packing twice from one commit stays byte-reproducible."""
    model = make_onnx(tmp_path / "m.onnx")
    first = mc.pack(model, name="tiny", version="1.0.0", source_dir=repo).save(tmp_path / "a.crate")
    second = mc.pack(model, name="tiny", version="1.0.0", source_dir=repo).save(
        tmp_path / "b.crate"
    )
    assert first.read_bytes() == second.read_bytes()
    (repo / "train.py").write_text("print('another run')\n")
    git(repo, "commit", "-qam", "second")
    third = mc.pack(model, name="tiny", version="1.0.0", source_dir=repo)
    assert third.digest != mc.Crate.open(first).digest  # new code, new provenance
