"""Convert a crate to another format: ORT format (.ort), ORT-optimized ONNX, TFLite
(from a crate's Keras or SavedModel artifact, with the TFLite converter), or PyTorch
(a trainable module rebuilt from the ONNX artifact, packed as .pt2 + safetensors).

Every converted artifact is loaded back and compared with the original on the
crate's samples (or seeded random inputs) before it is accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modelcrate.errors import PackError, UsageError
from modelcrate.optimize.derived import Derived, Parameters

if TYPE_CHECKING:
    from modelcrate.model import Model

TARGETS = ("ort", "onnx", "tflite", "torch")


def apply(parent: Model, workdir: Path, *, to: str) -> Derived:
    """``parent`` converted to ``to`` (``ort``, ``onnx`` = ORT-optimized ONNX, ``tflite``,
    ``torch``)."""
    if to == "torch":
        return _to_torch(parent)
    path, suffix = convert_artifact(parent, to, workdir)
    return Derived(path, suffix, {"to": to})


def _to_torch(parent: Model) -> Derived:
    """The parent as a torch module (already checked against ONNX Runtime by to_torch);
    lineage records the tools that made it."""
    import onnx
    import torch

    if parent.manifest.artifact("torch-export") is not None:
        raise UsageError(f"{parent.manifest.ref} already has a torch-export (.pt2) artifact")
    module = parent.to_torch()
    source = parent.manifest.artifact("onnx")
    parameters: Parameters = {
        "to": "torch",
        "from": "onnx",
        "source_framework": parent.manifest.framework.name if parent.manifest.framework else "",
        "converter": "modelcrate.runtimes.from_onnx",
        "onnx_opset": source.opset if source is not None and source.opset else 0,
        "torch": torch.__version__.split("+")[0],
        "onnx": onnx.__version__,
    }
    return Derived(module, "torch", parameters)


def convert_artifact(model: Model, target: str, workdir: Path) -> tuple[Path, str]:
    """Write the converted artifact; returns (path, version suffix)."""
    import onnxruntime as ort

    if target == "tflite":
        return _to_tflite(model, workdir), "tflite"
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
        ort.InferenceSession(
            model.crate.read_bytes(artifact.path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT reports unsupported ops as untyped errors
        raise PackError(
            f"conversion to {target} failed: {str(exc).splitlines()[0][:300]}"
        ) from None
    return path, suffix


def _to_tflite(model: Model, workdir: Path) -> Path:
    """TFLite from the crate's TensorFlow artifact (a torch or ONNX-only crate has none)."""
    from modelcrate.pack.keras import import_tensorflow
    from modelcrate.pack.saved_model import write_saved_model

    saved = write_saved_model(model.crate, workdir / "saved_model", "TFLite conversion")
    tf, _, _ = import_tensorflow()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    try:
        flatbuffer = converter.convert()
    except Exception as exc:  # the converter reports unsupported ops as ConverterError
        raise PackError(f"TFLite conversion failed: {str(exc).splitlines()[0][:300]}") from None
    path = workdir / "model.tflite"
    path.write_bytes(flatbuffer)
    return path
