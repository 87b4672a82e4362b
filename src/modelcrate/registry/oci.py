"""Crates as OCI artifacts: push to and pull from any OCI distribution registry (oras).

Mapping (CNCF ModelPack / KitOps conventions where they fit):

- one layer per crate file, titled with its path (``org.opencontainers.image.title``);
  the layer digest is the file's sha256, the same the manifest lists;
- layer media types: model artifacts ``application/vnd.cncf.model.weight.v1.raw``
  (ModelPack's weight type; ONNX, .pt2, safetensors, external data), the model
  card ``application/vnd.cncf.model.doc.v1.raw``, anything else (sample
  inputs) ``application/vnd.modelcrate.file.v1``;
- the config blob is ``crate.json`` itself, media type
  ``application/vnd.modelcrate.crate.v1+json``;
- manifest annotations: ``org.opencontainers.image.title`` (name),
  ``org.opencontainers.image.version``, ``dev.modelcrate.digest`` (the crate
  digest) and ``dev.modelcrate.ref``.

Pulling never extracts archives and never trusts layer names: every title must
be a path the crate format allows, every layer must be listed in crate.json,
and the crate is verified (each file's sha256, the manifest's digest against
the annotation) before it is published or written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from modelcrate.crate import Crate, check_path
from modelcrate.errors import (
    CrateFormatError,
    IntegrityError,
    RegistryError,
    RuntimeUnavailable,
    UnsafeContentError,
    first_line,
)
from modelcrate.manifest import MANIFEST_NAME

CONFIG_MEDIA_TYPE = "application/vnd.modelcrate.crate.v1+json"
WEIGHT_MEDIA_TYPE = "application/vnd.cncf.model.weight.v1.raw"
DOC_MEDIA_TYPE = "application/vnd.cncf.model.doc.v1.raw"
FILE_MEDIA_TYPE = "application/vnd.modelcrate.file.v1"
DIGEST_ANNOTATION = "dev.modelcrate.digest"
TITLE = "org.opencontainers.image.title"


def is_oci(location: str) -> bool:
    return location.startswith("oci://")


def push(crate: Crate, target: str) -> str:
    """Push ``crate`` to ``oci://host[:port]/repository:tag``; returns the target."""
    client, reference = _client(target)
    manifest = crate.manifest
    weights = {a.path for a in manifest.artifacts} | {
        d for a in manifest.artifacts for d in a.data_files
    }
    with tempfile.TemporaryDirectory(prefix="modelcrate-oci-") as scratch:
        root = Path(scratch)
        files_dir = _local_files(crate, root)
        (root / MANIFEST_NAME).write_bytes(manifest.file_bytes())
        files, annotations = [], {}
        for entry in manifest.files:
            kind = (
                WEIGHT_MEDIA_TYPE
                if entry.path in weights
                else DOC_MEDIA_TYPE
                if entry.path == manifest.model_card
                else FILE_MEDIA_TYPE
            )
            local = files_dir / entry.path
            files.append(f"{local}:{kind}")
            annotations[str(local)] = {TITLE: entry.path}
        annotation_file = root / "annotations.json"
        annotation_file.write_text(json.dumps(annotations))
        try:
            client.push(
                target=reference,
                files=files,
                disable_path_validation=True,
                manifest_config=f"{root / MANIFEST_NAME}:{CONFIG_MEDIA_TYPE}",
                annotation_file=str(annotation_file),
                manifest_annotations={
                    TITLE: manifest.name,
                    "org.opencontainers.image.version": manifest.version,
                    DIGEST_ANNOTATION: manifest.digest,
                    "dev.modelcrate.ref": manifest.ref,
                },
                quiet=True,
                do_chunked=True,  # 16 MiB PATCH requests: memory stays flat at any size
            )
        except Exception as exc:  # oras raises requests and ValueError errors alike
            raise RegistryError(f"push to {target} failed: {first_line(exc)}") from None
    return target


def pull(source: str, to: str | os.PathLike[str]) -> Crate:
    """Fetch ``oci://host/repository:tag`` into the directory ``to`` (new or empty) and
    return the verified crate there."""
    client, reference = _client(source)
    try:
        container = client.get_container(reference)
        oci_manifest = client.get_manifest(container)
    except Exception as exc:
        raise RegistryError(f"cannot read {source}: {first_line(exc)}") from None
    config = oci_manifest.get("config") or {}
    if config.get("mediaType") != CONFIG_MEDIA_TYPE:
        raise RegistryError(
            f"{source} is not a modelcrate artifact (config {config.get('mediaType')!r})"
        )
    target = Path(to)
    if target.exists() and any(target.iterdir()):
        raise CrateFormatError(f"{target} is not empty; refusing to write into it")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Downloaded beside the target, verified in place, then renamed: written once.
    with tempfile.TemporaryDirectory(prefix=".oci-pull-", dir=target.parent) as scratch:
        staging = Path(scratch) / "crate"
        staging.mkdir()
        client.download_blob(container, config["digest"], str(staging / MANIFEST_NAME))
        for layer in oci_manifest.get("layers") or []:
            title = (layer.get("annotations") or {}).get(TITLE, "")
            destination = staging / check_path(title)
            destination.parent.mkdir(parents=True, exist_ok=True)
            client.download_blob(container, layer["digest"], str(destination))
        crate = Crate.open(staging)
        listed = {f.path for f in crate.manifest.files} | {MANIFEST_NAME}
        present = {str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file()}
        if present - listed:
            raise UnsafeContentError(f"{source} has layers crate.json does not list")
        expected = (oci_manifest.get("annotations") or {}).get(DIGEST_ANNOTATION)
        if expected is not None and expected != crate.digest:
            raise IntegrityError(
                f"{source}: crate.json does not match the digest it was pushed with"
            )
        crate.verify()  # every file's size and sha256 against crate.json
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    return Crate.open(target)


def _local_files(crate: Crate, scratch: Path) -> Path:
    """A directory holding the crate's verified files: the registry's file cache (hard
    links, nothing copied) where there is one, else a copy in ``scratch``."""
    local = crate.localize()
    if local is None:  # encrypted: its files are pushed as stored (ciphertext)
        return crate.unpack(scratch / "crate")
    local.wait()
    return local.directory


def _client(location: str) -> tuple[Any, str]:
    try:
        import oras.client
    except ImportError:
        raise RuntimeUnavailable(
            "OCI registries need oras: pip install 'modelcrate[shared]'"
        ) from None
    reference = location.removeprefix("oci://")
    host = reference.split("/", 1)[0]
    loopback = host.split(":")[0] in ("127.0.0.1", "localhost", "[::1]")
    return oras.client.OrasClient(hostname=host, insecure=loopback), reference
