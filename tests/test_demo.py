"""`make demo`'s script runs end to end: train, pack, publish, load, serve, predict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, free_port


@pytest.mark.slow
def test_demo_script_serves_and_predicts(home: Path) -> None:
    port = free_port()
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "digits" / "demo.py"),
            "--port",
            str(port),
            "--serve-seconds",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"6. serving digits@prod at http://127.0.0.1:{port}" in result.stdout
    assert "POST" in result.stdout and "true:" in result.stdout
    assert (home / "registry.db").is_file()
