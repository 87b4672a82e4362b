"""Packing: turn a model (torch module, .onnx file, .pt2 file) into a Crate.

Each builder module (``onnx.py``, ``torch.py``) exposes the same ``build``
function that writes artifact files into a work directory and returns a
``Build``; ``pack`` adds the metadata, hashes every file and writes the manifest.
"""

from __future__ import annotations

import os
import shutil
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np

from modelcrate.crate import Crate, DirectorySource, check_path, file_entry, temporary_directory
from modelcrate.errors import PackError, UsageError
from modelcrate.manifest import (
    MANIFEST_NAME,
    Lineage,
    Manifest,
    Report,
    Serving,
    checked,
)
from modelcrate.pack.build import Build
from modelcrate.pack.provenance import collect as collect_provenance
from modelcrate.refs import check_name, check_version

MODEL_CARD = "README.md"
SAMPLES_FILE = "samples.safetensors"


def pack(
    model: Any,
    *,
    name: str,
    version: str,
    example_inputs: tuple[Any, ...] | None = None,
    labels: list[str] | str | os.PathLike[str] | None = None,
    metrics: dict[str, float] | None = None,
    description: str = "",
    license: str | None = None,
    tags: list[str] | None = None,
    model_card: str | os.PathLike[str] | None = None,
    lineage: Lineage | None = None,
    report: Report | None = None,
    samples: Any = None,
    serving: Serving | dict[str, Any] | None = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    parity_tolerance: float = 1e-3,
    keras_allow: list[str] | None = None,
    source_dir: str | os.PathLike[str] | None = None,
    provenance: bool = True,
) -> Crate:
    """Pack a torch ``nn.Module`` (with ``example_inputs``), a ``.onnx`` file or a ``.pt2`` file.

    ``samples`` (an array, or a dict by input name) are example inputs kept in the crate
    (``samples.safetensors``) for warm-up and parity checks; a torch module's
    ``example_inputs`` are kept by default. ``serving`` (``max_batch_size``,
    ``max_delay_ms``) tells servers how to batch the model.

    ``provenance`` (on by default) records the Git commit, branch, remote (without
    credentials) and uncommitted files of the work tree holding ``source_dir`` (default:
    the working directory), the command line (secrets redacted), Python, platform and
    package versions; outside a Git work tree nothing is recorded.
    """
    check_name(name)
    check_version(version)
    origin = collect_provenance(source_dir) if provenance else None
    crate_owner = _Owner()
    workdir = temporary_directory(crate_owner, prefix=f"modelcrate-pack-{name}-")
    build = _dispatch(
        model,
        workdir,
        example_inputs=example_inputs,
        input_names=input_names,
        output_names=output_names,
        parity_tolerance=parity_tolerance,
        keras_allow=keras_allow or [],
    )
    card = _write_model_card(model_card, workdir)
    sample_file = _write_samples(build, samples, workdir)
    manifest = Manifest(
        name=name,
        version=version,
        description=description,
        license=license,
        tags=sorted(set(tags or [])),
        framework=build.framework,
        artifacts=build.artifacts,
        signature=build.signature,
        labels=read_labels(labels),
        metrics=dict(metrics or {}),
        dependencies={**_versions("modelcrate", "onnx", "onnxruntime"), **build.dependencies},
        lineage=lineage,
        provenance=origin,
        report=report,
        serving=checked(Serving, serving, "serving") if isinstance(serving, dict) else serving,
        samples=sample_file,
        model_card=card,
        files=[file_entry(p, p.relative_to(workdir).as_posix()) for p in _files(workdir)],
    )
    (workdir / MANIFEST_NAME).write_bytes(manifest.file_bytes())
    crate = Crate(manifest, DirectorySource(workdir))
    crate._owner = crate_owner  # type: ignore[attr-defined]  # keeps the work dir alive
    return crate


class _Owner:
    """Lifetime anchor for a pack work directory."""


def _dispatch(model: Any, workdir: Path, **options: Any) -> Build:
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        from modelcrate.pack import keras as keras_builder

        if keras_builder.is_saved_model(path):
            return keras_builder.build(path, workdir, **options)
        if not path.is_file():
            raise UsageError(f"{path}: no such model file")
        with path.open("rb") as handle:
            head = handle.read(8)
        from modelcrate.pack.ort import is_ort_file
        from modelcrate.pack.tflite import is_tflite

        if is_ort_file(head):
            from modelcrate.pack import ort as ort_builder

            return ort_builder.build(path, workdir)
        if is_tflite(head):
            from modelcrate.pack import tflite as tflite_builder

            return tflite_builder.build(path, workdir)
        if head.startswith(keras_builder.HDF5_MAGIC) or (
            head.startswith(b"PK") and keras_builder.is_keras_zip(_zip_names(path))
        ):
            return keras_builder.build(path, workdir, **options)
        if head.startswith(b"PK"):  # a zip: torch.export's .pt2 archive
            from modelcrate.pack import torch as torch_builder

            return torch_builder.build(path, workdir, **options)
        from modelcrate.pack import onnx as onnx_builder

        return onnx_builder.build(path, workdir)
    torch_module = _torch_module_type()
    if torch_module is not None and isinstance(model, torch_module):
        from modelcrate.pack import torch as torch_builder

        return torch_builder.build(model, workdir, **options)
    raise UsageError(
        f"cannot pack a {type(model).__name__}: expected a torch.nn.Module, or a path to a "
        ".onnx, .pt2, .ort, .keras, .h5 or .tflite file or a SavedModel directory"
    )


def _zip_names(path: Path) -> list[str]:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except zipfile.BadZipFile:
        return []


def _torch_module_type() -> type | None:
    import sys

    torch = sys.modules.get("torch")  # never import torch just to find out it was not used
    return None if torch is None else torch.nn.Module


def _write_samples(build: Build, samples: Any, workdir: Path) -> str | None:
    from modelcrate.model import prepare_inputs

    if samples is not None:
        build.samples = prepare_inputs(build.signature.inputs, samples)
    if not build.samples:
        return None
    from safetensors.numpy import save_file

    save_file(
        {k: np.ascontiguousarray(v) for k, v in build.samples.items()}, str(workdir / SAMPLES_FILE)
    )
    return SAMPLES_FILE


def read_labels(labels: list[str] | str | os.PathLike[str] | None) -> list[str] | None:
    """Labels as a list, or read from a text file with one label per line."""
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        path = Path(labels)
        if not path.is_file():
            raise UsageError(f"{path}: no such labels file")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        return [line for line in lines if line]
    return [str(label) for label in labels]


def _write_model_card(card: str | os.PathLike[str] | None, workdir: Path) -> str | None:
    if card is None:
        return None
    path = Path(card)
    if isinstance(card, os.PathLike) or (len(str(card)) < 1024 and path.suffix == ".md"):
        if not path.is_file():
            raise UsageError(f"{path}: no such model card file")
        shutil.copyfile(path, workdir / MODEL_CARD)
    else:
        (workdir / MODEL_CARD).write_text(str(card), encoding="utf-8")
    return MODEL_CARD


def _files(workdir: Path) -> list[Path]:
    found = sorted(p for p in workdir.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    for path in found:
        check_path(path.relative_to(workdir).as_posix())
    if not found:
        raise PackError("the builder wrote no files")
    return found


def _versions(*packages: str) -> dict[str, str]:
    found = {}
    for package in packages:
        try:
            found[package] = package_version(package)
        except PackageNotFoundError:
            continue
    return found
