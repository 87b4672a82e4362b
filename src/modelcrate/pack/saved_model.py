"""The SavedModel writer: a crate's TensorFlow artifact as a SavedModel directory, for TF
Serving exports and the TFLite converter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelcrate.errors import UsageError
from modelcrate.pack.keras import SAVED_MODEL_DIR, read_keras_bytes


def write_saved_model(crate: Any, directory: Path, purpose: str) -> Path:
    """The crate as a SavedModel in ``directory``: its savedmodel artifact as packed, or its
    Keras artifact exported. ``purpose`` names what needs it, for the error otherwise."""
    manifest = crate.manifest
    saved, keras_artifact = manifest.artifact("savedmodel"), manifest.artifact("keras")
    if saved is not None:
        for member in [saved.path, *saved.data_files]:
            destination = directory / Path(member).relative_to(SAVED_MODEL_DIR)
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(crate.read_bytes(member))
    elif keras_artifact is not None:
        model = read_keras_bytes(
            crate.read_bytes(keras_artifact.path), Path(keras_artifact.path).suffix
        )
        model.export(str(directory), verbose=False)
    else:
        raise UsageError(
            f"{manifest.ref}: {purpose} needs a TensorFlow artifact (pack the model from "
            ".keras, .h5 or a SavedModel directory)"
        )
    return directory
