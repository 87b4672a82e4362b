"""Convert a crate to another format: ORT format (.ort), ORT-optimized ONNX, PyTorch.

Every converted artifact is loaded back and compared with the original on the
crate's samples (or seeded random inputs) before it is accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelcrate.errors import PackError, RuntimeUnavailable, UsageError

if TYPE_CHECKING:
    from modelcrate.model import Model

TARGETS = ("ort", "onnx", "tflite")
TORCH_TOLERANCE = 1e-4


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


def onnx_to_torch(model: Model) -> Any:
    """A trainable torch module rebuilt from the ONNX artifact with onnx2torch, checked
    against ONNX Runtime on the crate's samples (or random inputs)."""
    import onnx
    from onnx import version_converter

    try:
        from onnx2torch import convert
    except ImportError:
        raise RuntimeUnavailable(
            f"{model.manifest.ref} has no .pt2 artifact; rebuilding it from ONNX needs "
            "onnx2torch: pip install 'modelcrate[torch]'"
        ) from None
    import torch

    artifact = model.manifest.artifact("onnx")
    if artifact is None:
        raise UsageError(f"{model.manifest.ref} has neither a .pt2 nor an ONNX artifact")
    proto = onnx.load_from_string(model.crate.read_bytes(artifact.path))
    try:
        # onnx2torch knows opsets up to 17, and not Reshape's allowzero=1, which the torch
        # exporter always sets; it only matters for a literal 0 in the target shape, and
        # the parity check below catches any difference.
        proto = version_converter.convert_version(proto, 17)
        for node in proto.graph.node:
            if node.op_type == "Reshape":
                for attribute in [a for a in node.attribute if a.name == "allowzero"]:
                    node.attribute.remove(attribute)
        module = convert(proto)
    except Exception as exc:  # onnx2torch raises NotImplementedError and others
        raise PackError(f"onnx2torch cannot convert {model.manifest.ref}: {exc}") from None
    _promote_initializers(module, torch)
    from modelcrate.optimize.parity import eval_data

    inputs = eval_data(model).inputs
    expected = model.predict(inputs)
    with torch.no_grad():
        result = module(*(torch.from_numpy(np.ascontiguousarray(v)) for v in inputs.values()))
    got = list(result) if isinstance(result, (tuple, list)) else [result]
    diff = max(
        float(np.abs(g.numpy() - e).max()) for g, e in zip(got, expected.values(), strict=True)
    )
    if not diff <= TORCH_TOLERANCE:
        raise PackError(f"onnx2torch output differs from ONNX Runtime by {diff:.3g}; refused")
    return module


def _promote_initializers(module: Any, torch: Any) -> None:
    """onnx2torch keeps weights that are not in Linear/Conv patterns (a bare MatMul's) as
    buffers; make every floating-point one a parameter so the whole model can train."""
    for submodule in module.modules():
        for name, buffer in list(submodule._buffers.items()):
            if buffer is not None and buffer.is_floating_point():
                del submodule._buffers[name]
                submodule.register_parameter(name, torch.nn.Parameter(buffer.clone()))
