"""ONNX Runtime: builds an InferenceSession from verified bytes, external data in memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from modelcrate.errors import CrateFormatError, InputError

if TYPE_CHECKING:
    from modelcrate.crate import Crate
    from modelcrate.manifest import Artifact


class OnnxRuntime:
    """Runs a crate's ONNX artifact; the files are read (and verified) from the crate, never
    opened by path, so external data can only come from files the manifest lists."""

    name = "onnxruntime"

    def __init__(self, crate: Crate, artifact: Artifact, *, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        if artifact.data_files:
            names = [check_data_location(p) for p in artifact.data_files]
            buffers = [np.frombuffer(crate.read_bytes(p), dtype=np.uint8) for p in names]
            self._buffers = buffers  # ORT keeps pointers into these
            options.add_external_initializers_from_files_in_memory(
                [p.rsplit("/", 1)[-1] for p in names], buffers, [b.nbytes for b in buffers]
            )
        model_bytes = crate.read_bytes(artifact.path)
        try:
            self.session = ort.InferenceSession(
                model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own untyped Fail/InvalidGraph errors
            raise CrateFormatError(
                f"{crate.manifest.ref}: ONNX Runtime cannot load {artifact.path}: "
                f"{_first_line(exc)}"
            ) from None
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self.session.run(self.output_names, inputs)
        except Exception as exc:  # shape errors inside the graph surface here
            raise InputError(f"ONNX Runtime rejected the inputs: {_first_line(exc)}") from None
        return dict(zip(self.output_names, results, strict=True))


def check_data_location(location: str) -> str:
    """External data must sit beside the model: a plain file name, never a path."""
    if "/" in location or "\\" in location or location in {"", ".", ".."}:
        raise CrateFormatError(
            f"ONNX external data location {location!r} is not a plain file name beside the model"
        )
    return location


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
