"""ONNX Runtime: opens a crate's model by path from its verified local copy."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelcrate.errors import CrateFormatError, InputError, first_line

if TYPE_CHECKING:
    from modelcrate.crate import Crate
    from modelcrate.manifest import Artifact, Manifest


# By default weights of models under this size are prepacked (ONNX Runtime's faster layout,
# a second copy): a hot swap of a bigger model then holds two versions in about twice its
# size, not four times.
PREPACK_BELOW = 1024**3
SEARCH_BLOCK = 16 * 1024 * 1024  # bytes of a model file searched at a time (_mentions_location)
_KEY = b"location"


class OnnxRuntime:
    """Runs a crate's ONNX artifact. ONNX Runtime opens the model by path from the crate's
    local copy (its cache entry or directory), with external data beside it, while the
    files it reads are hashed on another thread; the session is kept only if every hash
    matches.
    An encrypted crate is decrypted in memory and loaded from bytes instead. Either way,
    external data can only come from files the manifest lists for the artifact."""

    name = "onnxruntime"
    thread_safe = True

    def __init__(
        self, crate: Crate, artifact: Artifact, *, threads: int = 0, prepack: bool = True
    ) -> None:
        """``prepack=False``: no prepacked copies of weights. External data is then mapped,
        not read: the session opens at once and costs about the model's size, at the price
        of slower large batches (weights are packed per call)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        if not prepack:
            options.add_session_config_entry("session.disable_prepacking", "1")
        options.intra_op_num_threads = threads
        # An asynchronous run takes one of the session's pool threads as its caller: a
        # session of one thread has none (0 is ONNX Runtime's choice, maybe one).
        self.can_start = threads >= 2
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        if artifact.kind == "ort":
            options.add_session_config_entry("session.load_model_format", "ORT")
        local = crate.localize([artifact.path, *artifact.data_files])
        if local is None:
            model: bytes | str = self._in_memory(crate, artifact, options)
        else:
            path = local.path(artifact.path)
            model = str(path)
            if artifact.kind != "ort":
                check_declared(crate, artifact, external_data_files(path))
        with local or contextlib.nullcontext():  # the session is dropped if a hash fails
            try:
                self.session = ort.InferenceSession(
                    model, sess_options=options, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # ORT raises its own untyped Fail/InvalidGraph errors
                raise CrateFormatError(
                    f"{crate.manifest.ref}: ONNX Runtime cannot load "
                    f"{artifact.path}: {first_line(exc)}"
                ) from None
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _in_memory(self, crate: Crate, artifact: Artifact, options: Any) -> bytes:
        if artifact.data_files:
            names = [check_data_location(p) for p in artifact.data_files]
            buffers = [np.frombuffer(crate.read_bytes(p), dtype=np.uint8) for p in names]
            self._buffers = buffers  # ORT keeps pointers into these
            options.add_external_initializers_from_files_in_memory(
                [p.rsplit("/", 1)[-1] for p in names], buffers, [b.nbytes for b in buffers]
            )
        model_bytes = crate.read_bytes(artifact.path)
        # ORT resolves external data of a model loaded from bytes against the working
        # directory, so every location must be one of the files this artifact lists.
        if artifact.kind != "ort":
            check_declared(crate, artifact, external_data_files(model_bytes))
        return model_bytes

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self.session.run(self.output_names, inputs)
        except Exception as exc:  # shape errors inside the graph surface here
            raise _rejected(exc) from None
        return dict(zip(self.output_names, results, strict=True))

    def start(self, inputs: dict[str, np.ndarray], done: Callable[[Outcome], None]) -> None:
        """Run ``inputs`` on ONNX Runtime's own threads and return at once; ``done`` is
        called on one of them with the outputs, or the error. No Python thread waits for
        the run, so none has to take the GIL to begin it. Only where ``can_start``."""

        def finished(results: list[np.ndarray], _: object, error: str) -> None:
            if error:
                done(_rejected(error))
            else:
                done(dict(zip(self.output_names, results, strict=True)))

        try:
            self.session.run_async(self.output_names, inputs, finished, None)
        except Exception as exc:  # inputs of the wrong name or type are refused at once
            raise _rejected(exc) from None


Outcome = dict[str, np.ndarray] | BaseException


def _rejected(error: BaseException | str) -> InputError:
    return InputError(f"ONNX Runtime rejected the inputs: {first_line(error)}")


def prepacked_by_default(manifest: Manifest) -> bool:
    return manifest.served_bytes() < PREPACK_BELOW


def resident_bytes(manifest: Manifest, prepack: bool | None = None) -> int:
    """Memory one loaded version's weights take: the served form, twice when prepacked
    (``prepack`` None: the default for its size)."""
    packed = prepacked_by_default(manifest) if prepack is None else prepack
    return manifest.served_bytes() * (2 if packed else 1)


def check_declared(crate: Crate, artifact: Artifact, found: list[str]) -> None:
    """Refuse external data files the manifest does not list for ``artifact``: a load
    hashes only the artifact's listed files, so an unlisted one would be read unchecked."""
    undeclared = sorted(set(found) - {p.rsplit("/", 1)[-1] for p in artifact.data_files})
    if undeclared:
        raise CrateFormatError(
            f"{crate.manifest.ref}: {artifact.path} reads external data {undeclared} "
            "that the manifest does not list for it"
        )


def external_data_files(model: Any) -> list[str]:
    """File names an ONNX model (bytes, a path or a ModelProto) reads external data from."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    if isinstance(model, Path):
        if not _mentions_location(model):
            return []
        try:  # a model with external data keeps only its graph in the .onnx file: small
            model = onnx.load(str(model), load_external_data=False)
        except Exception as exc:  # protobuf DecodeError
            raise CrateFormatError(f"not a valid ONNX model: {first_line(exc)}") from None
    elif isinstance(model, bytes):
        if not any(  # blocks overlap by the key's length less one: none is missed
            _holds_key(model, start, min(len(model), start + SEARCH_BLOCK + len(_KEY) - 1))
            for start in range(0, len(model), SEARCH_BLOCK)
        ):
            return []
        try:
            model = onnx.load_from_string(model)
        except Exception as exc:  # protobuf DecodeError
            raise CrateFormatError(f"not a valid ONNX model: {first_line(exc)}") from None
    locations = set()
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            info = {entry.key: entry.value for entry in tensor.external_data}
            locations.add(check_data_location(info.get("location", "")))
    return sorted(locations)


def _mentions_location(path: Path) -> bool:
    """Whether the file holds b"location" (every external-data entry has this key), read in
    blocks, never whole (a model in memory is searched in the same blocks). A server loads
    new versions on a low-priority thread, and each time such a thread takes the GIL, or
    holds it while the OS runs others, the event loop may wait for it. So the search takes
    the GIL twice per block and holds it only briefly: the read and the C library's
    ``memmem`` (see ``_holds_key``) both run without it. The block is left unwritten
    until the first read fills it (``np.empty``, not a zeroed ``bytearray``, whose 16 MiB
    of zeros and page faults held the GIL for 5-9 ms). benchmarks/stalls.py measures the
    event loop's stalls beside it."""
    with path.open("rb", buffering=0) as stream:
        size = min(SEARCH_BLOCK, os.fstat(stream.fileno()).st_size) + len(_KEY) - 1
        buffer = np.empty(size, np.uint8)
        view = buffer.data  # writable, no copy
        kept = 0  # the previous block's last bytes, which a key may straddle
        while read := stream.readinto(view[kept : kept + SEARCH_BLOCK]):
            size = kept + read
            if _holds_key(buffer, 0, size):
                return True
            kept = min(len(_KEY) - 1, size)
            buffer[:kept] = buffer[size - kept : size]
    return False


def _holds_key(data: bytes | np.ndarray, start: int, end: int) -> bool:
    """Whether ``data[start:end]`` holds b"location": one call of the C library's
    ``memmem``, which ctypes makes without the GIL; a byte-string search (holding the
    GIL) where the C library has none."""
    if end - start < len(_KEY):
        return False
    memmem = _memmem()
    if memmem is None:
        block = data if isinstance(data, bytes) else data.tobytes()  # an array: one block
        return block.find(_KEY, start, end) >= 0
    address = np.frombuffer(data, np.uint8).ctypes.data + start
    return memmem(address, end - start, _KEY, len(_KEY)) is not None


@functools.cache
def _memmem() -> Callable[[int, int, bytes, int], int | None] | None:
    """libc's ``memmem`` (glibc, musl, macOS), or None (Windows)."""
    try:
        memmem = ctypes.CDLL(None).memmem
    except (AttributeError, OSError, TypeError):
        return None
    memmem.restype = ctypes.c_void_p
    memmem.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    found: Callable[[int, int, bytes, int], int | None] = memmem
    return found


def check_data_location(location: str) -> str:
    """External data must sit beside the model: a plain file name, never a path."""
    if "/" in location or "\\" in location or location in {"", ".", ".."}:
        raise CrateFormatError(
            f"ONNX external data location {location!r} is not a plain file name beside the model"
        )
    return location
