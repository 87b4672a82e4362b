"""ONNX Runtime: builds an InferenceSession from verified bytes, external data in memory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from modelcrate.errors import CrateFormatError, InputError, first_line

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
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        if artifact.data_files:
            names = [check_data_location(p) for p in artifact.data_files]
            buffers = [np.frombuffer(crate.read_bytes(p), dtype=np.uint8) for p in names]
            self._buffers = buffers  # ORT keeps pointers into these
            options.add_external_initializers_from_files_in_memory(
                [p.rsplit("/", 1)[-1] for p in names], buffers, [b.nbytes for b in buffers]
            )
        model_bytes = crate.read_bytes(artifact.path)
        if artifact.kind == "ort":
            options.add_session_config_entry("session.load_model_format", "ORT")
        # ORT resolves external data of a model loaded from bytes against the working
        # directory, so every location must be one of the files this artifact lists.
        found = [] if artifact.kind == "ort" else external_data_files(model_bytes)
        undeclared = sorted(set(found) - set(artifact.data_files))
        if undeclared:
            raise CrateFormatError(
                f"{crate.manifest.ref}: {artifact.path} reads external data {undeclared} "
                "that the manifest does not list for it"
            )
        try:
            self.session = ort.InferenceSession(
                model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own untyped Fail/InvalidGraph errors
            raise CrateFormatError(
                f"{crate.manifest.ref}: ONNX Runtime cannot load {artifact.path}: {first_line(exc)}"
            ) from None
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self.session.run(self.output_names, inputs)
        except Exception as exc:  # shape errors inside the graph surface here
            raise InputError(f"ONNX Runtime rejected the inputs: {first_line(exc)}") from None
        return dict(zip(self.output_names, results, strict=True))


def external_data_files(model: Any) -> list[str]:
    """File names an ONNX model (bytes or ModelProto) reads external data from."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    if isinstance(model, bytes):
        if b"location" not in model:  # every external-data entry carries this key
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


def check_data_location(location: str) -> str:
    """External data must sit beside the model: a plain file name, never a path."""
    if "/" in location or "\\" in location or location in {"", ".", ".."}:
        raise CrateFormatError(
            f"ONNX external data location {location!r} is not a plain file name beside the model"
        )
    return location
