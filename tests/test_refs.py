"""Reference parsing: one parser for CLI, API and server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelcrate.errors import BadReference
from modelcrate.refs import Ref, parse_ref

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("digits", Ref("digits")),
        ("digits@1.0.0", Ref("digits", version="1.0.0")),
        ("digits@1.0.0-int8", Ref("digits", version="1.0.0-int8")),
        ("digits@prod", Ref("digits", alias="prod")),
        (f"digits@{DIGEST}", Ref("digits", digest=DIGEST)),
        ("my-model.v2_b", Ref("my-model.v2_b")),
    ],
    ids=["name", "version", "version-suffix", "alias", "digest", "punctuation"],
)
def test_parses_every_reference_form(text: str, expected: Ref) -> None:
    assert parse_ref(text) == expected
    assert str(parse_ref(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Digits",
        "../etc",
        "a/b",
        "digits@",
        "digits@sha256:abc",
        "digits@Prod",
        "digits@1.0/../x",
        "x" * 65,
        "digits@prod@1",
        "di gits",
        "digits\x00",
    ],
    ids=[
        "empty",
        "upper",
        "dotdot",
        "slash",
        "at-nothing",
        "short-digest",
        "upper-alias",
        "version-traversal",
        "too-long",
        "double-at",
        "space",
        "nul",
    ],
)
def test_rejects_malformed_references(text: str) -> None:
    with pytest.raises(BadReference):
        parse_ref(text)


@given(st.text(max_size=80))
def test_parser_never_crashes_and_round_trips(text: str) -> None:
    try:
        ref = parse_ref(text)
    except BadReference:
        return
    assert parse_ref(str(ref)) == ref
    assert "/" not in str(ref) and "\\" not in str(ref)
