"""Our infer route cut short at one stage, to see where a request's time goes (breakdown.py).

python stages.py PORT STAGE REGISTRY REF, STAGE one of:
  read    our HTTP protocol (deadlines, byte caps) and browser defences, the counted body
          read; answers a fixed body
  decode  + Open Inference Protocol decoding, limits checked (oip.decode_request)
  run     + the inputs checked against the signature, one ONNX Runtime call for this
          request alone (no batching, no queue, no metrics) and the response encoded
The full server adds the model manager (version lookup, metrics, timeout) and batching.
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

import modelcrate as mc
from modelcrate.errors import ModelcrateError
from modelcrate.model import Model, prepare_inputs
from modelcrate.server import oip
from modelcrate.server.browser import AllowedHosts, BrowserDefences
from modelcrate.server.http_protocol import DeadlineHttpProtocol
from modelcrate.server.requests import error_json, read_body

STAGES = ("read", "decode", "run")
FIXED = b'{"ok":true}'


def build(stage: str, registry: str, ref: str) -> Any:
    model = Model(mc.Registry.open(registry).get(ref), threads=1)
    specs, limits = model.manifest.signature.inputs, oip.Limits()

    async def answer(body: bytes, header_length: str | None) -> bytes:
        if stage == "read":
            return FIXED
        request = oip.decode_request(body, header_length, limits)
        if stage == "decode":
            return FIXED
        outputs = model.runtime.run(prepare_inputs(specs, request.inputs))
        payload, _ = oip.encode_response(
            model_name=model.manifest.name,
            model_version=model.manifest.version,
            outputs=outputs,
            request=request,
            labels=None,
        )
        return payload

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        status = 200
        try:
            body = await read_body(receive, headers.get("content-length"), limits.max_body_bytes)
            payload = await answer(body, headers.get(oip.HEADER_LENGTH))
        except ModelcrateError as exc:
            status, payload = exc.http_status, error_json(exc)
        response_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})

    return BrowserDefences(app, AllowedHosts(None))


if __name__ == "__main__":
    port, stage, registry, ref = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    assert stage in STAGES, stage
    config = uvicorn.Config(
        build(stage, registry, ref),
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        http=DeadlineHttpProtocol.with_timeouts(10.0, 30.0),
    )
    uvicorn.Server(config).run()
