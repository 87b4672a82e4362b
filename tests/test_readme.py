"""The README's Python block runs as written (LitServe's tests/unit/test_readme.py habit)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, Digits


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_python_block_runs(
    digits: Digits, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks()
    assert blocks, "README has no python block"
    namespace = {
        "torch_module": digits.model,
        "x": torch.zeros(1, 1, 8, 8),
        "x_numpy": digits.x_test[:4],
    }
    exec(blocks[0], namespace)
    assert set(namespace["y"]) == {"output"}
    assert np.asarray(namespace["y"]["output"]).shape == (4, 10)
    assert (tmp_path / "digits-1.0.0.crate").is_file()
    assert namespace["model"].manifest.version == "1.0.0"
