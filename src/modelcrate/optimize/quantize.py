"""int8 quantization with onnxruntime.quantization: dynamic, or static (QDQ) with calibration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from modelcrate.errors import PackError
from modelcrate.model import Model
from modelcrate.optimize.derived import Derived, Parameters, onnx_bytes
from modelcrate.optimize.parity import eval_data

Data = dict[str, np.ndarray]


def apply(parent: Model, workdir: Path, *, calibrate: Data | None = None) -> Derived:
    """int8: dynamic (weights), or static QDQ calibrated on ``calibrate`` (by input name)."""
    model_bytes = onnx_bytes(parent)
    if calibrate is None:
        path = quantize_int8(model_bytes, workdir)
        return Derived(path, "int8", {"mode": "dynamic", "weights": "int8", "per_channel": True})
    calibration = eval_data(parent, calibrate).inputs
    path = quantize_int8(model_bytes, workdir, calibration)
    rows = int(next(iter(calibration.values())).shape[0])
    parameters: Parameters = {"mode": "static", "format": "QDQ", "per_channel": True}
    parameters["calibration_samples"] = rows
    return Derived(path, "int8-static", parameters)


def quantize_int8(
    model_bytes: bytes, workdir: Path, calibration: dict[str, np.ndarray] | None = None
) -> Path:
    """Write ``workdir/model.onnx``: int8 weights (dynamic), or int8 weights and activations
    in QDQ format, per channel, calibrated on ``calibration`` (static)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, prepared, target = (
        workdir / "fp32.onnx",
        workdir / "prepared.onnx",
        workdir / "model.onnx",
    )
    source.write_bytes(model_bytes)
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    except Exception:  # pre-processing is an optimization; quantize the model as it is
        prepared = source

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self, data: dict[str, np.ndarray]) -> None:
            rows = len(next(iter(data.values())))
            self.batches: Iterator[dict[str, np.ndarray]] = (
                {name: value[i : i + 1] for name, value in data.items()} for i in range(rows)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    try:
        if calibration is None:
            # ConvInteger has no int8-weight kernel on CPU; MatMul/Gemm (and Gather for
            # embeddings) carry the weights.
            quantize_dynamic(
                str(prepared),
                str(target),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul", "Gemm", "Gather"],
            )
        else:
            quantize_static(
                str(prepared),
                str(target),
                Reader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
    except Exception as exc:  # onnxruntime raises untyped errors for unsupported graphs
        raise PackError(f"int8 quantization failed: {str(exc).splitlines()[0][:300]}") from None
    finally:
        source.unlink(missing_ok=True)
        if prepared != source:
            prepared.unlink(missing_ok=True)
    return target
