"""The manifest: closed schema shipped in the package, canonical bytes, digest, version gate."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelcrate.errors import CrateFormatError, UnsupportedSchemaError
from modelcrate.manifest import (
    RUNNABLE,
    Manifest,
    Serving,
    TensorSpec,
    json_schema,
    parse_manifest,
    shipped_schema,
)

MINIMAL: dict[str, Any] = {
    "schema_version": 1,
    "name": "tiny",
    "version": "1.0.0",
    "artifacts": [{"kind": "onnx", "path": "model.onnx"}],
    "signature": {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 2]}],
    },
    "files": [{"path": "model.onnx", "size": 3, "sha256": "0" * 64}],
}


def encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()


def test_shipped_schema_is_the_generated_one() -> None:
    # After changing the Manifest model, regenerate the file: `make schema`.
    assert shipped_schema() == json_schema()


def test_every_object_in_the_schema_is_closed() -> None:
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, node.get("title")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(shipped_schema())


def test_canonical_bytes_and_digest_are_pinned() -> None:
    manifest = parse_manifest(encode(MINIMAL))
    assert manifest.canonical_bytes() == (
        b'{"artifacts":[{"data_files":[],"kind":"onnx","path":"model.onnx","precision":"fp32"}],'
        b'"dependencies":{},"description":"","files":[{"path":"model.onnx","sha256":"'
        + b"0"
        * 64
        + b'","size":3}],"metrics":{},"name":"tiny","schema_version":1,"signature":{"inputs":'
        b'[{"dtype":"float32","name":"x","shape":[-1,4]}],"outputs":[{"dtype":"float32",'
        b'"name":"y","shape":[-1,2]}]},"tags":[],"version":"1.0.0"}'
    )
    assert manifest.digest == (
        "sha256:" + __import__("hashlib").sha256(manifest.canonical_bytes()).hexdigest()
    )
    # Whitespace in crate.json does not change the digest.
    assert parse_manifest(json.dumps(MINIMAL, indent=7).encode()).digest == manifest.digest


def test_file_bytes_parse_back_to_the_same_manifest() -> None:
    manifest = parse_manifest(encode(MINIMAL))
    assert parse_manifest(manifest.file_bytes()) == manifest


def test_newer_schema_version_is_refused_clearly() -> None:
    with pytest.raises(UnsupportedSchemaError, match="schema_version 2.*Upgrade modelcrate"):
        parse_manifest(encode({**MINIMAL, "schema_version": 2, "future_field": True}))


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"module": "os.system"}, "at \\(top level\\): unknown field 'module'"),
        (
            {"artifacts": [{"kind": "onnx", "path": "model.onnx", "class_name": "Evil"}]},
            "at artifacts/0: unknown field 'class_name'",
        ),
        ({"artifacts": [{"kind": "pickle", "path": "model.pkl"}]}, "kind"),
        ({"files": [{"path": "../etc/passwd", "size": 1, "sha256": "0" * 64}]}, "files/0/path"),
        ({"files": [{"path": "/etc/passwd", "size": 1, "sha256": "0" * 64}]}, "files/0/path"),
        ({"files": [{"path": "a\\..\\x", "size": 1, "sha256": "0" * 64}]}, "files/0/path"),
        ({"files": [{"path": "model.onnx", "size": -1, "sha256": "0" * 64}]}, "files/0/size"),
        ({"name": "Bad Name"}, "name"),
        ({"signature": {"inputs": [], "outputs": []}}, "signature"),
    ],
    ids=[
        "module-key",
        "class-name",
        "pickle-kind",
        "dotdot",
        "absolute",
        "backslash",
        "negative-size",
        "bad-name",
        "empty-signature",
    ],
)
def test_invalid_manifests_fail_validation(patch: dict[str, Any], message: str) -> None:
    with pytest.raises(CrateFormatError, match=message):
        parse_manifest(encode({**MINIMAL, **patch}))


@pytest.mark.parametrize("data", [b"", b"not json", b"[1, 2]", b"\xff\xfe", b"{" * 10], ids=str)
def test_garbage_is_a_format_error(data: bytes) -> None:
    with pytest.raises(CrateFormatError):
        parse_manifest(data)


def test_oversized_manifest_is_refused_before_parsing() -> None:
    with pytest.raises(CrateFormatError, match="limit"):
        parse_manifest(b" " * (5 * 1024 * 1024))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(key=st.text(min_size=1, max_size=20), value=json_values)
def test_any_extra_key_anywhere_fails(key: str, value: Any) -> None:
    for target in ("top", "artifact", "input"):
        raw = json.loads(json.dumps(MINIMAL))
        holder = {
            "top": raw,
            "artifact": raw["artifacts"][0],
            "input": raw["signature"]["inputs"][0],
        }[target]
        if key in holder:
            continue
        holder[key] = value
        with pytest.raises(CrateFormatError):
            parse_manifest(encode(raw))


@given(st.binary(max_size=300))
def test_parser_never_crashes_on_bytes(data: bytes) -> None:
    with contextlib.suppress(CrateFormatError):
        parse_manifest(data)


def test_manifest_model_is_immutable() -> None:
    manifest = parse_manifest(encode(MINIMAL))
    with pytest.raises(AttributeError, match="immutable"):
        manifest.name = "other"  # type: ignore[misc]
    assert isinstance(manifest, Manifest)


# Every optional section filled in, so mutations reach every record of the schema.
FULL: dict[str, Any] = {
    **MINIMAL,
    "description": "d",
    "license": "MIT",
    "tags": ["a"],
    "framework": {"name": "onnx", "version": "1.0"},
    "artifacts": [
        {
            "kind": "onnx",
            "path": "model.onnx",
            "precision": "fp16",
            "data_files": ["w.bin"],
            "opset": 17,
            "parity": {"reference": "torch", "max_abs_diff": 0.5, "samples": 2},
        }
    ],
    "labels": ["zero", "one"],
    "metrics": {"accuracy": 0.9},
    "dependencies": {"onnx": "1.0"},
    "lineage": {
        "parents": [{"digest": "sha256:" + "a" * 64, "ref": "t@1"}],
        "operation": "quantize",
        "parameters": {"bits": 8, "scheme": "int8", "ratio": 0.5, "fast": True},
    },
    "provenance": {
        "source": {"commit": "b" * 40, "branch": "main", "dirty": True, "changed_files": ["x"]},
        "command": "train",
        "python": "3.11",
        "platform": "linux",
        "packages": {"numpy": "2"},
    },
    "report": {
        "parent": "sha256:" + "c" * 64,
        "data": "random",
        "samples": 4,
        "size_ratio": 0.5,
        "max_abs_diff": 0.1,
        "mean_abs_diff": 0.01,
        "latency_ratio": 1.0,
    },
    "serving": {"max_batch_size": 8, "max_delay_ms": 2.5},
    "samples": "samples.safetensors",
    "model_card": "README.md",
}


def _places(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key and list index in a JSON document, as a path from the top."""
    found = [at] if at else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _places(value, (*at, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _places(value, (*at, index))
    return found


PLACES = _places(FULL)
mutations = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 70_000)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "a", "tiny", "x\n", "model.onnx", "../x", "fp32", "0" * 64, "ec"])
    | st.sampled_from(["3", "1.5", "true", "null", "-1"])
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=2)
    ),
    max_leaves=6,
)
# What the records refuse and the schema cannot say: no artifact with a null composition,
# file names that collide, and 3.0 where an integer goes (JSON Schema counts it as one).
STRICTER = re.compile(f"{RUNNABLE}|collide|expected `int( \\| null)?`, got `float`")


@settings(max_examples=400, deadline=None)
@given(place=st.sampled_from(PLACES), value=mutations, drop=st.booleans())
def test_the_records_and_the_published_schema_give_one_verdict(
    place: tuple[Any, ...], value: Any, drop: bool
) -> None:
    """The records are the only check at run time; the JSON Schema other tools validate
    crate.json with is generated from them. Whatever one refuses, the other refuses, but
    for the few STRICTER checks."""
    raw = json.loads(json.dumps(FULL))
    holder = raw
    for step in place[:-1]:
        holder = holder[step]
    if drop and isinstance(holder, dict):
        del holder[place[-1]]
    else:
        holder[place[-1]] = value
    schema_accepts = jsonschema.Draft202012Validator(shipped_schema()).is_valid(raw)
    try:
        parse_manifest(encode(raw))
    except CrateFormatError as exc:
        assert not schema_accepts or STRICTER.search(str(exc)), str(exc)
    else:
        assert schema_accepts


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"name": "tiny\n"}, "name"),
        ({"version": "1.0.0\n"}, "version"),
        ({"files": [{"path": "model.onnx\n", "size": 3, "sha256": "0" * 64}]}, "files/0/path"),
        ({"files": [{"path": "model.onnx", "size": "3", "sha256": "0" * 64}]}, "files/0/size"),
        ({"files": [{"path": "model.onnx", "size": 3.0, "sha256": "0" * 64}]}, "files/0/size"),
        ({"serving": {"max_batch_size": True}}, "serving/max_batch_size"),
        ({"metrics": {"accuracy": "0.9"}}, "metrics"),
    ],
    ids=[
        "name-newline",
        "version-newline",
        "path-newline",
        "size-text",
        "size-float",
        "bool",
        "text",
    ],
)
def test_values_are_checked_strictly(patch: dict[str, Any], where: str) -> None:
    """No trailing newline slips past an anchored pattern, no text or bool is read as a
    number (either would change what the digest covers)."""
    with pytest.raises(CrateFormatError, match=f"invalid at {where}"):
        parse_manifest(encode({**MINIMAL, **patch}))


def test_records_built_in_code_are_checked_like_parsed_ones() -> None:
    spec = TensorSpec(name="x", dtype="float32", shape=[np.int64(-1), np.int32(4)])
    assert spec == parse_manifest(encode(MINIMAL)).signature.inputs[0]
    assert type(spec.shape[1]) is int
    assert Serving(max_delay_ms=2).max_delay_ms == 2.0  # a number, as JSON would hold it
    with pytest.raises(CrateFormatError, match="Serving is invalid at max_batch_size"):
        Serving(max_batch_size=0)
    with pytest.raises(CrateFormatError, match="TensorSpec is invalid at dtype"):
        TensorSpec(name="x", dtype="pickle", shape=[1])  # type: ignore[arg-type]
    parsed = parse_manifest(encode(FULL))
    assert Manifest(**{k: getattr(parsed, k) for k in parsed.__struct_fields__}) == parsed
    with pytest.raises(CrateFormatError, match=RUNNABLE):
        Manifest(name="t", version="1", signature=parsed.signature)
