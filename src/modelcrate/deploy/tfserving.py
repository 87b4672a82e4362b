"""A TF Serving model directory: ``NAME/1/saved_model.pb`` (+ variables), numbered versions.

From a crate's SavedModel artifact as it was packed, or from its Keras artifact
(loaded with safe_mode and exported with ``model.export``). An existing version
directory is never overwritten: the next free number is used.
"""

from __future__ import annotations

from pathlib import Path

from modelcrate.crate import Crate
from modelcrate.errors import UsageError
from modelcrate.pack.keras import SAVED_MODEL_DIR, read_keras_bytes


def write_model_dir(crate: Crate, target: Path) -> list[Path]:
    manifest = crate.manifest
    saved, keras = manifest.artifact("savedmodel"), manifest.artifact("keras")
    if saved is None and keras is None:
        raise UsageError(
            f"{manifest.ref} has no TensorFlow artifact (SavedModel or Keras) to serve with TF "
            "Serving; pack it from a .keras, .h5 or SavedModel"
        )
    model_dir = target / manifest.name
    model_dir.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
    version_dir = model_dir / str(max(numbers, default=0) + 1)
    if saved is not None:
        for path in [saved.path, *saved.data_files]:
            destination = version_dir / Path(path).relative_to(SAVED_MODEL_DIR)
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(crate.read_bytes(path))
    else:
        assert keras is not None
        model = read_keras_bytes(crate.read_bytes(keras.path), Path(keras.path).suffix)
        model.export(str(version_dir), verbose=False)
    return sorted(p for p in version_dir.rglob("*") if p.is_file())
