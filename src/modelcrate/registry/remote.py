"""A registry on another modelcrate server, over HTTP (``https://host`` as a registry).

Reads resolve a reference, fetch the manifest (checked against its digest) and
stream each file, which the crate layer verifies against the manifest as usual.
``publish`` sends only the files the server lacks (HEAD, then PUT), then the
manifest; every step is idempotent, so an interrupted push is simply repeated.
The token comes from ``token=`` or ``$MODELCRATE_TOKEN``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import httpx

from modelcrate.crate import Crate
from modelcrate.errors import IntegrityError, NotAuthorized, RegistryError, from_http
from modelcrate.manifest import Manifest, parse_manifest
from modelcrate.refs import Ref
from modelcrate.registry.blobs import ResponseStream, checked_blocks
from modelcrate.registry.records import AliasEvent, ModelSummary, PublishResult, VersionInfo

if TYPE_CHECKING:
    from modelcrate.trust.signing import Policy

TOKEN_ENV = "MODELCRATE_TOKEN"
BLOCK = 1024 * 1024


@dataclass(frozen=True)
class PushResult(PublishResult):
    uploaded: int = 0  # files sent
    skipped: int = 0  # files the target already had


class RemoteRegistry:
    """The registry API of a modelcrate server (``modelcrate serve``)."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        token = token or os.environ.get(TOKEN_ENV)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(
            base_url=self.url + "/v2/registry", headers=headers, timeout=timeout
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RemoteRegistry:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------

    def resolve(self, ref: str | Ref) -> VersionInfo:
        data = self._json("GET", "/resolve", params={"ref": str(ref)})
        return VersionInfo(**data)

    def manifest(self, ref: str | Ref) -> Manifest:
        info = self.resolve(ref)
        manifest = parse_manifest(self._request("GET", f"/manifests/{info.digest}").content)
        if manifest.digest != info.digest:
            raise IntegrityError(f"{self.url}: the manifest of {ref} does not match its digest")
        return manifest

    def get(self, ref: str | Ref, *, trust: Policy | None = None) -> Crate:
        """The crate for ``ref``; each file is fetched when read and verified by the crate.
        With ``trust``, a signature by one of its keys is required (checked here)."""
        manifest = self.manifest(ref)
        crate = Crate(manifest, _RemoteFiles(self, manifest))
        if trust is not None:
            from modelcrate.trust.signing import enforce

            enforce(crate, self.signatures(f"{manifest.name}@{manifest.digest}"), trust)
        return crate

    def signatures(self, ref: str | Ref) -> list[bytes]:
        digest = self.resolve(ref).digest
        return [b.encode() for b in self._json("GET", f"/signatures/{digest}")["bundles"]]

    def list_models(self) -> list[ModelSummary]:
        return [ModelSummary(**m) for m in self._json("GET", "/models")]

    def pull(self, ref: str, to: str | os.PathLike[str], *, trust: Policy | None = None) -> Path:
        from modelcrate.trust.signing import sidecar

        crate = self.get(ref, trust=trust)
        path = crate.unpack(to)
        bundles = self.signatures(f"{crate.name}@{crate.digest}")
        if bundles:
            sidecar(path).write_bytes(bundles[-1])
        return path

    def open_file(self, sha256: str) -> BinaryIO:
        """A stream of one stored file, read from the server as it is consumed."""
        try:
            response = self.http.send(
                self.http.build_request("GET", f"/files/{sha256}"), stream=True
            )
        except httpx.HTTPError as exc:
            raise RegistryError(f"cannot reach the registry at {self.url}: {exc}") from None
        if response.status_code >= 400:
            response.read()
            response.close()
            self._check(response)
        blocks = checked_blocks(response.iter_raw(BLOCK), (httpx.HTTPError,))
        body = ResponseStream(blocks, response.close)
        return io.BufferedReader(body, BLOCK)

    # -- writing ---------------------------------------------------------------

    def publish(self, crate: Crate, *, signatures: Sequence[bytes] = ()) -> PushResult:
        """Upload the files the server lacks, then publish the manifest."""
        uploaded = skipped = 0
        for entry in crate.manifest.files:
            head = self.http.head(f"/files/{entry.sha256}")
            if head.status_code == 200:
                skipped += 1
                continue
            self._check(head, allow=(404,))
            with crate.open_verified(entry.path) as stream:  # streamed, one block at a time
                self._request(
                    "PUT",
                    f"/files/{entry.sha256}",
                    content=_blocks(stream),
                    headers={
                        "content-type": "application/octet-stream",
                        "content-length": str(entry.size),
                    },
                )
            uploaded += 1
        body = {
            "manifest": crate.manifest.file_bytes().decode(),
            "signatures": [b.decode() for b in signatures],
        }
        result = PublishResult(**self._json("POST", "/versions", json=body))
        return PushResult(
            result.name, result.version, result.digest, result.created, uploaded, skipped
        )

    def set_alias(
        self, name: str, alias: str, version: str, *, allow_breaking: bool = False
    ) -> AliasEvent:
        body = {"version": version, "allow_breaking": allow_breaking}
        data = self._json("PUT", f"/models/{name}/aliases/{alias}", json=body)
        return AliasEvent(**data)

    # -- plumbing --------------------------------------------------------------

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RegistryError(f"cannot reach the registry at {self.url}: {exc}") from None
        self._check(response)
        return response

    def _check(self, response: httpx.Response, allow: tuple[int, ...] = ()) -> None:
        status = response.status_code
        if status < 400 or status in allow:
            return
        try:
            body = response.json()
        except ValueError:  # HEAD answers and foreign proxies carry no JSON
            body = None
        error = from_http(status, body, self.url)
        if isinstance(error, NotAuthorized):
            raise type(error)(f"{error} (pass a token with --token or ${TOKEN_ENV})")
        raise error


def _blocks(stream: BinaryIO) -> Iterator[bytes]:
    while block := stream.read(BLOCK):
        yield block


class _RemoteFiles:
    def __init__(self, registry: RemoteRegistry, manifest: Manifest) -> None:
        self.registry = registry
        self.shas = {f.path: f.sha256 for f in manifest.files}

    def open(self, path: str) -> BinaryIO:
        return self.registry.open_file(self.shas[path])
