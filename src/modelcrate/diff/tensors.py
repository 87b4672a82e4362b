"""Per-tensor weight changes between two crates, streamed.

Weights are compared where both crates keep them in the same form: safetensors, else ONNX
initializers. Tensors in safetensors files and ONNX external data are read
``CHUNK_ELEMENTS`` at a time by offset, with plain reads rather than memory maps (a map
leaves every page it touched resident, so the process would grow to both models), so
memory stays bounded by one chunk per side whatever the model's size. Embedded ONNX
initializers (models under protobuf's 2 GB limit) are read one tensor at a time.
bfloat16 is widened to float32 to measure it; other dtypes numpy lacks (float8) are
compared byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelcrate.crate import Crate, LocalCopy
from modelcrate.errors import CrateFormatError, first_line
from modelcrate.manifest import Artifact, Manifest

CHUNK_ELEMENTS = 4 * 1024 * 1024
FORMATS = ("safetensors", "onnx")  # compared in this order of preference
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the cap the safetensors library applies
SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}


@dataclass(frozen=True)
class TensorChange:
    """One tensor both versions carry, and how it changed."""

    name: str
    change: str  # "values", "shape", "dtype"
    shape_a: list[int]
    shape_b: list[int]
    dtype_a: str
    dtype_b: str
    max_abs_delta: float | None = None  # when the shapes match
    changed_fraction: float | None = None  # share of elements that differ


@dataclass
class TensorDiff:
    """How the weights differ: which form was compared and what changed."""

    format: str | None = None  # "safetensors" or "onnx"; None when not compared
    note: str = ""  # why weights were not compared, or that they are identical
    identical: bool = False
    compared: int = 0  # tensors both carry
    unchanged: int = 0
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    changes: list[TensorChange] = field(default_factory=list)


def diff_tensors(a: Crate, b: Crate) -> TensorDiff:
    """Compare the weights ``a`` and ``b`` both keep in one form (see the module doc)."""
    pair = _common_artifact(a.manifest, b.manifest)
    if pair is None:
        kinds = [", ".join(x.kind for x in m.artifacts) or "none" for m in (a.manifest, b.manifest)]
        return TensorDiff(note=f"no weight format both carry (a: {kinds[0]}; b: {kinds[1]})")
    left, right = pair
    if _same_files(a.manifest, left, b.manifest, right):
        return TensorDiff(format=left.kind, identical=True, note="weight files are identical")
    if a.encrypted or b.encrypted:
        return TensorDiff(format=left.kind, note="encrypted weights are not compared")
    with ExitStack() as stack:
        copies = [_local(stack, crate) for crate in (a, b)]
        try:
            tensors = [
                _reader(left.kind)(copies[0].path(left.path)),
                _reader(right.kind)(copies[1].path(right.path)),
            ]
            return _compare(left.kind, *tensors)
        except Exception as exc:  # safetensors and onnx raise their own types
            raise CrateFormatError(f"cannot read the weights: {first_line(exc)}") from None


@dataclass(frozen=True)
class _Tensor:
    shape: list[int]
    dtype: str
    chunks: Callable[[], Iterator[np.ndarray]]  # the values, flat, in bounded pieces


def _compare(kind: str, left: dict[str, _Tensor], right: dict[str, _Tensor]) -> TensorDiff:
    result = TensorDiff(format=kind)
    result.only_a = sorted(set(left) - set(right))
    result.only_b = sorted(set(right) - set(left))
    for name in sorted(set(left) & set(right)):
        one, two = left[name], right[name]
        result.compared += 1
        if one.dtype != two.dtype or one.shape != two.shape:
            change = "dtype" if one.shape == two.shape else "shape"
            result.changes.append(
                TensorChange(name, change, one.shape, two.shape, one.dtype, two.dtype)
            )
            continue
        largest, differing, total = _delta(one, two)
        if differing == 0:
            result.unchanged += 1
            continue
        result.changes.append(
            TensorChange(
                name,
                "values",
                one.shape,
                two.shape,
                one.dtype,
                two.dtype,
                max_abs_delta=largest,
                changed_fraction=differing / total if total else 0.0,
            )
        )
    return result


def _delta(one: _Tensor, two: _Tensor) -> tuple[float, int, int]:
    """Largest absolute difference, elements that differ, elements: chunk by chunk."""
    largest, differing, total = 0.0, 0, 0
    for x, y in zip(one.chunks(), two.chunks(), strict=True):
        total += x.size
        unequal = x != y
        count = int(np.count_nonzero(unequal))
        if count and x.dtype.kind in "fiub":
            gap = np.abs(x[unequal].astype(np.float64) - y[unequal].astype(np.float64))
            largest = max(largest, float(np.nanmax(gap)) if gap.size else 0.0)
        differing += count
    return largest, differing, total


def _common_artifact(a: Manifest, b: Manifest) -> tuple[Artifact, Artifact] | None:
    for kind in FORMATS:
        left, right = a.artifact(kind), b.artifact(kind)  # type: ignore[arg-type]
        if left is not None and right is not None:
            return left, right
    return None


def _same_files(a: Manifest, left: Artifact, b: Manifest, right: Artifact) -> bool:
    def hashes(manifest: Manifest, artifact: Artifact) -> list[str]:
        return [manifest.file(p).sha256 for p in [artifact.path, *artifact.data_files]]

    return hashes(a, left) == hashes(b, right)


def _local(stack: ExitStack, crate: Crate) -> LocalCopy:
    copy = crate.localize()
    if copy is None:  # pragma: no cover - only encrypted crates, handled above
        raise CrateFormatError(f"{crate.manifest.ref}: no local copy of its files")
    return stack.enter_context(copy)  # verified on the way out


def _reader(kind: str) -> Callable[[Path], dict[str, _Tensor]]:
    return _safetensors if kind == "safetensors" else _onnx


def _safetensors(path: Path) -> dict[str, _Tensor]:
    """The tensors of a safetensors file, from its header (the format is a little-endian
    header length, a JSON header of dtype/shape/offsets, then the data)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if length > MAX_SAFETENSORS_HEADER or 8 + length > size:
            raise CrateFormatError(f"{path.name}: safetensors header of {length} bytes")
        header = json.loads(handle.read(length))
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        code, shape = info["dtype"], [int(d) for d in info["shape"]]
        begin, end = (8 + length + int(x) for x in info["data_offsets"])
        stored = np.dtype(SAFETENSORS_DTYPES.get(code, "uint8").replace("bfloat16", "uint16"))
        count = int(np.prod(shape, dtype=np.int64))
        fits = 8 + length <= begin <= end <= size
        if not fits or (code in SAFETENSORS_DTYPES and end - begin != count * stored.itemsize):
            raise CrateFormatError(f"{path.name}: tensor {name!r} has offsets outside its data")
        dtype = SAFETENSORS_DTYPES.get(code, code.lower())
        if code not in SAFETENSORS_DTYPES:  # float8 and friends: compared byte for byte
            stored, count = np.dtype("uint8"), end - begin
        read = _read(path, begin, stored, count)
        tensors[name] = _Tensor(shape, dtype, _widened(read) if code == "BF16" else read)
    return tensors


def _widened(read: Callable[[], Iterator[np.ndarray]]) -> Callable[[], Iterator[np.ndarray]]:
    """bfloat16 (read as uint16) as float32: its 16 bits are the float32's high half."""

    def chunks() -> Iterator[np.ndarray]:
        for raw in read():
            yield (raw.astype(np.uint32) << 16).view(np.float32)

    return chunks


def _read(
    path: Path, offset: int, dtype: np.dtype[Any], count: int
) -> Callable[[], Iterator[np.ndarray]]:
    """``count`` values of ``dtype`` at ``offset``, read ``CHUNK_ELEMENTS`` at a time with
    plain reads (a memory map would leave the whole file resident in the process)."""

    def chunks() -> Iterator[np.ndarray]:
        if count == 0:
            yield np.empty(0, dtype)
            return
        with path.open("rb") as handle:
            handle.seek(offset)
            for start in range(0, count, CHUNK_ELEMENTS):
                wanted = min(CHUNK_ELEMENTS, count - start) * dtype.itemsize
                data = handle.read(wanted)
                if len(data) != wanted:
                    raise CrateFormatError(f"{path.name}: tensor data ends early")
                yield np.frombuffer(data, dtype)

    return chunks


def _onnx(path: Path) -> dict[str, _Tensor]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    tensors = {}
    for initializer in model.graph.initializer:
        shape = [int(d) for d in initializer.dims]
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(initializer.data_type))
        if initializer.data_location == onnx.TensorProto.EXTERNAL:
            info = {entry.key: entry.value for entry in initializer.external_data}
            data = path.parent / Path(info["location"]).name  # pack allows only plain names
            count = int(np.prod(shape, dtype=np.int64))
            chunks = _read(data, int(info.get("offset", 0)), dtype, count)
        else:
            chunks = _whole(numpy_helper, initializer)
        tensors[initializer.name] = _Tensor(shape, str(dtype), chunks)
    return tensors


def _whole(numpy_helper: Any, initializer: Any) -> Callable[[], Iterator[np.ndarray]]:
    def chunks() -> Iterator[np.ndarray]:
        values = numpy_helper.to_array(initializer).reshape(-1)
        for start in range(0, max(values.size, 1), CHUNK_ELEMENTS):
            yield values[start : start + CHUNK_ELEMENTS]

    return chunks
