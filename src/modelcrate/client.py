"""Client for a modelcrate (or any Open Inference Protocol v2) server.

    client = modelcrate.Client("http://127.0.0.1:8000", token=...)
    client.predict("digits@prod", x)      # {"output": ndarray}

Tensors travel with the binary tensor data extension: a JSON header followed
by raw little-endian bytes, both ways.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np

from modelcrate.errors import InputError, ServerError, first_line, from_http
from modelcrate.refs import parse_ref
from modelcrate.server.oip import DATATYPES, HEADER_LENGTH, datatype_of

_NUMPY_TO_OIP = {dtype.name: name for name, dtype in DATATYPES.items() if name != "BYTES"}


class Client:
    """A small synchronous client; ``predict`` uses the binary tensor extension."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self._metadata: dict[tuple[str, str | None], dict[str, Any]] = {}

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def ready(self) -> bool:
        return self._send("GET", "/v2/health/ready", check=False).status_code == 200

    def metadata(self, ref: str) -> dict[str, Any]:
        name, version = _split(ref)
        key = (name, version)
        if key not in self._metadata:
            self._metadata[key] = self._json("GET", _model_path(name, version))
        return self._metadata[key]

    def predict(self, ref: str, inputs: Any) -> dict[str, np.ndarray]:
        """Run ``ref`` (name, name@version or name@alias) on one array or a dict of arrays."""
        name, version = _split(ref)
        specs = self.metadata(ref)["inputs"]
        if not isinstance(inputs, dict):
            if len(specs) != 1:
                raise InputError(f"{name} takes {len(specs)} inputs; pass a dict name -> array")
            inputs = {specs[0]["name"]: inputs}
        header: dict[str, Any] = {"inputs": [], "parameters": {"binary_data_output": True}}
        chunks = []
        for spec in specs:
            if spec["name"] not in inputs:
                raise InputError(f"missing input {spec['name']!r}")
            wanted = DATATYPES[spec["datatype"]]
            array = np.ascontiguousarray(np.asarray(inputs[spec["name"]]), dtype=wanted)
            data = array.astype(wanted.newbyteorder("<"), copy=False).tobytes()
            header["inputs"].append(
                {
                    "name": spec["name"],
                    "shape": list(array.shape),
                    "datatype": spec["datatype"],
                    "parameters": {"binary_data_size": len(data)},
                }
            )
            chunks.append(data)
        head = json.dumps(header).encode()
        response = self._send(
            "POST",
            _model_path(name, version) + "/infer",
            content=head + b"".join(chunks),
            headers={HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"},
        )
        return decode_outputs(response)

    def _json(self, method: str, path: str) -> dict[str, Any]:
        result: dict[str, Any] = self._send(method, path).json()
        return result

    def _send(self, method: str, path: str, *, check: bool = True, **kwargs: Any) -> httpx.Response:
        """One request; a connection failure or an error answer becomes a modelcrate error."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServerError(
                f"cannot reach {self.http.base_url}: {first_line(exc)}", code="unreachable"
            ) from None
        if check and response.status_code >= 400:
            raise from_http(response.status_code, _json_or_none(response), str(self.http.base_url))
        return response


def decode_outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    """Outputs of an infer response, JSON or binary."""
    length = response.headers.get(HEADER_LENGTH)
    body = response.content
    split = int(length) if length is not None else len(body)
    document = json.loads(body[:split])
    offset, outputs = split, {}
    for output in document["outputs"]:
        dtype = DATATYPES[output["datatype"]]
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            raw = body[offset : offset + size]
            offset += size
            array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)
        else:
            array = np.asarray(output["data"], dtype=dtype)
        outputs[output["name"]] = array.reshape(output["shape"])
    return outputs


def _split(ref: str) -> tuple[str, str | None]:
    parsed = parse_ref(ref)
    return parsed.name, parsed.version or parsed.alias or parsed.digest


def _model_path(name: str, version: str | None) -> str:
    return f"/v2/models/{name}" + (f"/versions/{version}" if version else "")


def _json_or_none(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


__all__ = ["Client", "ServerError", "datatype_of"]
