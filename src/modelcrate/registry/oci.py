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

import contextlib
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from modelcrate.compatibility import check_move
from modelcrate.crate import Crate, check_path, corrupted
from modelcrate.errors import (
    CrateFormatError,
    IntegrityError,
    NotFound,
    RegistryError,
    RuntimeUnavailable,
    UnsafeContentError,
    UsageError,
    first_line,
)
from modelcrate.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    FileEntry,
    Manifest,
    parse_manifest,
)
from modelcrate.refs import Ref, parse_ref
from modelcrate.registry.blobs import ResponseStream, checked_blocks
from modelcrate.registry.records import AliasEvent, ModelSummary, PublishResult, VersionInfo

if TYPE_CHECKING:
    from modelcrate.trust.signing import Policy

CONFIG_MEDIA_TYPE = "application/vnd.modelcrate.crate.v1+json"
WEIGHT_MEDIA_TYPE = "application/vnd.cncf.model.weight.v1.raw"
DOC_MEDIA_TYPE = "application/vnd.cncf.model.doc.v1.raw"
FILE_MEDIA_TYPE = "application/vnd.modelcrate.file.v1"
DIGEST_ANNOTATION = "dev.modelcrate.digest"
TITLE = "org.opencontainers.image.title"
BLOCK = 1024 * 1024  # bytes a pulled blob is read, hashed and written in


class OciRegistry:
    """An OCI distribution registry used as a modelcrate registry: ``name@version`` is the
    repository ``<prefix>/<name>`` tagged ``<version>``; an alias is one more tag."""

    def __init__(self, location: str) -> None:
        self.location = location.rstrip("/")

    def target(self, ref: str | Ref) -> str:
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        tag = parsed.version or parsed.alias
        if tag is None:
            raise UsageError(f"{ref}: name a version or alias; an OCI registry has tags only")
        return f"{self.location}/{parsed.name}:{tag}"

    def manifest(self, ref: str | Ref) -> Manifest:
        """crate.json alone (the artifact's config blob): no layer is downloaded."""
        return Artifact(self.target(ref)).manifest

    def resolve(self, ref: str | Ref) -> VersionInfo:
        manifest = self.manifest(ref)
        return VersionInfo(
            manifest.name,
            manifest.version,
            manifest.digest,
            sum(f.size for f in manifest.files),
            0.0,
        )

    def get(self, ref: str | Ref, *, trust: Policy | None = None) -> Crate:
        """The crate ``ref`` tags; each file is downloaded when read, and verified by the
        crate as it streams (a runtime reads only its own: model.onnx, not the .pt2 and
        safetensors forms beside it)."""
        artifact = Artifact(self.target(ref))
        crate = Crate(artifact.manifest, artifact)
        if trust is not None:
            from modelcrate.trust.signing import enforce

            enforce(crate, [], trust)  # OCI artifacts carry no modelcrate signature here
        return crate

    def signatures(self, ref: str | Ref) -> list[bytes]:
        return []

    def list_models(self) -> list[ModelSummary]:
        raise UsageError(
            f"{self.location}: an OCI registry does not list its repositories; "
            "name one (oci://host/repository:tag)"
        )

    def publish(self, crate: Crate, *, signatures: Sequence[bytes] = ()) -> PublishResult:
        push(crate, self.target(crate.manifest.ref))
        return PublishResult(crate.name, crate.version, crate.digest, created=True)

    def set_alias(
        self, name: str, alias: str, version: str, *, allow_breaking: bool = False
    ) -> AliasEvent:
        """Tag ``version`` as ``alias`` too (its layers are already there: nothing moves),
        refused when it breaks the signature of the version the tag names now."""
        crate = self.get(f"{name}@{version}")
        try:
            current: Manifest | None = self.manifest(f"{name}@{alias}")
        except NotFound:
            current = None
        if current is not None and current.digest != crate.digest:
            check_move(f"{name}@{alias}", current, crate.manifest, allow_breaking)
        push(crate, f"{self.location}/{name}:{alias}")
        previous = current.version if current is not None else None
        return AliasEvent(alias, "set", version, previous, time.time())

    def pull(self, ref: str, to: str | os.PathLike[str], *, trust: Policy | None = None) -> Path:
        crate = pull(self.target(ref), to)
        if trust is not None:
            from modelcrate.trust.signing import verify_local

            verify_local(crate, to, trust)
        return Path(to)

    def close(self) -> None:
        pass


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
    artifact = Artifact(source)
    target = Path(to)
    if target.exists() and any(target.iterdir()):
        raise CrateFormatError(f"{target} is not empty; refusing to write into it")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Downloaded beside the target, each file hashed as it arrives, then renamed: written
    # once and read once (a second hashing pass over a 1 GiB crate cost ~1 s).
    with tempfile.TemporaryDirectory(prefix=".oci-pull-", dir=target.parent) as scratch:
        staging = Path(scratch) / "crate"
        staging.mkdir()
        (staging / MANIFEST_NAME).write_bytes(artifact.config)
        for entry in artifact.manifest.files:
            destination = staging / entry.path
            destination.parent.mkdir(parents=True, exist_ok=True)
            artifact.download(entry.path, destination)
        crate = Crate.open(staging)
        crate.screen()  # no pickle anywhere; sizes and hashes were checked as files came
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    return Crate.open(target)


class Artifact:
    """A modelcrate artifact in an OCI registry, read as far as its crate.json: the config
    blob, checked against its digest and the crate digest annotation, and the layers, each
    a file crate.json lists with the same digest and size. Files are then fetched one by
    one: ``open`` (a stream the crate verifies) or ``download`` (hashed as it is written)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.client, reference = _client(source)
        try:
            self.container = self.client.get_container(reference)
            oci_manifest = _oci_manifest(self.client, self.container, source)
        except RegistryError:
            raise
        except Exception as exc:
            raise RegistryError(f"cannot read {source}: {first_line(exc)}") from None
        config = _config(oci_manifest, source)
        self.config = self._fetch(config["digest"])
        self.manifest = parse_manifest(self.config)
        expected = (oci_manifest.get("annotations") or {}).get(DIGEST_ANNOTATION)
        if expected is not None and expected != self.manifest.digest:
            raise IntegrityError(
                f"{source}: crate.json does not match the digest it was pushed with"
            )
        entries = {f.path: f for f in self.manifest.files}
        self.layers = dict(
            _listed_layer(layer, entries, source) for layer in oci_manifest.get("layers") or []
        )
        missing = set(entries) - set(self.layers)
        if missing:
            raise IntegrityError(f"{source} has no layer for {sorted(missing)[0]}")

    def open(self, path: str) -> BinaryIO:
        """One file's bytes, streamed from the registry as they are read."""
        return self._stream(self.layers[self.manifest.file(path).path])

    def download(self, path: str, destination: Path) -> None:
        self._fetch(self.layers[path], destination, self.manifest.file(path))

    def _stream(self, digest: str) -> BinaryIO:
        """One blob's bytes as they arrive (requests' errors are RegistryError)."""
        response = self._get(digest)
        blocks = checked_blocks(response.iter_content(BLOCK), (Exception,))
        return io.BufferedReader(ResponseStream(blocks, response.close), BLOCK)

    def _get(self, digest: str) -> Any:
        """The streamed response for one blob (requests')."""
        try:
            response = self.client.get_blob(self.container, digest, stream=True)
        except Exception as exc:  # requests' connection errors
            raise RegistryError(f"cannot read {self.source}: {first_line(exc)}") from None
        if response.status_code != 200:
            response.close()
            raise RegistryError(f"cannot read {self.source}: HTTP {response.status_code}")
        return response

    def _fetch(
        self, digest: str, destination: Path | None = None, entry: FileEntry | None = None
    ) -> bytes:
        """One blob, hashed as it arrives (the response's own blocks, not copied again):
        into ``destination`` (the file ``entry`` lists), or returned (no ``destination``:
        crate.json, at most MAX_MANIFEST_BYTES)."""
        hasher, size, kept = hashlib.sha256(), 0, bytearray()
        try:
            with contextlib.ExitStack() as stack:
                out = stack.enter_context(destination.open("wb")) if destination else None
                response = stack.enter_context(self._get(digest))
                for block in checked_blocks(response.iter_content(BLOCK), (Exception,)):
                    hasher.update(block)
                    size += len(block)
                    if entry is not None and size > entry.size:
                        raise corrupted(entry, size)
                    if out is not None:
                        out.write(block)
                    elif size > MAX_MANIFEST_BYTES:
                        raise CrateFormatError(f"{self.source}: crate.json is too large")
                    else:
                        kept += block
        except OSError as exc:  # the local file (a full disk, no permission)
            raise RegistryError(f"pulling {self.source}: {first_line(exc)}") from None
        found = "sha256:" + hasher.hexdigest()
        if entry is not None and (size != entry.size or found != digest):
            raise corrupted(entry, size, found.removeprefix("sha256:"))
        if found != digest:
            raise IntegrityError(f"{self.source}: blob {digest[:19]}… arrived as {found[:19]}…")
        return bytes(kept)


def _listed_layer(
    layer: dict[str, Any], entries: dict[str, FileEntry], source: str
) -> tuple[str, str]:
    """The path of the file a layer holds, which crate.json must list with the layer's
    digest and size, and that digest."""
    title = check_path((layer.get("annotations") or {}).get(TITLE, ""))
    entry = entries.get(title)
    if entry is None:
        raise UnsafeContentError(f"{source} has a layer crate.json does not list: {title!r}")
    if layer.get("digest") != f"sha256:{entry.sha256}" or layer.get("size") != entry.size:
        raise IntegrityError(f"{source}: layer {title!r} is not the file crate.json lists")
    return title, layer["digest"]


def _oci_manifest(client: Any, container: Any, source: str) -> dict[str, Any]:
    """The OCI manifest a tag names; NotFound when the registry has no such tag (oras's own
    ``get_manifest`` reports every failure as one ValueError)."""
    import oras.defaults

    client.auth.load_configs(container)
    accept = ", ".join(oras.defaults.default_manifest_accepted_media_types)
    url = f"{client.prefix}://{container.manifest_url()}"
    response = client.do_request(url, "GET", headers={"Accept": accept})
    if response.status_code == 404:
        raise NotFound(f"{source}: no such tag in the OCI registry")
    if response.status_code != 200:
        raise RegistryError(f"cannot read {source}: HTTP {response.status_code}")
    result: dict[str, Any] = response.json()
    return result


def _config(oci_manifest: dict[str, Any], source: str) -> dict[str, Any]:
    config: dict[str, Any] = oci_manifest.get("config") or {}
    if config.get("mediaType") != CONFIG_MEDIA_TYPE:
        raise RegistryError(
            f"{source} is not a modelcrate artifact (config {config.get('mediaType')!r})"
        )
    return config


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
