"""The crate manifest (``crate.json``): typed model, JSON Schema, canonical bytes, digest.

The manifest is pure data under a closed schema (``additionalProperties:
false`` everywhere): nothing in it names code to import. Its digest is the
sha256 of its canonical JSON (sorted keys, no spaces, UTF-8), so the digest
identifies a crate whatever whitespace its ``crate.json`` was written with.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import re
from contextvars import ContextVar
from functools import cache
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct, field

from modelcrate.errors import CrateFormatError, UnsupportedSchemaError
from modelcrate.refs import DIGEST_PATTERN, NAME_PATTERN, VERSION_PATTERN

SCHEMA_VERSION: Literal[1] = 1
MANIFEST_NAME = "crate.json"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_PARENTS = 64  # a version derives from at most this many others (lineage stays renderable)
MAX_CHANGED_FILES = 100  # provenance names at most this many uncommitted files
# A path inside a crate: up to 4 segments, each starting with a letter or digit,
# so '.', '..', absolute paths, backslashes and NUL can never match.
FILE_PATH_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9][A-Za-z0-9._-]{0,127}){0,3}"
SHA256_PATTERN = r"[0-9a-f]{64}"

DType = Literal[
    "bool",
    "uint8",
    "int8",
    "uint16",
    "int16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
    "string",
]
ArtifactKind = Literal[
    "onnx", "ort", "torch-export", "safetensors", "tflite", "keras", "savedmodel"
]
Precision = Literal["fp32", "fp16", "bf16", "int8", "mixed"]
RUNNABLE = "a crate needs at least one artifact, or a composition"
T = TypeVar("T")


def whole(pattern: str) -> str:
    """A JSON Schema pattern that matches the whole string. msgspec checks patterns with
    Python's ``re.search``, whose ``$`` also matches before a final newline; the lookahead
    refuses that newline (and means nothing to ECMA-262 engines, where ``$`` is the end)."""
    return f"^(?:{pattern})$(?!\\n)"


FilePath = Annotated[str, Meta(pattern=whole(FILE_PATH_PATTERN))]
Digest = Annotated[str, Meta(pattern=whole(DIGEST_PATTERN))]


class _Strict(Struct, frozen=True, forbid_unknown_fields=True):
    """A closed, immutable record. Built by hand (``TensorSpec(name=…)``) it is checked and
    coerced exactly as when decoded from crate.json: an int becomes a float where the schema
    says number, a dict becomes the record it stands for, a bad value is a CrateFormatError."""

    def __post_init__(self) -> None:
        if _decoding.get():
            return  # msgspec is decoding this record: it checks it as it goes
        try:
            values = msgspec.to_builtins(self, enc_hook=_number)
        except TypeError as exc:
            raise CrateFormatError(f"{type(self).__name__}: {exc}") from None
        record = checked(type(self), values)
        for name in self.__struct_fields__:
            msgspec.structs.force_setattr(self, name, getattr(record, name))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, absent optional fields left out."""
        result: dict[str, Any] = _without_none(msgspec.to_builtins(self))
        return result


class TensorSpec(_Strict, frozen=True):
    """One named input or output: dtype and shape, -1 for a dynamic dimension."""

    name: Annotated[str, Meta(min_length=1, max_length=256)]
    dtype: DType
    shape: list[int]

    def describe(self) -> str:
        return f"{self.shape} ({self.dtype})"


class Signature(_Strict, frozen=True):
    inputs: Annotated[list[TensorSpec], Meta(min_length=1)]
    outputs: Annotated[list[TensorSpec], Meta(min_length=1)]


class Parity(_Strict, frozen=True):
    """How closely an artifact reproduces the model it was exported from."""

    reference: Annotated[str, Meta(description="what it was compared with, e.g. 'torch'")]
    max_abs_diff: float
    samples: Annotated[int, Meta(ge=1)]


class Artifact(_Strict, frozen=True):
    """One runnable (or loadable) form of the model inside the crate."""

    kind: ArtifactKind
    path: FilePath
    precision: Precision = "fp32"
    data_files: Annotated[
        list[FilePath], Meta(description="external data the artifact reads (ONNX external data)")
    ] = field(default_factory=list)
    opset: int | None = None
    parity: Parity | None = None


class FileEntry(_Strict, frozen=True):
    path: FilePath
    size: Annotated[int, Meta(ge=0)]
    sha256: Annotated[str, Meta(pattern=whole(SHA256_PATTERN))]


class Framework(_Strict, frozen=True):
    name: str
    version: str


class Parent(_Strict, frozen=True):
    digest: Digest
    ref: str | None = None


class Lineage(_Strict, frozen=True):
    parents: Annotated[list[Parent], Meta(max_length=MAX_PARENTS)] = field(default_factory=list)
    operation: str | None = None
    parameters: dict[str, str | int | float | bool] = field(default_factory=dict)


class Report(_Strict, frozen=True):
    """How an optimized crate compares with its parent, measured when it was made."""

    parent: Digest
    data: Literal["crate samples", "user data", "random"]
    samples: Annotated[int, Meta(ge=1)]
    size_ratio: float
    max_abs_diff: float
    mean_abs_diff: float
    latency_ratio: float
    top1_agreement: float | None = None
    accuracy: float | None = None
    parent_accuracy: float | None = None
    sparsity: float | None = None


class Serving(_Strict, frozen=True):
    """How a server should batch this model (command-line flags override it)."""

    max_batch_size: Annotated[int, Meta(ge=1, le=4096)] = 32
    max_delay_ms: Annotated[float, Meta(ge=0, le=1000)] = 0.0


Base64 = Annotated[str, Meta(pattern=whole("[A-Za-z0-9+/]{0,8192}={0,2}"))]


class WrappedKey(_Strict, frozen=True):
    """The crate's data key, wrapped for one recipient (a public key, or a passphrase)."""

    kind: Literal["ec", "x25519", "rsa-oaep", "scrypt"]
    wrapped: Base64
    key_id: (
        Annotated[str, Meta(pattern=whole(SHA256_PATTERN), description="the recipient's key id")]
        | None
    ) = None
    ephemeral: (
        Annotated[Base64, Meta(description="ephemeral public key (DER) for ec / x25519")] | None
    ) = None
    salt: Annotated[Base64, Meta(description="scrypt salt")] | None = None
    log_n: Annotated[int, Meta(ge=10, le=17, description="scrypt cost: n = 2**log_n")] | None = None


class EncryptedFile(_Strict, frozen=True):
    """One encrypted file: its plaintext size and the salt its file key is derived with."""

    path: FilePath
    size: Annotated[int, Meta(ge=0, description="plaintext bytes")]
    salt: Base64


class Encryption(_Strict, frozen=True):
    """Which files are encrypted at rest, and how (files lists the ciphertext hashes)."""

    chunk_size: Annotated[int, Meta(ge=4096, le=64 * 1024 * 1024)]
    recipients: Annotated[list[WrappedKey], Meta(min_length=1, max_length=64)]
    files: Annotated[list[EncryptedFile], Meta(min_length=1)]
    scheme: Literal["aes-256-gcm-chunked-v1"] = "aes-256-gcm-chunked-v1"


class Member(_Strict, frozen=True):
    """One crate a composition runs, pinned by digest (``ref`` says where it came from)."""

    digest: Digest
    ref: Annotated[str, Meta(min_length=1, max_length=200)]


class Composition(_Strict, frozen=True):
    """A crate made of other crates: a ``pipeline`` (each member's outputs feed the next
    one's inputs, by position) or an ``ensemble`` (every member gets the same inputs; the
    outputs are combined)."""

    kind: Literal["pipeline", "ensemble"]
    members: Annotated[list[Member], Meta(min_length=2, max_length=32)]
    combine: (
        Annotated[
            Literal["mean", "vote"],
            Meta(description="ensembles: mean of outputs, or the share of argmax votes"),
        ]
        | None
    ) = None


class GitSource(_Strict, frozen=True):
    """The Git work tree a crate was packed in (read with git itself at pack time)."""

    remote: Annotated[str, Meta(description="the remote's URL, credentials removed")] | None = None
    commit: Annotated[str, Meta(pattern=whole("[0-9a-f]{40}([0-9a-f]{24})?"))] | None = None
    branch: str | None = None
    path: Annotated[str, Meta(description="the packing directory, relative to the top")] = ""
    dirty: bool = False
    changed_files: Annotated[
        list[str],
        Meta(
            max_length=MAX_CHANGED_FILES,
            description="tracked files that differed from the commit (names only, capped)",
        ),
    ] = field(default_factory=list)
    changed_count: Annotated[int, Meta(ge=0, description="how many differed in all")] = 0


class Provenance(_Strict, frozen=True):
    """Where and how the crate was made: the code (Git), the command, the environment.
    Recorded only when the crate was packed inside a Git work tree."""

    source: GitSource
    python: str
    platform: str
    command: Annotated[str, Meta(max_length=4096, description="secrets redacted")] | None = None
    packages: dict[str, str] = field(default_factory=dict)


class Manifest(_Strict, frozen=True):
    """Everything a crate says about itself. ``files`` lists every other file in the crate.

    A crate runs its ``artifacts``, or, for a composition, its member crates."""

    name: Annotated[str, Meta(pattern=whole(NAME_PATTERN))]
    version: Annotated[str, Meta(pattern=whole(VERSION_PATTERN))]
    signature: Signature
    schema_version: Literal[1] = SCHEMA_VERSION
    description: str = ""
    license: str | None = None
    tags: list[str] = field(default_factory=list)
    framework: Framework | None = None
    artifacts: list[Artifact] = field(default_factory=list)
    labels: list[str] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    dependencies: dict[str, str] = field(default_factory=dict)
    lineage: Lineage | None = None
    provenance: Provenance | None = None
    report: Report | None = None
    serving: Serving | None = None
    samples: (
        Annotated[FilePath, Meta(description="safetensors file of example inputs, by input name")]
        | None
    ) = None
    model_card: FilePath | None = None
    encryption: Encryption | None = None
    composition: Composition | None = None
    files: list[FileEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.artifacts and self.composition is None:
            raise ValueError(RUNNABLE)
        check_paths([f.path for f in self.files])

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise CrateFormatError(f"{self.ref}: no file {path!r} in the manifest")

    def encrypted(self, path: str) -> EncryptedFile | None:
        """How ``path`` is encrypted, or None when it is stored in the clear."""
        if self.encryption is None:
            return None
        return next((f for f in self.encryption.files if f.path == path), None)

    def artifact(self, kind: ArtifactKind) -> Artifact | None:
        return next((a for a in self.artifacts if a.kind == kind), None)

    def served_bytes(self) -> int:
        """Bytes of the one form of the weights a server loads (the ONNX artifact where
        there is one, with its external data), not the crate's whole size: a torch-packed
        crate holds the weights three times. A crate without artifacts: all its files."""
        if not self.artifacts:
            return sum(f.size for f in self.files)
        artifact = self.artifact("onnx") or self.artifacts[0]
        paths = {artifact.path, *artifact.data_files}
        return sum(f.size for f in self.files if f.path in paths)

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.canonical_bytes()).hexdigest()

    def file_bytes(self) -> bytes:
        """The bytes written as ``crate.json``: sorted, indented, one trailing newline."""
        text = json.dumps(self.to_dict(), sort_keys=True, indent=2, ensure_ascii=False)
        return (text + "\n").encode()


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def json_schema() -> dict[str, Any]:
    """The JSON Schema of crate.json as generated from the typed records."""
    _, definitions = msgspec.json.schema_components([Manifest], ref_template="#/$defs/{name}")
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://modelcrate.dev/schemas/crate-v1.schema.json",
        **definitions.pop("Manifest"),
        "anyOf": [  # what Manifest.__post_init__ checks (RUNNABLE)
            {"required": ["composition"]},
            {"required": ["artifacts"], "properties": {"artifacts": {"minItems": 1}}},
        ],
        "$defs": definitions,
    }
    _close_objects(schema)
    return schema


def _close_objects(node: Any) -> None:
    """No extra key in any record; descriptions (docstrings) without their indentation."""
    import inspect  # only `make schema` and its test come here

    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            node.setdefault("additionalProperties", False)
        if isinstance(node.get("description"), str):
            node["description"] = inspect.cleandoc(node["description"])
        for value in node.values():
            _close_objects(value)
    elif isinstance(node, list):
        for value in node:
            _close_objects(value)


@cache
def shipped_schema() -> dict[str, Any]:
    """The JSON Schema file shipped inside the package (pinned by a test to ``json_schema()``)."""
    from importlib import resources

    text = resources.files("modelcrate.schemas").joinpath("crate-v1.schema.json").read_text()
    result: dict[str, Any] = json.loads(text)
    return result


def check_paths(paths: list[str]) -> None:
    """Refuse file lists that cannot be written out as one directory on every filesystem:
    a path that is also another's directory (``a`` and ``a/b``) or two paths that differ
    only in case (``Model.onnx`` and ``model.onnx`` are one file on macOS and Windows).
    Raised as CrateFormatError (not a pydantic error) so pack and publish say it in one line.
    """
    seen: dict[str, str] = {}
    for path in paths:
        folded = path.casefold()
        if folded in seen:
            raise CrateFormatError(
                f"crate files {seen[folded]!r} and {path!r} collide: names must differ in more "
                "than case"
            )
        seen[folded] = path
    for path in paths:
        parts = path.casefold().split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            if directory in seen:
                raise CrateFormatError(
                    f"crate file {seen[directory]!r} is also the directory of {path!r}"
                )


def parse_manifest(data: bytes) -> Manifest:
    """Check raw ``crate.json`` bytes against the schema and return the Manifest.

    The records above are the schema: the shipped JSON Schema is generated from them (and a
    test holds a JSON Schema validator to the same verdicts), so one strict pass checks
    everything, in microseconds, whether the bytes come from a file or a registry."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise CrateFormatError(
            f"crate.json is {len(data)} bytes; the limit is {MAX_MANIFEST_BYTES}"
        )
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CrateFormatError(f"crate.json is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise CrateFormatError("crate.json must hold a JSON object")
    found = raw.get("schema_version")
    if isinstance(found, int) and not isinstance(found, bool) and found > SCHEMA_VERSION:
        raise UnsupportedSchemaError(
            f"crate.json has schema_version {found}; this modelcrate understands up to "
            f"{SCHEMA_VERSION}. Upgrade modelcrate to read this crate."
        )
    return checked(Manifest, raw, "crate.json")


def checked(kind: type[T], value: Any, what: str | None = None) -> T:
    """``value`` (JSON-like: dicts, lists, numbers, strings) as a ``kind`` record, checked
    strictly (no string is read as a number, no extra key is allowed); CrateFormatError
    names what is wrong and where."""
    token = _decoding.set(True)
    try:
        return msgspec.convert(value, kind, strict=True)
    except msgspec.ValidationError as exc:
        raise CrateFormatError(
            f"{what or kind.__name__} is invalid {_explain(exc, value)}"
        ) from None
    finally:
        _decoding.reset(token)


_decoding: ContextVar[bool] = ContextVar("decoding", default=False)
_WHERE = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")
_TOO_LONG = re.compile(r"Expected `(array|str|object)` of length <= (\d+)")
_UNKNOWN = re.compile(r"Object contains unknown field `(.*)`")


def _explain(exc: msgspec.ValidationError, value: Any) -> str:
    """msgspec's "Expected `int`, got `str` - at `$.files[0].size`" as
    "at files/0/size: expected `int`, got `str`", with the count for too-long values."""
    match = _WHERE.match(str(exc))
    assert match is not None  # the pattern matches any text
    message, steps = match["message"], []
    for step in _STEP.finditer(match["path"] or ""):
        steps.append(step[1] if step[1] is not None else int(step[2]) if step[2] else "…")
    too_long = _TOO_LONG.match(message)
    if too_long:
        found = _at(value, steps)
        given = f", {len(found)} given" if isinstance(found, list | str | dict) else ""
        message = f"at most {too_long[2]} allowed{given}"
    unknown = _UNKNOWN.match(message)
    if unknown:
        message = f"unknown field {unknown[1]!r} (no additional properties are allowed)"
    where = "/".join(str(s) for s in steps) or "(top level)"
    return f"at {where}: {message[:1].lower()}{message[1:]}"


def _at(value: Any, steps: list[str | int]) -> Any:
    for step in steps:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _number(value: Any) -> Any:
    """numpy and other numeric scalars, as the int or float JSON would hold."""
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value
