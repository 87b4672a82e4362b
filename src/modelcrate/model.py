"""Model: a loaded crate you can call. ``load`` turns a reference or a path into one."""

from __future__ import annotations

import functools
import hashlib
import os
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from modelcrate.crate import Crate
from modelcrate.errors import CrateFormatError, InputError, UsageError
from modelcrate.manifest import Manifest, TensorSpec
from modelcrate.refs import is_local_crate, is_remote, split_remote
from modelcrate.registry import as_registry
from modelcrate.runtimes import RuntimeName, make_runtime
from modelcrate.trust.crypto import unlock

if TYPE_CHECKING:
    from modelcrate.registry import ModelRegistry
    from modelcrate.trust.signing import Policy, TrustArg


class Model:
    """A crate bound to a runtime. ``predict`` checks inputs against the crate's signature."""

    def __init__(
        self,
        crate: Crate,
        runtime: RuntimeName = "auto",
        *,
        threads: int = 0,
        registry: ModelRegistry | str | None = None,
        prepack: bool = True,
        trust: Policy | None = None,
        identity: str | None = None,
    ) -> None:
        """``threads``: intra-op threads for ONNX Runtime (0 = one per core). ``registry``:
        where a pipeline or ensemble finds its members (default: the default registry).
        ``prepack=False``: ONNX Runtime keeps no prepacked weight copies (about half the
        memory for big models, faster loads, slower large batches)."""
        self.crate = crate
        source = None
        if crate.manifest.composition is not None:
            source = as_registry(registry)
        self.runtime = make_runtime(
            crate,
            runtime,
            threads=threads,
            prepack=prepack,
            source=source,
            trust=trust,
            identity=identity,
        )

    def __repr__(self) -> str:
        return f"Model({self.manifest.ref}, runtime={self.runtime.name})"

    @property
    def manifest(self) -> Manifest:
        return self.crate.manifest

    @property
    def labels(self) -> list[str] | None:
        return self.manifest.labels

    def predict(self, inputs: Any) -> dict[str, np.ndarray]:
        """Run the model. ``inputs``: one array, a sequence of arrays, or a dict name -> array."""
        feeds = prepare_inputs(self.manifest.signature.inputs, inputs)
        return self.runtime.run(feeds)

    def __call__(self, inputs: Any) -> dict[str, np.ndarray]:
        return self.predict(inputs)

    def samples(self) -> dict[str, np.ndarray] | None:
        """The example inputs kept in the crate at pack time, by input name (None if absent)."""
        if self.manifest.samples is None:
            return None
        return read_safetensors(self.crate.read_bytes(self.manifest.samples), self.manifest.samples)

    def example_inputs(self) -> dict[str, np.ndarray]:
        """The crate's samples, else seeded random inputs shaped by the signature (8 rows
        for a dynamic dimension)."""
        samples = self.samples()
        if samples:
            return samples
        rng = np.random.default_rng(0)
        random = {}
        for spec in self.manifest.signature.inputs:
            shape = [8 if d < 0 else d for d in spec.shape]
            random[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        return random

    def to_torch(self, *, trainable: bool = True, freeze: str | list[str] | None = None) -> Any:
        """A torch.nn.Module rebuilt from the crate alone (needs torch): from its ``.pt2``
        artifact, else converted from its ONNX artifact (Keras, SavedModel and ONNX crates)
        and checked against ONNX Runtime on the crate's samples (see ``TORCH_PARITY``).

        Parameters keep their original names. ``trainable=False`` freezes everything;
        ``freeze`` freezes by name prefix, or ``"backbone"`` (all but the head)."""
        from modelcrate.runtimes.torch import freeze_parameters, load_module

        artifact = self.manifest.artifact("torch-export")
        module = load_module(self.crate, artifact) if artifact else self._converted_module()
        for parameter in module.parameters():
            parameter.requires_grad_(trainable)
        if trainable and freeze is not None:
            freeze_parameters(module, freeze)
        return module

    def _converted_module(self) -> Any:
        """The ONNX artifact as a torch module, refused unless it matches ONNX Runtime."""
        from modelcrate.runtimes.from_onnx import crate_module
        from modelcrate.runtimes.torch import import_torch

        torch = import_torch()
        module = crate_module(self.crate)
        inputs = self.example_inputs()
        expected = self.predict(inputs)
        with torch.no_grad():
            result = module(*(torch.from_numpy(a) for a in inputs.values()))
        got = list(result) if isinstance(result, (tuple, list)) else [result]
        for (name, want), have in zip(expected.items(), got, strict=True):
            want = want.astype(np.float64)
            diff = float(np.abs(want - have.numpy().astype(np.float64)).max(initial=0.0))
            allowed = TORCH_PARITY * max(1.0, float(np.abs(want).max(initial=0.0)))
            if not diff <= allowed:
                raise CrateFormatError(
                    f"{self.manifest.ref}: the torch module converted from ONNX differs from "
                    f"ONNX Runtime by {diff:.3g} on output {name!r} (allowed {allowed:.3g})"
                )
        return module


TORCH_PARITY = 1e-4  # converted torch module vs ONNX Runtime: max abs difference (x max |y|)


def load(
    ref: str | os.PathLike[str] | Crate,
    *,
    registry: ModelRegistry | str | None = None,
    runtime: RuntimeName = "auto",
    trust: TrustArg = None,
    identity: str | os.PathLike[str] | None = None,
    passphrase: str | None = None,
) -> Model:
    """Load a model from ``name[@version|@alias|@sha256:…]``, a ``.crate`` file or a directory.

    ``trust``: public key file(s) or directories; the crate must then be signed by one of
    them (a local crate's signature is ``<path>.sig``). A registry's own signing policy
    always applies. ``identity`` (a private key file) or ``passphrase`` (default
    ``$MODELCRATE_PASSPHRASE``) decrypts an encrypted crate, in memory."""
    from modelcrate.trust.signing import as_policy, verify_local

    policy = as_policy(trust)
    if not isinstance(ref, (Crate, os.PathLike)) and is_remote(str(ref)):
        remote = split_remote(str(ref))
        if remote is None:
            raise UsageError(f"{ref}: expected https://host/name@version")
        registry, ref = remote  # that server, opened below as the registry
    if isinstance(ref, Crate):
        crate = ref
        crate.screen()  # hashes come as files are read
    elif isinstance(ref, os.PathLike) or is_local_crate(str(ref)):
        crate = Crate.open(ref)
        crate.screen()  # hashes come as files are read
        if policy is not None:
            verify_local(crate, ref, policy)
    else:
        crate, registry = _from_registry(str(ref), registry, policy)
    crate = unlock(crate, identity, passphrase=passphrase)
    ident = None if identity is None else os.fspath(identity)
    return Model(crate, runtime, registry=registry, trust=policy, identity=ident)


def _from_registry(
    ref: str, registry: ModelRegistry | str | None, policy: Policy | None
) -> tuple[Crate, ModelRegistry]:
    """``ref``'s crate from ``registry`` (opened here if not open). Files are fetched when
    read and verified as they are (a runtime reads only its own: model.onnx, not the .pt2
    and safetensors forms beside it). A connection to a server opened here stays open as
    long as the crate can read files, and closes when it goes."""
    from modelcrate.registry.api import Registry

    opened = as_registry(registry)
    connection = opened is not registry and not isinstance(opened, Registry)
    try:
        crate = opened.get(ref, trust=policy)
    except BaseException:
        if connection:
            opened.close()
        raise
    if connection:
        weakref.finalize(crate.source, opened.close)
    return crate, opened


def fingerprint(*arrays: np.ndarray) -> str:
    """sha256 over the arrays' dtypes, shapes and bytes: names a data set exactly."""
    digest = hashlib.sha256()
    for array in arrays:
        contiguous = np.ascontiguousarray(array)
        digest.update(f"{contiguous.dtype.str}{contiguous.shape}".encode())
        digest.update(contiguous.tobytes())
    return "sha256:" + digest.hexdigest()


def labelled(
    specs: Sequence[TensorSpec], data: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Split ``data`` (arrays named like the inputs, plus labels ``y`` or ``labels``) into
    inputs by name and labels; a model with one input takes any single array name."""
    names = [s.name for s in specs]
    labels = data.get("y", data.get("labels"))
    inputs = {k: v for k, v in data.items() if k not in ("y", "labels")}
    if len(names) == 1 and len(inputs) == 1:
        inputs = {names[0]: next(iter(inputs.values()))}
    missing = [n for n in names if n not in inputs]
    if missing:
        raise UsageError(f"data has no arrays for inputs {missing} (found {sorted(inputs)})")
    return {n: inputs[n] for n in names}, labels


MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def read_safetensors(data: bytes, name: str) -> dict[str, np.ndarray]:
    """Tensors from safetensors bytes; a lying header is a CrateFormatError, never a crash.

    The header length is checked against the data before anything is parsed; the
    safetensors library then checks that offsets tile the buffer and match each shape."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    if len(data) < 8:
        raise CrateFormatError(f"{name} is not a safetensors file (shorter than its header size)")
    header = int.from_bytes(data[:8], "little")
    if header > min(MAX_SAFETENSORS_HEADER, len(data) - 8):
        raise CrateFormatError(
            f"{name}: safetensors header claims {header} bytes; the file has {len(data) - 8}"
        )
    try:
        return load(data)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise CrateFormatError(f"{name} is not a valid safetensors file: {exc}") from None


def prepare_inputs(specs: Sequence[TensorSpec], inputs: Any) -> dict[str, np.ndarray]:
    """Match inputs to the signature by name or position; cast safely; check shapes."""
    if type(inputs) is dict and len(inputs) == len(specs):  # a server's decoded request
        try:
            return {spec.name: conform(spec, inputs[spec.name]) for spec in specs}
        except KeyError:  # named otherwise: the general path says how
            pass
    names = [s.name for s in specs]
    if isinstance(inputs, Mapping):
        unknown = sorted(set(inputs) - set(names))
        missing = [n for n in names if n not in inputs]
        if unknown or missing:
            raise InputError(
                f"inputs {sorted(inputs)} do not match the signature {names}"
                + (f": missing {missing}" if missing else "")
                + (f": unknown {unknown}" if unknown else "")
            )
        values = [inputs[n] for n in names]
    elif len(specs) == 1:
        values = [inputs]
    elif isinstance(inputs, (list, tuple)) and len(inputs) == len(specs):
        values = list(inputs)
    else:
        raise InputError(f"the model takes {len(specs)} inputs {names}; pass a dict name -> array")
    return {spec.name: conform(spec, value) for spec, value in zip(specs, values, strict=True)}


def conform(spec: TensorSpec, value: Any) -> np.ndarray:
    """Return ``value`` as an array of the spec's dtype and shape, or raise InputError."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InputError(f"input {spec.name!r}: not an array ({exc})") from None
    given, expected = array, _spec_dtype(spec.dtype)  # errors name what was given
    if array.dtype != expected:
        if not castable(array.dtype, expected):
            raise InputError(f"input {spec.name!r}: expected {spec.describe()}, got {_got(given)}")
        array = array.astype(expected)
    if not _shape_fits(tuple(spec.shape), array.shape):
        raise InputError(
            f"input {spec.name!r}: expected shape {spec.describe()}, got {_got(given)}"
        )
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)


@functools.lru_cache(maxsize=1024)
def _shape_fits(want: tuple[int, ...], have: tuple[int, ...]) -> bool:
    """Whether an array's shape matches a spec's (-1: any size)."""
    return len(want) == len(have) and all(w in (-1, h) for w, h in zip(want, have, strict=True))


@functools.cache
def _spec_dtype(name: str) -> np.dtype[Any]:
    return np.dtype(name) if name != "string" else np.dtype(object)


def _got(array: np.ndarray) -> str:
    return f"{list(array.shape)} ({array.dtype})"


def castable(source: np.dtype, target: np.dtype) -> bool:
    """Casts predict makes for you: within a kind (float64 -> float32), and bool/int -> float
    (JSON numbers arrive as int64). Never float -> int, never to or from strings."""
    if source.kind in "OUSV" or target.kind in "OUSV":
        return False
    if target.kind == "f":
        return source.kind in "biuf"
    return bool(np.can_cast(source, target, "same_kind"))
