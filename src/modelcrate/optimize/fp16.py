"""float16 weights and compute via onnxconverter-common, keeping float32 inputs and outputs."""

from __future__ import annotations

from pathlib import Path

from modelcrate.errors import PackError, RuntimeUnavailable
from modelcrate.model import Model
from modelcrate.optimize.derived import Derived, onnx_bytes


def apply(parent: Model, workdir: Path) -> Derived:
    """The parent with float16 weights and compute; inputs and outputs stay float32."""
    return Derived(to_fp16(onnx_bytes(parent), workdir), "fp16", {"keep_io_types": True})


def to_fp16(model_bytes: bytes, workdir: Path) -> Path:
    """Write ``workdir/model.onnx`` with float16 weights; the signature stays float32."""
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise RuntimeUnavailable(
            "fp16 conversion needs onnxconverter-common: pip install 'modelcrate[optimize]'"
        ) from None
    try:
        converted = float16.convert_float_to_float16(
            onnx.load_from_string(model_bytes), keep_io_types=True
        )
    except Exception as exc:
        raise PackError(f"fp16 conversion failed: {str(exc).splitlines()[0][:300]}") from None
    target = workdir / "model.onnx"
    onnx.save_model(converted, str(target))
    return target
