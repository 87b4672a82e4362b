"""The manifest: closed schema shipped in the package, canonical bytes, digest, version gate."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelcrate.errors import CrateFormatError, UnsupportedSchemaError
from modelcrate.manifest import Manifest, json_schema, parse_manifest, shipped_schema

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
        ({"module": "os.system"}, "Additional properties"),
        (
            {"artifacts": [{"kind": "onnx", "path": "model.onnx", "class_name": "Evil"}]},
            "Additional properties",
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
    with pytest.raises(Exception, match="frozen"):
        manifest.name = "other"  # type: ignore[misc]
    assert isinstance(manifest, Manifest)
