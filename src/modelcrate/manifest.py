"""The crate manifest (``crate.json``): typed model, JSON Schema, canonical bytes, digest.

The manifest is pure data under a closed schema (``additionalProperties:
false`` everywhere): nothing in it names code to import. Its digest is the
sha256 of its canonical JSON (sorted keys, no spaces, UTF-8), so the digest
identifies a crate whatever whitespace its ``crate.json`` was written with.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import resources
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class TensorSpec(_Strict):
    """One named input or output: dtype and shape, -1 for a dynamic dimension."""

    name: str = Field(min_length=1, max_length=256)
    dtype: DType
    shape: list[int]

    def describe(self) -> str:
        return f"{self.shape} ({self.dtype})"


class Signature(_Strict):
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)


class Parity(_Strict):
    """How closely an artifact reproduces the model it was exported from."""

    reference: str = Field(description="what it was compared with, e.g. 'torch'")
    max_abs_diff: float
    samples: int = Field(ge=1)


class Artifact(_Strict):
    """One runnable (or loadable) form of the model inside the crate."""

    kind: ArtifactKind
    path: str = Field(pattern=f"^{FILE_PATH_PATTERN}$")
    precision: Precision = "fp32"
    data_files: list[Annotated[str, Field(pattern=f"^{FILE_PATH_PATTERN}$")]] = Field(
        default_factory=list, description="external data the artifact reads (ONNX external data)"
    )
    opset: int | None = None
    parity: Parity | None = None


class FileEntry(_Strict):
    path: str = Field(pattern=f"^{FILE_PATH_PATTERN}$")
    size: int = Field(ge=0)
    sha256: str = Field(pattern=f"^{SHA256_PATTERN}$")


class Framework(_Strict):
    name: str
    version: str


class Parent(_Strict):
    digest: str = Field(pattern=f"^{DIGEST_PATTERN}$")
    ref: str | None = None


class Lineage(_Strict):
    parents: list[Parent] = Field(default_factory=list, max_length=MAX_PARENTS)
    operation: str | None = None
    parameters: dict[str, str | int | float | bool] = Field(default_factory=dict)


class Report(_Strict):
    """How an optimized crate compares with its parent, measured when it was made."""

    parent: str = Field(pattern=f"^{DIGEST_PATTERN}$")
    data: Literal["crate samples", "user data", "random"]
    samples: int = Field(ge=1)
    size_ratio: float
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float | None = None
    accuracy: float | None = None
    parent_accuracy: float | None = None
    latency_ratio: float
    sparsity: float | None = None


class Serving(_Strict):
    """How a server should batch this model (command-line flags override it)."""

    max_batch_size: int = Field(default=32, ge=1, le=4096)
    max_delay_ms: float = Field(default=0.0, ge=0, le=1000)


Base64 = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{0,8192}={0,2}$")]


class WrappedKey(_Strict):
    """The crate's data key, wrapped for one recipient (a public key, or a passphrase)."""

    kind: Literal["ec", "x25519", "rsa-oaep", "scrypt"]
    key_id: str | None = Field(
        default=None, pattern=f"^{SHA256_PATTERN}$", description="the recipient's key id"
    )
    ephemeral: Base64 | None = Field(
        default=None, description="ephemeral public key (DER) for ec / x25519"
    )
    salt: Base64 | None = Field(default=None, description="scrypt salt")
    log_n: int | None = Field(default=None, ge=10, le=17, description="scrypt cost: n = 2**log_n")
    wrapped: Base64


class EncryptedFile(_Strict):
    """One encrypted file: its plaintext size and the salt its file key is derived with."""

    path: str = Field(pattern=f"^{FILE_PATH_PATTERN}$")
    size: int = Field(ge=0, description="plaintext bytes")
    salt: Base64


class Encryption(_Strict):
    """Which files are encrypted at rest, and how (files lists the ciphertext hashes)."""

    scheme: Literal["aes-256-gcm-chunked-v1"] = "aes-256-gcm-chunked-v1"
    chunk_size: int = Field(ge=4096, le=64 * 1024 * 1024)
    recipients: list[WrappedKey] = Field(min_length=1, max_length=64)
    files: list[EncryptedFile] = Field(min_length=1)


class Member(_Strict):
    """One crate a composition runs, pinned by digest (``ref`` says where it came from)."""

    digest: str = Field(pattern=f"^{DIGEST_PATTERN}$")
    ref: str = Field(min_length=1, max_length=200)


class Composition(_Strict):
    """A crate made of other crates: a ``pipeline`` (each member's outputs feed the next
    one's inputs, by position) or an ``ensemble`` (every member gets the same inputs; the
    outputs are combined)."""

    kind: Literal["pipeline", "ensemble"]
    members: list[Member] = Field(min_length=2, max_length=32)
    combine: Literal["mean", "vote"] | None = Field(
        default=None, description="ensembles: mean of outputs, or the share of argmax votes"
    )


class GitSource(_Strict):
    """The Git work tree a crate was packed in (read with git itself at pack time)."""

    remote: str | None = Field(default=None, description="the remote's URL, credentials removed")
    commit: str | None = Field(default=None, pattern="^[0-9a-f]{40}([0-9a-f]{24})?$")
    branch: str | None = None
    path: str = Field(default="", description="the packing directory, relative to the top")
    dirty: bool = False
    changed_files: list[str] = Field(
        default_factory=list,
        max_length=MAX_CHANGED_FILES,
        description="tracked files that differed from the commit (names only, capped)",
    )
    changed_count: int = Field(default=0, ge=0, description="how many differed in all")


class Provenance(_Strict):
    """Where and how the crate was made: the code (Git), the command, the environment.
    Recorded only when the crate was packed inside a Git work tree."""

    source: GitSource
    command: str | None = Field(default=None, max_length=4096, description="secrets redacted")
    python: str
    platform: str
    packages: dict[str, str] = Field(default_factory=dict)


class Manifest(_Strict):
    """Everything a crate says about itself. ``files`` lists every other file in the crate.

    A crate runs its ``artifacts``, or, for a composition, its member crates."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        defer_build=True,
        json_schema_extra={
            "anyOf": [
                {"required": ["composition"]},
                {"required": ["artifacts"], "properties": {"artifacts": {"minItems": 1}}},
            ]
        },
    )

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=f"^{NAME_PATTERN}$")
    version: str = Field(pattern=f"^{VERSION_PATTERN}$")
    description: str = ""
    license: str | None = None
    tags: list[str] = Field(default_factory=list)
    framework: Framework | None = None
    artifacts: list[Artifact] = Field(default_factory=list)
    signature: Signature
    labels: list[str] | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    dependencies: dict[str, str] = Field(default_factory=dict)
    lineage: Lineage | None = None
    provenance: Provenance | None = None
    report: Report | None = None
    serving: Serving | None = None
    samples: str | None = Field(
        default=None,
        pattern=f"^{FILE_PATH_PATTERN}$",
        description="safetensors file of example inputs, by input name",
    )
    model_card: str | None = Field(default=None, pattern=f"^{FILE_PATH_PATTERN}$")
    encryption: Encryption | None = None
    composition: Composition | None = None
    files: list[FileEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _runnable(self) -> Manifest:
        if not self.artifacts and self.composition is None:
            raise ValueError("a crate needs at least one artifact, or a composition")
        check_paths([f.path for f in self.files])
        return self

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

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

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
    """The JSON Schema of crate.json as generated from the typed model."""
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://modelcrate.dev/schemas/crate-v1.schema.json"
    _close_objects(schema)
    return schema


def _close_objects(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            node.setdefault("additionalProperties", False)
        for value in node.values():
            _close_objects(value)
    elif isinstance(node, list):
        for value in node:
            _close_objects(value)


@cache
def shipped_schema() -> dict[str, Any]:
    """The JSON Schema file shipped inside the package (pinned by a test to ``json_schema()``)."""
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


def parse_manifest(data: bytes, *, stored: bool = False) -> Manifest:
    """Validate raw ``crate.json`` bytes against the shipped schema and return the Manifest.

    ``stored``: the bytes come from a registry that checked them against the schema when
    they were published (their digest is checked by the caller), so only the typed model
    (closed, like the schema) is built: loading skips the JSON Schema engine."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise CrateFormatError(
            f"crate.json is {len(data)} bytes; the limit is {MAX_MANIFEST_BYTES}"
        )
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CrateFormatError(f"crate.json is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise CrateFormatError("crate.json must hold a JSON object")
    found = raw.get("schema_version")
    if isinstance(found, int) and not isinstance(found, bool) and found > SCHEMA_VERSION:
        raise UnsupportedSchemaError(
            f"crate.json has schema_version {found}; this modelcrate understands up to "
            f"{SCHEMA_VERSION}. Upgrade modelcrate to read this crate."
        )
    if not stored:
        _check_schema(raw)
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "/".join(str(p) for p in first["loc"])
        raise CrateFormatError(f"crate.json is invalid at {where}: {first['msg']}") from None


def _check_schema(raw: dict[str, Any]) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(shipped_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(raw))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        message = error.message
        if error.validator in ("maxItems", "maxLength"):  # the message would repeat the value
            message = f"at most {error.validator_value} allowed, {len(error.instance)} given"
        if error.validator == "anyOf" and not error.absolute_path:
            message = "a crate needs at least one artifact, or a composition"
        raise CrateFormatError(f"crate.json is invalid at {where}: {message}")
