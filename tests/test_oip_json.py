"""JSON tensor data decodes to exactly the numbers written, flat or nested as the shape
says, whichever path reads it: simdjson (bodies of 2 KiB and more; numbers straight from
the parser, or the general path for booleans, strings, mixed and ragged lists) or orjson
(smaller bodies). Each test runs both."""

from __future__ import annotations

import json
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modelcrate.errors import InputError
from modelcrate.server import oip
from modelcrate.server.oip import DATATYPES, Limits, decode_request

NUMERIC = [
    *("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"),
    *("FP16", "FP32", "FP64"),
]


PARSERS = {"simdjson": 0, "orjson": 1 << 30}  # the body size from which simdjson reads


def decode(datatype: str, shape: list[int], data: object, parser: str) -> np.ndarray:
    body = {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}
    with mock.patch.object(oip, "SIMDJSON_FROM_BYTES", PARSERS[parser]):
        return decode_request(json.dumps(body).encode(), None, Limits()).inputs["x"]


def test_bodies_of_a_few_numbers_go_to_orjson_larger_ones_to_simdjson() -> None:
    small = json.dumps({"inputs": [{"data": [0.5] * 16}]}).encode()
    large = json.dumps({"inputs": [{"data": [0.5] * 1024}]}).encode()
    assert isinstance(oip._load_json(small)["inputs"][0]["data"], list)
    assert not isinstance(oip._load_json(large)["inputs"][0]["data"], list)


@st.composite
def tensors(draw: st.DrawFn) -> tuple[str, np.ndarray]:
    datatype = draw(st.sampled_from(NUMERIC))
    dtype = DATATYPES[datatype]
    elements = (
        st.floats(width=dtype.itemsize * 8, allow_nan=False, allow_infinity=False)
        if dtype.kind == "f"
        else None
    )
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5))
    return datatype, draw(hnp.arrays(dtype, shape, elements=elements))


@settings(max_examples=300, deadline=None, database=None)
@given(tensor=tensors(), nested=st.booleans(), parser=st.sampled_from(list(PARSERS)))
def test_numbers_decode_exactly_flat_or_nested(
    tensor: tuple[str, np.ndarray], nested: bool, parser: str
) -> None:
    datatype, array = tensor
    data = array.tolist() if nested else array.ravel().tolist()
    got = decode(datatype, list(array.shape), data, parser)
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize("parser", PARSERS)
def test_the_full_range_of_64_bit_integers(parser: str) -> None:
    top = np.iinfo(np.uint64).max
    assert decode("UINT64", [2], [int(top), 0], parser).tolist() == [top, 0]
    low, high = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    assert decode("INT64", [2], [int(low), int(high)], parser).tolist() == [low, high]


@pytest.mark.parametrize("parser", PARSERS)
def test_numbers_past_64_bits_still_decode_as_floats(parser: str) -> None:
    got = decode("FP64", [2], [2**100, 1], parser)
    assert got.tolist() == [float(2**100), 1.0]


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "message"),
    [
        ("FP32", [2, 2], [[1, 2, 3], [4]], "ragged"),  # right count, wrong nesting
        ("FP32", [2, 2], [[1, 2], [3]], "ragged"),
        ("FP32", [2, 2], [1, 2, [3, 4]], "ragged"),
        ("FP32", [3], [1, 2], "shape holds 3 elements but data has 2"),
        ("INT8", [3], [1, 2, 300], "does not fit int8"),
        ("UINT8", [2], [-1, 2], "does not fit uint8"),
        ("INT32", [2], [1, 2.5], "must be integers"),
        ("INT64", [2], [2**63, 1], "does not fit int64"),
        ("FP32", [2], ["a", "b"], "must be numbers"),
        ("FP16", [2], [1e6, 1], "does not fit float16"),
        ("FP32", [1], [1e300], "does not fit float32"),
    ],
)
@pytest.mark.parametrize("parser", PARSERS)
def test_bad_numbers_are_refused_with_the_reason(
    datatype: str, shape: list[int], data: object, message: str, parser: str
) -> None:
    with pytest.raises(InputError, match=message):
        decode(datatype, shape, data, parser)


@pytest.mark.parametrize("parser", PARSERS)
def test_booleans_and_strings_take_the_general_path(parser: str) -> None:
    assert decode("BOOL", [3], [True, False, 1], parser).tolist() == [True, False, True]
    assert decode("BYTES", [1, 2], [["a", "é"]], parser).tolist() == [[b"a", "é".encode()]]
    assert decode("FP32", [2], [1, True], parser).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("allow_nonfinite", [False, True])
@pytest.mark.parametrize("parser", PARSERS)
def test_a_number_beyond_the_float_is_refused_whether_or_not_nan_is_allowed(
    parser: str, allow_nonfinite: bool
) -> None:
    """Narrowed floats are checked by casting them (out of range becomes Inf): that must
    still say which number is wrong, and still refuse it where NaN and Inf are allowed."""
    body = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.5, -1e39]}]}
    limits = Limits(allow_nonfinite=allow_nonfinite)
    with (
        mock.patch.object(oip, "SIMDJSON_FROM_BYTES", PARSERS[parser]),
        pytest.raises(InputError, match="does not fit float32"),
    ):
        decode_request(json.dumps(body).encode(), None, limits)
    fine = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP16", "data": [1.5, -65504]}]}
    with mock.patch.object(oip, "SIMDJSON_FROM_BYTES", PARSERS[parser]):
        decoded = decode_request(json.dumps(fine).encode(), None, limits).inputs["x"]
    assert decoded.dtype == np.float16 and decoded.tolist() == [1.5, -65504.0]


@pytest.mark.parametrize("size", [3, 300])  # a few numbers are checked by their sum
def test_nan_and_inf_outputs_are_answered_as_strings_and_large_finite_ones_as_numbers(
    size: int,
) -> None:
    """JSON has no NaN or Inf. Finite numbers whose sum overflows stay numbers."""
    request = decode_request(
        json.dumps(
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
        ).encode(),
        None,
        Limits(),
    )
    outputs = {
        "odd": np.array([np.nan, -np.inf, 0.5] * (size // 3), np.float32),
        "big": np.full(size, 1e308),
    }
    body, _ = oip.encode_response(
        model_name="m", model_version="1", outputs=outputs, request=request, labels=None
    )
    answer = {o["name"]: o["data"] for o in json.loads(body)["outputs"]}
    assert answer["odd"][:3] == ["nan", "-inf", 0.5] and len(answer["odd"]) == size
    assert answer["big"] == [1e308] * size
