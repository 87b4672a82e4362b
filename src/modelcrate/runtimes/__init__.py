"""Runtimes run one artifact of a crate behind the same small protocol.

ONNX Runtime is the default and needs no deep-learning framework. PyTorch and
LiteRT are imported lazily, only when a crate needs them. Each runtime declares
whether ``run`` may be called from several threads at once; ``make_runtime``
wraps the ones that may not in a lock, so every caller (the server's batcher
included) can call any runtime from any thread.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from modelcrate.errors import UsageError

if TYPE_CHECKING:
    from modelcrate.crate import Crate
    from modelcrate.runtimes.composition import CrateSource
    from modelcrate.trust.signing import Policy

RuntimeName = Literal["auto", "onnxruntime", "torch", "litert"]


class Runtime(Protocol):
    """Runs a model: named float/int arrays in, named arrays out."""

    name: str
    thread_safe: bool  # may ``run`` be called from several threads at once?

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Serialized:
    """A runtime that is not thread-safe, called by one thread at a time."""

    thread_safe = True

    def __init__(self, runtime: Runtime) -> None:
        self.runtime, self.name = runtime, runtime.name
        self.lock = threading.Lock()

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            return self.runtime.run(inputs)


def make_runtime(
    crate: Crate,
    runtime: RuntimeName = "auto",
    *,
    threads: int = 0,
    prepack: bool = True,
    source: CrateSource | None = None,
    trust: Policy | None = None,
    identity: str | None = None,
) -> Runtime:
    """The runtime for ``crate``'s best artifact (or ``runtime``'s), safe to call from any
    thread. A composition's members come from ``source`` (checked against ``trust``,
    decrypted with ``identity``)."""
    made = _make(crate, runtime, threads, prepack, source, trust, identity)
    return made if made.thread_safe else Serialized(made)


def _make(
    crate: Crate,
    runtime: RuntimeName,
    threads: int,
    prepack: bool,
    source: CrateSource | None,
    trust: Policy | None,
    identity: str | None,
) -> Runtime:
    manifest = crate.manifest
    if manifest.composition is not None:
        from modelcrate.runtimes.composition import CompositionRuntime, member_crates

        if source is None:
            raise UsageError(f"{manifest.ref} is a composition: load it from its registry")
        members = [
            (
                inputs,
                make_runtime(
                    member, threads=threads, source=source, trust=trust, identity=identity
                ),
            )
            for inputs, member in member_crates(manifest, source, trust, identity)
        ]
        return CompositionRuntime(manifest, members)
    onnx = manifest.artifact("onnx") or manifest.artifact("ort")
    if runtime in ("auto", "onnxruntime") and onnx is not None:
        from modelcrate.runtimes.onnxruntime import OnnxRuntime

        return OnnxRuntime(crate, onnx, threads=threads, prepack=prepack)
    tflite = manifest.artifact("tflite")
    if runtime in ("auto", "litert") and tflite is not None:
        from modelcrate.runtimes.tflite import LiteRTRuntime

        return LiteRTRuntime(crate, tflite)
    exported = manifest.artifact("torch-export")
    if runtime in ("auto", "torch") and exported is not None:
        from modelcrate.runtimes.torch import TorchRuntime

        return TorchRuntime(crate, exported)
    kinds = ", ".join(a.kind for a in manifest.artifacts)
    raise UsageError(f"{manifest.ref}: no artifact runs on runtime {runtime!r} (has: {kinds})")
