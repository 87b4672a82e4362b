"""Build crate artifacts from PyTorch: an ``nn.Module`` (+ example inputs) or a ``.pt2`` file.

Writes three artifacts: ``model.onnx`` (torch.onnx dynamo exporter, dynamic
batch dimension; what ``load`` runs without torch), ``model.pt2`` (the
torch.export program, trainable again via ``Model.to_torch``) and
``model.safetensors`` (the state dict, for loading into your own module).
ONNX outputs are compared with torch's on the example inputs; the largest
absolute difference is recorded, and packing fails above the tolerance.
"""

from __future__ import annotations

import inspect
import io
import logging
import shutil
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
from msgspec.structs import replace

from modelcrate.errors import PackError, UsageError, first_line
from modelcrate.manifest import Artifact, Framework, Parity, Precision, Signature, TensorSpec
from modelcrate.pack.build import Build
from modelcrate.pack.onnx import ONNX_FILE, opset_of, signature_of
from modelcrate.runtimes.onnxruntime import external_data_files
from modelcrate.runtimes.torch import check_pt2, import_torch

PT2_FILE = "model.pt2"
SAFETENSORS_FILE = "model.safetensors"


def build(
    source: Any,
    workdir: Path,
    *,
    example_inputs: tuple[Any, ...] | None = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    parity_tolerance: float = 1e-3,
    **_: Any,
) -> Build:
    """Export ``source`` (a module or a .pt2 path) into ONNX, .pt2 and safetensors files."""
    torch = import_torch()
    if isinstance(source, Path):
        program = _read_pt2(source)
        shutil.copyfile(source, workdir / PT2_FILE)
        example = tuple(program.example_inputs[0])
        module = program.module()
    else:
        if not example_inputs:
            raise UsageError("packing a torch module needs example_inputs=(tensor, ...)")
        module = _eval_mode(source)
        example = tuple(_as_tensor(torch, x) for x in example_inputs)
        program = _export(torch, module, example)
        torch.export.save(program, str(workdir / PT2_FILE))
    in_names = input_names or _input_names(program, len(example))
    with torch.no_grad():
        expected = _flatten(module(*example))
    out_names = output_names or (
        ["output"] if len(expected) == 1 else [f"output_{i}" for i in range(len(expected))]
    )
    external = _weight_bytes(module) >= EXTERNAL_DATA_BYTES
    _export_onnx(torch, program, workdir / ONNX_FILE, in_names, out_names, external)
    _save_safetensors(module, workdir / SAFETENSORS_FILE)

    import onnx

    onnx_model = onnx.load(str(workdir / ONNX_FILE), load_external_data=False)
    data_files = external_data_files(onnx_model)
    parity = _parity(workdir / ONNX_FILE, in_names, example, expected, parity_tolerance)
    precision = _precision(module)
    return Build(
        artifacts=[
            Artifact(
                kind="onnx",
                path=ONNX_FILE,
                precision=precision,
                data_files=data_files,
                opset=opset_of(onnx_model),
                parity=parity,
            ),
            Artifact(kind="torch-export", path=PT2_FILE, precision=precision),
            Artifact(kind="safetensors", path=SAFETENSORS_FILE, precision=precision),
        ],
        signature=_signature(signature_of(onnx_model), in_names, out_names),
        framework=Framework(name="pytorch", version=torch.__version__.split("+")[0]),
        dependencies={"torch": torch.__version__.split("+")[0]},
        samples={n: x.detach().cpu().numpy() for n, x in zip(in_names, example, strict=True)},
    )


def _eval_mode(module: Any) -> Any:
    try:
        return module.eval()
    except NotImplementedError:  # modules rebuilt by torch.export have no train/eval switch
        return module


def _as_tensor(torch: Any, value: Any) -> Any:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


def _export(torch: Any, module: Any, example: tuple[Any, ...]) -> Any:
    """torch.export with dimension 0 of every input dynamic (the batch)."""
    # torch.export specialises a dimension of size 1, so export with batch 2.
    sample = tuple(torch.cat([x, x]) if x.ndim and x.shape[0] == 1 else x for x in example)
    batch = torch.export.Dim("batch")
    dynamic = tuple({0: batch} if x.ndim else {} for x in sample)
    try:
        with warnings.catch_warnings():  # nn.LSTM/GRU keep a weight list export warns about
            warnings.filterwarnings("ignore", "The tensor attributes .* during export")
            return torch.export.export(module, sample, dynamic_shapes=dynamic)
    except Exception as exc:  # torch raises many unrelated types from tracing
        raise PackError(f"torch.export could not trace the module: {first_line(exc)}") from None


def _read_pt2(path: Path) -> Any:
    torch = import_torch()
    data = path.read_bytes()
    check_pt2(data, path.name)
    try:
        return torch.export.load(io.BytesIO(data))
    except Exception as exc:
        message = f"{path.name} is not a loadable torch.export program: {first_line(exc)}"
        raise PackError(message) from None


# Weights at least this large go to ONNX external data (a protobuf cannot exceed 2 GiB).
EXTERNAL_DATA_BYTES = 1 << 30


def _weight_bytes(module: Any) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _export_onnx(
    torch: Any, program: Any, target: Path, ins: list[str], outs: list[str], external: bool
) -> None:
    # The exporter reports progress on stdout and warns through logging; keep both quiet.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                program,
                (),
                str(target),
                dynamo=True,
                input_names=ins,
                output_names=outs,
                external_data=external,  # written as model.onnx.data beside it
                verbose=False,
            )
    except Exception as exc:
        raise PackError(f"ONNX export failed: {first_line(exc)}") from None


def _save_safetensors(module: Any, target: Path) -> None:
    from safetensors.torch import save_model

    save_model(module, str(target))


def _parity(
    onnx_path: Path, names: list[str], example: tuple[Any, ...], expected: list[Any], tol: float
) -> Parity:
    import onnxruntime as ort

    feeds = {n: x.detach().cpu().numpy() for n, x in zip(names, example, strict=True)}
    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        got = session.run(None, feeds)
    except Exception as exc:  # ORT raises its own types (NOT_IMPLEMENTED for bf16 Gemm, ...)
        raise PackError(
            f"ONNX Runtime cannot run the exported model: {first_line(exc)} "
            "(bfloat16 models: convert to float32 or float16 before packing)"
        ) from None
    diff = max(
        float(np.max(np.abs(g - e.detach().cpu().numpy()))) if g.size else 0.0
        for g, e in zip(got, expected, strict=True)
    )
    if not np.isfinite(diff) or diff > tol:
        raise PackError(
            f"ONNX output differs from torch by {diff:.3g} on the example inputs "
            f"(tolerance {tol:g}); pass parity_tolerance= to accept it"
        )
    return Parity(reference="torch", max_abs_diff=diff, samples=int(example[0].shape[0]))


def _signature(onnx_signature: Signature, ins: list[str], outs: list[str]) -> Signature:
    def rename(specs: list[TensorSpec], names: list[str]) -> list[TensorSpec]:
        return [replace(s, name=n) for s, n in zip(specs, names, strict=True)]

    return Signature(
        inputs=rename(onnx_signature.inputs, ins), outputs=rename(onnx_signature.outputs, outs)
    )


def _input_names(program: Any, count: int) -> list[str]:
    try:
        names = list(inspect.signature(program.module().forward).parameters)
    except (TypeError, ValueError):
        names = []
    names = [n for n in names if n not in ("self", "args", "kwargs")]
    return names if len(names) == count else [f"input_{i}" for i in range(count)]


def _flatten(result: Any) -> list[Any]:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _precision(module: Any) -> Precision:
    import torch

    dtypes = {p.dtype for p in module.parameters()}
    if dtypes == {torch.float16}:
        return "fp16"
    if dtypes == {torch.bfloat16}:
        return "bf16"
    return "fp32"
