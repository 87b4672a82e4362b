"""A TF Serving model directory: ``NAME/1/saved_model.pb`` (+ variables), numbered versions.

From a crate's SavedModel artifact as it was packed, or from its Keras artifact
(loaded with safe_mode and exported with ``model.export``). An existing version
directory is never overwritten: the next free number is used.
"""

from __future__ import annotations

from pathlib import Path

from modelcrate.crate import Crate
from modelcrate.pack.saved_model import write_saved_model


def export(crate: Crate, target: Path, *, image: str | None = None) -> list[Path]:
    model_dir = target / crate.name
    model_dir.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
    version_dir = write_saved_model(
        crate, model_dir / str(max(numbers, default=0) + 1), "a TF Serving export"
    )
    return sorted(p for p in version_dir.rglob("*") if p.is_file())
