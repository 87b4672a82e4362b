"""Open Inference Protocol v2 (KServe/Triton REST): decode requests, encode responses.

Knows the wire format only; it never runs a model. Limits are checked before
anything is allocated: the declared element count against a cap, then the
data length against the declared shape. The binary tensor data extension
(``Inference-Header-Content-Length``) carries raw little-endian tensors after
the JSON header; BYTES elements are each prefixed by a 4-byte length.
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import simdjson

from modelcrate.errors import InputError

HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "statistics"]

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_BY_DTYPE = {dtype.name: name for name, dtype in DATATYPES.items() if name != "BYTES"}
_OF_ARRAY = {dtype: name for name, dtype in DATATYPES.items() if name != "BYTES"}
_SPEC_NAMES = {"bool": "BOOL", "string": "BYTES"}
# JSON bodies this large or larger are parsed by simdjson (tensor data straight into arrays):
# from about a hundred numbers on, that is faster than orjson's Python floats then an array.
SIMDJSON_FROM_BYTES = 2048


def datatype_of(spec_dtype: str) -> str:
    """OIP datatype name for a manifest dtype name (float32 -> FP32, string -> BYTES)."""
    return _SPEC_NAMES.get(spec_dtype) or _BY_DTYPE[np.dtype(spec_dtype).name]


def tensor_metadata(name: str, dtype: str, shape: list[int]) -> dict[str, Any]:
    """A signature entry as OIP model metadata describes it (REST and gRPC)."""
    return {"name": name, "datatype": datatype_of(dtype), "shape": shape}


def fits(values: np.ndarray, dtype: np.dtype[Any]) -> bool:
    """Whether ``values`` are within ``dtype``'s range (checked before casting): integers,
    and numbers narrowed to a smaller float (NaN and Inf are ``check_finite``'s to refuse)."""
    if dtype.kind not in "iuf" or not values.size:
        return True
    if dtype.kind == "f" and values.dtype.kind == "f" and values.dtype.itemsize <= dtype.itemsize:
        return True
    info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
    return bool(values.min() >= info.min and values.max() <= info.max)


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 * 1024 * 1024
    max_elements: int = 16 * 1024 * 1024
    allow_nonfinite: bool = False


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None
    classification: int = 0


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] = field(default_factory=list)
    binary_default: bool = False  # parameters.binary_data_output


def decode_request(body: bytes, header_length: str | None, limits: Limits) -> InferRequest:
    """Parse an infer request body (JSON, or JSON header + binary tensors)."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise InputError("Inference-Header-Content-Length is not an integer") from None
        if not 0 < split <= len(body):
            raise InputError(f"Inference-Header-Content-Length {split} is outside the body")
        header, binary = body[:split], memoryview(body)[split:]
    else:
        header, binary = body, memoryview(b"")
    document = _load_json(header)
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InputError("request needs a non-empty 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for raw in raw_inputs:
        name, array, used = _decode_tensor(raw, binary[offset:], limits)
        if name in inputs:
            raise InputError(f"input {name!r} appears twice")
        inputs[name] = array
        offset += used
    if offset != len(binary):
        raise InputError(
            f"{len(binary) - offset} bytes of binary data were not claimed by any input"
        )
    parameters = document.get("parameters")
    parameters = {} if parameters is None else _object(parameters, "parameters")
    request = InferRequest(
        inputs=inputs,
        id=_optional_str(document.get("id"), "id"),
        parameters=parameters,
        binary_default=bool(parameters.get("binary_data_output", False)) if parameters else False,
    )
    requested: set[str] = set()
    for raw in document.get("outputs") or ():
        raw = _object(raw, "outputs[]")
        params = _object(raw.get("parameters", {}), "output parameters")
        output_name = _required_str(raw.get("name"), "output name")
        if output_name in requested:
            raise InputError(f"output {output_name!r} is requested twice")
        requested.add(output_name)
        request.outputs.append(
            RequestedOutput(
                name=output_name,
                binary=params.get("binary_data"),
                classification=_classification(params.get("classification", 0)),
            )
        )
    top_k = _classification(parameters.get("classification", 0)) if parameters else 0
    if top_k and not request.outputs:
        request.outputs = [RequestedOutput(name="*", classification=top_k)]
    return request


def _decode_tensor(raw: Any, binary: memoryview, limits: Limits) -> tuple[str, np.ndarray, int]:
    raw = _object(raw, "inputs[]")
    name = _required_str(raw.get("name"), "input name")
    datatype, shape = raw.get("datatype"), raw.get("shape")
    count = check_shape(name, datatype, shape, limits)
    dtype = DATATYPES[datatype]
    size, params = None, raw.get("parameters")
    if params is not None:
        size = _object(params, f"input {name!r} parameters").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or size > len(binary):
            raise InputError(f"input {name!r}: binary_data_size {size!r} exceeds the binary data")
        array = from_binary(name, bytes(binary[:size]), dtype, count)
        check_finite(name, array, limits)
        used = size
    else:
        if "data" not in raw:
            raise InputError(f"input {name!r}: no 'data' and no binary_data_size")
        array = _from_json(name, raw["data"], dtype, shape, count, limits)  # checked as cast
        used = 0
    return name, array.reshape(shape), used


_INT = {int}  # a shape's dimensions: ints, not bools


def check_shape(name: str, datatype: Any, shape: Any, limits: Limits) -> int:
    """Check an input's datatype and shape (before anything is allocated); its element count."""
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InputError(
            f"input {name!r}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        )
    if type(shape) is not list or not set(map(type, shape)) <= _INT or min(shape, default=0) < 0:
        raise InputError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    count = math.prod(shape)  # Python ints: no overflow
    if count > limits.max_elements:
        raise InputError(
            f"input {name!r}: shape {shape} has {count} elements; "
            f"the limit is {limits.max_elements}"
        )
    return count


def _from_json(
    name: str, data: Any, dtype: np.dtype[Any], shape: list[int], count: int, limits: Limits
) -> np.ndarray:
    if isinstance(data, simdjson.Array):
        array = _numbers(data, dtype, shape, count)
        if array is not None:
            return fitted(name, array, dtype, limits)
        data = data.as_list()  # nested, booleans, strings or mixed: the general path
    if dtype.kind == "O":
        flat = _flatten(data if isinstance(data, list) else [data], count, name)
        if len(flat) != count or not all(isinstance(v, str) for v in flat):
            raise InputError(f"input {name!r}: BYTES data must be {count} strings")
        return np.array([v.encode() for v in flat], dtype=object)
    # numpy parses the (body-size-capped) JSON list in C; nested or flat both work.
    try:
        parsed = np.array(data)
    except (ValueError, TypeError):
        raise InputError(f"input {name!r}: data is ragged (lists of different lengths)") from None
    if dtype.kind in "iu" and parsed.dtype.kind in "fO":
        exact = _exact_integers(name, data, count)  # past 63 bits numpy reads them as floats
        if exact is not None:
            return fitted(name, exact, dtype, limits)
    if parsed.dtype.kind not in "biuf":
        raise InputError(f"input {name!r}: data must be numbers")
    if parsed.size != count:
        raise InputError(f"input {name!r}: shape holds {count} elements but data has {parsed.size}")
    if dtype.kind in "iub" and parsed.dtype.kind == "f":
        raise InputError(f"input {name!r}: {_BY_DTYPE[dtype.name]} data must be integers")
    return fitted(name, parsed, dtype, limits)


def fitted(name: str, values: np.ndarray, dtype: np.dtype[Any], limits: Limits) -> np.ndarray:
    """``values`` cast to ``dtype``; refused when a number is outside its range, or (unless
    the limits allow it) is NaN or Inf. For a float, one pass checks both: the largest
    magnitude must be at most the float's largest (NaN and Inf are not), which replaces a
    minimum, a maximum and a finiteness check."""
    if dtype.kind == "f" and values.dtype.kind in "biuf" and not limits.allow_nonfinite:
        # np.maximum.reduce: .max() goes through a Python wrapper first
        if values.size and not np.maximum.reduce(np.abs(values), axis=None) <= _largest(dtype):
            if values.dtype.kind != "f" or np.isfinite(values).all():
                raise InputError(f"input {name!r}: a number does not fit {dtype.name}")
            check_finite(name, values, limits)
        return values.astype(dtype, copy=False)
    if not fits(values, dtype):
        raise InputError(f"input {name!r}: a number does not fit {dtype.name}")
    cast = values.astype(dtype, copy=False)
    check_finite(name, cast, limits)
    return cast


@functools.cache
def _largest(dtype: np.dtype[Any]) -> float:
    return float(np.finfo(dtype).max)


def _exact_integers(name: str, data: Any, count: int) -> np.ndarray | None:
    """Integer data as Python ints (an object array: compared exactly, past 63 bits too);
    None when something in it is not an integer."""
    flat = _flatten(data if isinstance(data, list) else [data], count, name)
    if len(flat) != count or not all(isinstance(v, int) for v in flat):
        return None
    return np.array(flat, dtype=object)


# simdjson's buffer type, and what it holds, per numpy kind
_BUFFERS = {
    "f": ("d", np.dtype(np.float64)),
    "i": ("i", np.dtype(np.int64)),
    "u": ("u", np.dtype(np.uint64)),
}


def _numbers(data: Any, dtype: np.dtype[Any], shape: list[int], count: int) -> np.ndarray | None:
    """JSON numbers, flat or nested as ``shape`` says, straight from the parser into an
    array (for 1,024 of them about half the time of Python floats, then an array); None
    for anything else (booleans, strings, ragged or mixed lists: the general path)."""
    buffer = _BUFFERS.get(dtype.kind)
    if buffer is None or not (len(data) == count or (len(shape) > 1 and _nested_as(data, shape))):
        return None
    try:  # as_buffer flattens nested lists
        values = np.frombuffer(data.as_buffer(of_type=buffer[0]), dtype=buffer[1])
    except (TypeError, ValueError):  # a non-number, a fraction among integers, out of range
        return None
    return values if values.size == count else None  # lists inside the innermost lists


def _nested_as(data: Any, shape: list[int]) -> bool:
    """Whether ``data`` nests lists exactly as ``shape`` says (its innermost not looked at)."""
    rows = [data]
    for size in shape[:-1]:
        if not all(isinstance(row, simdjson.Array) and len(row) == size for row in rows):
            return False
        rows = [item for row in rows for item in row]
    return all(isinstance(row, simdjson.Array) and len(row) == shape[-1] for row in rows)


def _flatten(data: list[Any], limit: int, name: str) -> list[Any]:
    """Flatten nested lists, refusing to grow past ``limit`` elements (no huge allocation)."""
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
            if len(out) > limit:
                raise InputError(f"input {name!r}: data has more elements than its shape")
        else:
            stack.pop()
    return out


def from_binary(name: str, data: bytes, dtype: np.dtype[Any], count: int) -> np.ndarray:
    """A tensor from raw little-endian bytes (BYTES: each element after a 4-byte length)."""
    if dtype.kind == "O":
        items, offset = [], 0
        while offset < len(data):
            if offset + 4 > len(data):
                raise InputError(f"input {name!r}: truncated BYTES element length")
            (length,) = struct.unpack_from("<I", data, offset)
            offset += 4
            if offset + length > len(data):
                raise InputError(f"input {name!r}: BYTES element runs past the data")
            items.append(data[offset : offset + length])
            offset += length
        if len(items) != count:
            raise InputError(
                f"input {name!r}: shape holds {count} elements but data has {len(items)}"
            )
        return np.array(items, dtype=object)
    expected = count * dtype.itemsize
    if len(data) != expected:
        raise InputError(
            f"input {name!r}: shape needs {expected} bytes of {dtype.name}, got {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)


def check_finite(name: str, array: np.ndarray, limits: Limits) -> None:
    if not limits.allow_nonfinite and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError(
            f"input {name!r}: contains NaN or Inf (the server refuses non-finite values)"
        )


def encode_response(
    *,
    model_name: str,
    model_version: str,
    outputs: dict[str, np.ndarray],
    request: InferRequest,
    labels: list[str] | None,
) -> tuple[bytes, int | None]:
    """Encode outputs; returns (body, json header length when binary data follows, else None)."""
    binary_of = {o.name: o.binary for o in request.outputs}
    encoded, chunks = [], []
    for name, array in select_outputs(outputs, request, labels):
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of_array(array),
            "shape": list(array.shape),
        }
        binary = binary_of.get(name)
        if binary if binary is not None else request.binary_default:
            chunk = to_binary(array)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = _to_json_list(array)
        encoded.append(entry)
    document: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": encoded,
    }
    if request.id is not None:
        document["id"] = request.id
    header = orjson.dumps(document)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def select_outputs(
    outputs: dict[str, np.ndarray], request: InferRequest, labels: list[str] | None
) -> list[tuple[str, np.ndarray]]:
    """The outputs a request asked for (all when it named none), classified when asked."""
    if not request.outputs:
        return list(outputs.items())
    wanted = request.outputs
    if len(wanted) == 1 and wanted[0].name == "*":
        wanted = [RequestedOutput(name=n, classification=wanted[0].classification) for n in outputs]
    selected = []
    for output in wanted:
        if output.name not in outputs:
            raise InputError(f"requested output {output.name!r} is not one of {sorted(outputs)}")
        array = outputs[output.name]
        if output.classification:
            array = classify(array, output.classification, labels)
        selected.append((output.name, array))
    return selected


def datatype_of_array(array: np.ndarray) -> str:
    dtype = array.dtype
    if dtype.kind in "OSU":
        return "BYTES"
    # Native dtypes by object (numpy's .name is slow for a per-request call), else by name.
    return _OF_ARRAY.get(dtype) or _BY_DTYPE[dtype.name]


def classify(scores: np.ndarray, k: int, labels: list[str] | None) -> np.ndarray:
    """Triton's classification extension: top-k per row as 'score:index[:label]' strings."""
    if scores.ndim == 1:
        scores = scores[None, :]
    flat = scores.reshape(scores.shape[0], -1)
    k = min(k, flat.shape[1])
    top = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    rows = []
    for row, indices in zip(flat, top, strict=True):
        rows.append(
            [
                f"{row[i]:f}:{i}" + (f":{labels[i]}" if labels and i < len(labels) else "")
                for i in indices
            ]
        )
    return np.array(rows, dtype=object)


def to_binary(array: np.ndarray) -> bytes:
    """Raw little-endian bytes of a tensor (BYTES: each element after a 4-byte length)."""
    if array.dtype.kind in "OSU":
        parts = []
        for item in array.ravel():
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _to_json_list(array: np.ndarray) -> list[Any]:
    flat = array.ravel()
    if array.dtype.kind in "OSU":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in flat]
    values: list[Any] = flat.tolist()
    # JSON has no NaN or Inf: they become strings. For a few numbers, a sum that is not
    # finite says one may be there (or the sum overflowed), and then each is looked at.
    if array.dtype.kind == "f":
        finite = math.isfinite(sum(values)) if len(values) < 256 else np.isfinite(flat).all()
        if not finite:
            values = [v if math.isfinite(v) else str(v) for v in values]
    return values


def _load_json(data: bytes) -> dict[str, Any]:
    """The request as dicts and lists, except that each input's ``data`` array stays
    simdjson's (``_numbers`` turns it into an array without a Python float per element).
    Bodies of a few numbers are read by orjson, which is faster for them."""
    if len(data) < SIMDJSON_FROM_BYTES:
        return _load_with_orjson(data)
    try:
        parsed = simdjson.Parser().parse(data)  # a fresh parser: documents outlive no request
    except (ValueError, RuntimeError):  # orjson reads what simdjson refuses (integers past
        return _load_with_orjson(data)  # 64 bits), and its message says where JSON is bad
    if not isinstance(parsed, simdjson.Object):
        raise InputError("request body must be a JSON object")
    document = {}
    try:
        for key in parsed.keys():  # noqa: SIM118 (items() would convert every value)
            value = parsed[key]
            if key == "inputs" and isinstance(value, simdjson.Array):
                document[key] = [_input_fields(item) for item in value]
            else:
                document[key] = _plain(value)
    except KeyError:  # simdjson cannot look up a key holding NUL ("\u0000"): orjson can
        return _load_with_orjson(data)
    return document


def _input_fields(item: Any) -> Any:
    if not isinstance(item, simdjson.Object):
        return _plain(item)
    return {k: item[k] if k == "data" else _plain(item[k]) for k in item.keys()}  # noqa: SIM118


def _plain(value: Any) -> Any:
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _load_with_orjson(data: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputError(
            f"request body is not valid JSON (NaN and Infinity are not JSON): {exc}"
        ) from None
    if not isinstance(document, dict):
        raise InputError("request body must be a JSON object")
    return document


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{what} must be a JSON object")
    return value


def _required_str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{what} must be a non-empty string")
    return value


def _optional_str(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InputError(f"{what} must be a string")
    return value


def _classification(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InputError(f"classification must be a non-negative integer, got {value!r}")
    return value
