"""Build a crate's artifact from an ORT-format file (``.ort``, for onnxruntime mobile)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from modelcrate.errors import PackError
from modelcrate.manifest import Artifact, Framework, Signature, TensorSpec
from modelcrate.pack.build import Build

ORT_FILE = "model.ort"
_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}


def is_ort_file(head: bytes) -> bool:
    """ORT format files are flatbuffers with the identifier ``ORTM``."""
    return head[4:8] == b"ORTM"


def build(source: Path, workdir: Path, **_: Any) -> Build:
    """Copy an .ort file; its signature comes from the session ONNX Runtime builds from it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.load_model_format", "ORT")
    try:
        session = ort.InferenceSession(
            source.read_bytes(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise PackError(f"{source.name} is not a loadable ORT-format model: {exc}") from None
    shutil.copyfile(source, workdir / ORT_FILE)
    return Build(
        artifacts=[Artifact(kind="ort", path=ORT_FILE)],
        signature=Signature(
            inputs=[_spec(i) for i in session.get_inputs()],
            outputs=[_spec(o) for o in session.get_outputs()],
        ),
        framework=Framework(name="onnxruntime", version=ort.__version__),
    )


def _spec(value: Any) -> TensorSpec:
    dtype = _TYPES.get(value.type)
    if dtype is None:
        raise PackError(
            f"tensor {value.name!r} has type {value.type}, which crates cannot describe"
        )
    shape = [d if isinstance(d, int) else -1 for d in value.shape]
    return TensorSpec(name=value.name, dtype=dtype, shape=shape)  # type: ignore[arg-type]
