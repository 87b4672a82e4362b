"""The Open Inference Protocol v2 over gRPC (``serve --grpc-port``).

KServe's ``inference.GRPCInferenceService`` (``inference.proto`` beside this file; the
generated ``inference_pb2*`` modules are checked in and regenerated with ``make grpc``),
served by grpcio's asyncio server on the same event loop as the REST app: the same model
manager (aliases, hot swap, batching, queue limits, request timeout), the same bearer
tokens (``authorization`` metadata) and scopes, the same metrics and access log. Errors map
from the one HTTP mapping in ``errors.py`` to gRPC status codes (``grpc_status``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc import aio

import modelcrate
from modelcrate.errors import InputError, ModelcrateError, NotFound, UsageError
from modelcrate.server import oip
from modelcrate.server.auth import Tokens, authorize
from modelcrate.server.grpc import inference_pb2 as pb
from modelcrate.server.grpc import inference_pb2_grpc as pb_grpc
from modelcrate.server.hot_swap import ModelManager
from modelcrate.server.requests import check_name, log_access

Reply = TypeVar("Reply")

# The HTTP statuses of errors.py, as gRPC codes (what Triton and KServe use for each).
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Where each datatype's values travel in InferTensorContents (FP16 only as raw contents).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def grpc_status(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status for an error (a full queue is RESOURCE_EXHAUSTED, as in Triton)."""
    if not isinstance(exc, ModelcrateError):
        return grpc.StatusCode.INTERNAL
    if exc.code == "queue_full":
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return STATUS_CODES.get(exc.http_status, grpc.StatusCode.INTERNAL)


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The gRPC methods, each a thin adapter over the model manager."""

    def __init__(
        self,
        manager: ModelManager,
        tokens: Tokens,
        limits: oip.Limits,
        request_timeout: float,
        access: bool,
    ) -> None:
        self.manager, self.tokens, self.limits = manager, tokens, limits
        self.request_timeout, self.access = request_timeout, access

    async def _answer(
        self,
        context: aio.ServicerContext[Any, Any],
        method: str,
        scope: str | None,
        work: Callable[[], Awaitable[Reply]],
    ) -> Reply:
        """Check the token's scope, run ``work``, map errors to status codes, log access."""
        started, status = time.perf_counter(), grpc.StatusCode.OK
        try:
            if scope is not None:
                metadata = dict(context.invocation_metadata() or ())
                authorize(self.tokens, _text(metadata.get("authorization")), scope)
            return await work()
        except ModelcrateError as exc:
            status = grpc_status(exc)
            await context.abort(status, str(exc))
            raise  # pragma: no cover - abort raises
        finally:
            if self.access:
                path = f"/inference.GRPCInferenceService/{method}"
                log_access("grpc", path, status.name, started, context.peer())

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        async def work() -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self._answer(context, "ServerLive", None, work)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        async def work() -> pb.ServerReadyResponse:
            models = self.manager.models.values()
            return pb.ServerReadyResponse(ready=all(m.current is not None for m in models))

        return await self._answer(context, "ServerReady", None, work)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        async def work() -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(
                name="modelcrate", version=modelcrate.__version__, extensions=oip.EXTENSIONS
            )

        return await self._answer(context, "ServerMetadata", "read", work)

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        async def work() -> pb.ModelReadyResponse:
            name = check_name(request.name)
            try:
                self.manager.lookup(name, request.version or None)
            except NotFound:
                if name not in self.manager.models:
                    raise
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return await self._answer(context, "ModelReady", "read", work)

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        async def work() -> pb.ModelMetadataResponse:
            served, loaded = self.manager.lookup(check_name(request.name), request.version or None)
            signature = loaded.manifest.signature
            return pb.ModelMetadataResponse(
                name=served.name,
                versions=[loaded.version],
                platform="onnxruntime_onnx",
                inputs=[_tensor_metadata(s.name, s.dtype, s.shape) for s in signature.inputs],
                outputs=[_tensor_metadata(s.name, s.dtype, s.shape) for s in signature.outputs],
            )

        return await self._answer(context, "ModelMetadata", "read", work)

    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        async def work() -> pb.ModelInferResponse:
            return await self._infer(request)

        return await self._answer(context, "ModelInfer", "infer", work)

    async def _infer(self, request: Any) -> pb.ModelInferResponse:
        name, version = check_name(request.model_name), request.model_version or None
        self.manager.admit(name, version)
        decoded = decode_request(request, self.limits)
        async with self.manager.using(name, version) as loaded:
            outputs = await self.manager.infer(
                loaded, decoded.inputs, self.request_timeout, asked=version, key=request.id or None
            )
            selected = oip.select_outputs(outputs, decoded, loaded.manifest.labels)
            answered = self.manager.answered_by(loaded)  # the candidate, during a canary
        response = pb.ModelInferResponse(model_name=name, model_version=answered, id=request.id)
        for output_name, array in selected:
            response.outputs.add(
                name=output_name, datatype=oip.datatype_of_array(array), shape=array.shape
            )
            response.raw_output_contents.append(oip.to_binary(array))
        return response

    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        async def work() -> pb.RepositoryIndexResponse:
            entries = [m.entry() for m in self.manager.models.values()]
            if request.ready:
                entries = [e for e in entries if e["state"] == "READY"]
            return pb.RepositoryIndexResponse(
                models=[pb.RepositoryIndexResponse.ModelIndex(**e) for e in entries]
            )

        return await self._answer(context, "RepositoryIndex", "read", work)

    async def RepositoryModelLoad(
        self, request: Any, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        async def work() -> pb.RepositoryModelLoadResponse:
            parameter = request.parameters.get("ref")
            ref = parameter.string_param if parameter is not None else None
            await self.manager.load(check_name(request.model_name), ref or None)
            return pb.RepositoryModelLoadResponse()

        return await self._answer(context, "RepositoryModelLoad", "admin", work)

    async def RepositoryModelUnload(
        self, request: Any, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        async def work() -> pb.RepositoryModelUnloadResponse:
            self.manager.unload(check_name(request.model_name))
            return pb.RepositoryModelUnloadResponse()

        return await self._answer(context, "RepositoryModelUnload", "admin", work)


def decode_request(request: Any, limits: oip.Limits) -> oip.InferRequest:
    """A ModelInferRequest as the REST decoder's InferRequest (same limits and checks)."""
    if not request.inputs:
        raise InputError("request needs at least one input")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InputError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in inputs:
            raise InputError(f"input {tensor.name!r} appears twice")
        shape = list(tensor.shape)
        count = oip.check_shape(tensor.name, tensor.datatype, shape, limits)
        dtype = oip.DATATYPES[tensor.datatype]
        if raw:
            array = oip.from_binary(tensor.name, raw[index], dtype, count)
            oip.check_finite(tensor.name, array, limits)
        else:
            array = _from_contents(tensor, dtype, count, limits)
        inputs[tensor.name] = array.reshape(shape)
    decoded = oip.InferRequest(inputs=inputs, id=request.id or None)
    for output in request.outputs:
        if any(o.name == output.name for o in decoded.outputs):
            raise InputError(f"output {output.name!r} is requested twice")
        top = output.parameters.get("classification")
        decoded.outputs.append(
            oip.RequestedOutput(name=output.name, classification=int(top.int64_param) if top else 0)
        )
    return decoded


def _from_contents(tensor: Any, dtype: np.dtype[Any], count: int, limits: oip.Limits) -> np.ndarray:
    field = CONTENTS.get(tensor.datatype)
    if field is None:
        raise InputError(f"input {tensor.name!r}: {tensor.datatype} travels only as raw contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InputError(
            f"input {tensor.name!r}: shape holds {count} elements but contents have {len(values)}"
        )
    if dtype.kind == "O":
        return np.array(list(values), dtype=object)
    return oip.fitted(tensor.name, np.asarray(values), dtype, limits)


def _tensor_metadata(name: str, dtype: str, shape: list[int]) -> Any:
    return pb.ModelMetadataResponse.TensorMetadata(**oip.tensor_metadata(name, dtype, shape))


def _text(value: str | bytes | None) -> str | None:
    return value.decode("latin-1") if isinstance(value, bytes) else value


async def start(
    service: InferenceService, host: str, port: int, *, shared_port: bool
) -> aio.Server:
    """Listen on ``host:port`` (``shared_port``: several worker processes share it)."""
    limit = service.limits.max_body_bytes
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1 if shared_port else 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:  # newer grpcio raises instead of returning 0
        bound = 0
    if bound == 0:
        raise UsageError(f"cannot listen for gRPC on {address}")
    await server.start()
    return server
