"""The servers a user would pick instead of ours, each in its own virtualenv (issue 17).

MLServer (Seldon) with a custom ONNX runtime, with and without its adaptive batching, and
KServe's Python model server, both running the same ONNX file with the same onnxruntime
version as ours (`baselines/mlserver_onnx.py`, `baselines/kserve_onnx.py`). The
virtualenvs are made on first use under `benchmarks/.work/venvs/` from the package index
(pinned versions below) and reused; set PEERS=0 to leave the peers out of a run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".work" / "venvs"
PACKAGES = {"mlserver": ["mlserver==1.7.1"], "kserve": ["kserve==0.21.0"]}


def venv_python(name: str) -> Path:
    """The python of peer ``name``'s virtualenv, made (and installed) when missing."""
    root = VENVS / name
    python = root / "bin" / "python"
    stamp = root / ".installed"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
        pins = [f"onnxruntime=={version('onnxruntime')}", f"numpy=={version('numpy')}"]
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *PACKAGES[name],
                *pins,
            ],
            check=True,
        )
        stamp.write_text("\n".join([*PACKAGES[name], *pins]) + "\n")
    return python


def contenders(kind: str, onnx_path: Path, work: Path) -> dict[str, tuple[list[str], str, str]]:
    """Commands (with ``{port}``) serving ``onnx_path`` as model ``kind`` over OIP v2 REST."""
    if os.environ.get("PEERS", "1") == "0":
        return {}
    mlserver, kserve = venv_python("mlserver"), venv_python("kserve")
    baselines = HERE / "baselines"
    ready = "/v2/health/ready"
    mlserver_run = [
        str(mlserver),
        str(baselines / "mlserver_onnx.py"),
        "{port}",
        kind,
        str(onnx_path),
    ]
    return {
        "MLServer 1.7.1": ([*mlserver_run, str(work / f"mlserver-{kind}")], ready, "GET"),
        "MLServer 1.7.1 + adaptive batching": (
            [*mlserver_run, str(work / f"mlserver-batching-{kind}"), "32"],
            ready,
            "GET",
        ),
        "KServe 0.21 Python server": (
            [str(kserve), str(baselines / "kserve_onnx.py"), "{port}", kind, str(onnx_path)],
            ready,
            "GET",
        ),
    }
