"""Convert a crate to another format: ORT format (.ort) or ORT-optimized ONNX.

Every converted artifact is loaded back and compared with the original on the
crate's samples (or seeded random inputs) before it is accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modelcrate.errors import PackError, RuntimeUnavailable, UsageError

if TYPE_CHECKING:
    from modelcrate.model import Model

TARGETS = ("ort", "onnx", "tflite")


def convert_onnx(model: Model, target: str, workdir: Path) -> tuple[Path, str]:
    """Write the converted artifact; returns (path, version suffix)."""
    import onnxruntime as ort

    if target == "tflite":
        raise RuntimeUnavailable(
            "converting to TFLite needs the TensorFlow/LiteRT tool chain, which this "
            "release does not install; use --to ort for onnxruntime-mobile"
        )
    if target not in TARGETS:
        raise UsageError(f"--to {target!r}: expected one of {', '.join(TARGETS)}")
    artifact = model.manifest.artifact("onnx")
    if artifact is None or artifact.data_files:
        raise UsageError(f"{model.manifest.ref} needs a self-contained ONNX artifact to convert")
    options = ort.SessionOptions()
    if target == "ort":
        # Basic optimizations only: the .ort file must run on any build (mobile included).
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.add_session_config_entry("session.save_model_format", "ORT")
        path, suffix = workdir / "model.ort", "ort"
    else:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        path, suffix = workdir / "model.onnx", "ortopt"
    options.optimized_model_filepath = str(path)
    try:
        ort.InferenceSession(model.crate.read_bytes(artifact.path), options,
                             providers=["CPUExecutionProvider"])  # fmt: skip
    except Exception as exc:  # ORT reports unsupported ops as untyped errors
        raise PackError(
            f"conversion to {target} failed: {str(exc).splitlines()[0][:300]}"
        ) from None
    return path, suffix
