"""Build a crate's ONNX artifact from an ``.onnx`` file (with external data, if any)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, cast, get_args

from modelcrate.errors import PackError, UnsafeContentError
from modelcrate.manifest import Artifact, DType, Framework, Precision, Signature, TensorSpec
from modelcrate.pack.build import Build
from modelcrate.runtimes.onnxruntime import external_data_files

ONNX_FILE = "model.onnx"
RESERVED = {
    ONNX_FILE,
    "crate.json",
    "README.md",
    "model.pt2",
    "model.safetensors",
    "samples.safetensors",
}


def build(source: Path, workdir: Path, **_: Any) -> Build:
    """Copy an ONNX model and its external data into ``workdir``; read its signature."""
    import onnx

    model = _load(source)
    data_files = external_data_files(model)  # plain names beside the model, or refused
    _check(source)
    for location in data_files:
        data_path = source.parent / location
        if data_path.is_symlink() or not data_path.is_file():
            raise UnsafeContentError(f"{source.name}: external data {location!r} is not a file")
        if location in RESERVED:
            raise PackError(f"{source.name}: external data may not be named {location!r}")
        shutil.copyfile(data_path, workdir / location)
    shutil.copyfile(source, workdir / ONNX_FILE)
    artifact = Artifact(
        kind="onnx",
        path=ONNX_FILE,
        precision=precision_of(model),
        data_files=data_files,
        opset=opset_of(model),
    )
    return Build(
        artifacts=[artifact],
        signature=signature_of(model),
        framework=Framework(name="onnx", version=onnx.__version__),
    )


def _load(source: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(source), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, OSError ...
        raise PackError(f"{source.name} is not a valid ONNX model: {exc}") from None


def _check(source: Path) -> None:
    import onnx

    try:  # by path, so the checker finds external data beside the model
        onnx.checker.check_model(str(source))
    except Exception as exc:  # onnx ValidationError
        raise PackError(f"{source.name} is not a valid ONNX model: {exc}") from None


def signature_of(model: Any) -> Signature:
    """Inputs (minus initializers) and outputs with dtypes; unknown dims become -1."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [_spec(v) for v in model.graph.input if v.name not in initializers]
    return Signature(inputs=inputs, outputs=[_spec(v) for v in model.graph.output])


def _spec(value: Any) -> TensorSpec:
    from onnx.helper import tensor_dtype_to_np_dtype

    tensor_type = value.type.tensor_type
    dtype = tensor_dtype_to_np_dtype(tensor_type.elem_type)
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
    name = "string" if dtype.kind in "OUS" else dtype.name
    if name not in get_args(DType):
        raise PackError(f"tensor {value.name!r} has dtype {name}, which crates cannot describe yet")
    return TensorSpec(name=value.name, dtype=cast(DType, name), shape=dims)


def opset_of(model: Any) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def precision_of(model: Any) -> Precision:
    from onnx import TensorProto

    kinds = {init.data_type for init in model.graph.initializer}
    if TensorProto.INT8 in kinds or TensorProto.UINT8 in kinds:
        return "int8"
    if TensorProto.FLOAT16 in kinds and TensorProto.FLOAT not in kinds:
        return "fp16"
    return "fp32"
