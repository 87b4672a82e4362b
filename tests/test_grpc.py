"""The Open Inference Protocol over gRPC: stock tritonclient.grpc against `serve --grpc-port`,
with the REST server's models, aliases, hot swap, tokens, metrics and access log; status codes
follow the one error mapping; the checked-in generated modules match the .proto."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import modelcrate as mc
from conftest import Digits, Server, free_port

USER, READER, OPS = (
    "user-token-0123456789abcd",
    "reader-token-0123456789ab",
    "ops-token-0123456789abcde",
)
GENERATED = Path(__file__).parents[1] / "src" / "modelcrate" / "server" / "grpc"


class Served:
    def __init__(self, server: Server, grpc_port: int, registry: mc.Registry) -> None:
        self.server, self.grpc_port, self.registry = server, grpc_port, registry
        self.address = f"127.0.0.1:{grpc_port}"


@pytest.fixture
def served(
    tmp_path: Path,
    digits_crate_path: Path,
    digits_v2_path: Path,
    start_server: Callable[..., Server],
) -> Served:
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(digits_crate_path)
    registry.publish(digits_v2_path)
    registry.set_alias("digits", "prod", "1.0.0")
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        f'[[tokens]]\nname = "user"\ntoken = "{USER}"\nscopes = ["infer", "read"]\n'
        f'[[tokens]]\nname = "reader"\ntoken = "{READER}"\nscopes = ["read"]\n'
        f'[[tokens]]\nname = "ops"\ntoken = "{OPS}"\nscopes = ["infer", "read", "admin"]\n'
    )
    port = free_port()
    server = start_server(
        registry.root,
        "digits@prod",
        "--grpc-port",
        str(port),
        "--token-file",
        str(tokens),
        "--access-log",
        "--poll-interval",
        "0.05",
    )
    return Served(server, port, registry)


@pytest.fixture
def client(served: Served) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(served.address)
    yield client
    client.close()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def expected_scores(digits: Digits, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return digits.model(torch.from_numpy(x)).numpy()


def test_tritonclient_grpc_health_metadata_and_infer(
    served: Served, client: grpcclient.InferenceServerClient, digits: Digits
) -> None:
    assert client.is_server_live() and client.is_server_ready()  # health needs no token
    user = bearer(USER)
    assert client.is_model_ready("digits", "prod", headers=user)
    assert client.is_model_ready("digits", "1.0.0", headers=user)
    metadata = client.get_model_metadata("digits", "prod", headers=user, as_json=True)
    assert metadata["versions"] == ["1.0.0"]
    assert metadata["inputs"][0] == {
        "name": "x",
        "datatype": "FP32",
        "shape": ["-1", "1", "8", "8"],
    }
    server = client.get_server_metadata(headers=user, as_json=True)
    assert server["name"] == "modelcrate" and "model_repository" in server["extensions"]

    x = np.ascontiguousarray(digits.x_test[:6])
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(
        "digits", [tensor], model_version="prod", request_id="req-7", headers=user
    )
    np.testing.assert_allclose(result.as_numpy("output"), expected_scores(digits, x), atol=1e-4)
    response = result.get_response(as_json=True)
    assert response["id"] == "req-7" and response["model_version"] == "1.0.0"

    top = grpcclient.InferRequestedOutput("output", class_count=3)
    labels = client.infer("digits", [tensor], outputs=[top], headers=user).as_numpy("output")
    assert labels.shape == (6, 3)
    assert [int(row[0].decode().split(":")[1]) for row in labels] == list(
        expected_scores(digits, x).argmax(1)
    )


def test_typed_contents_and_status_codes(served: Served, digits: Digits) -> None:
    """Tensors as typed contents (not raw bytes); every error maps as REST's does."""
    x = np.ascontiguousarray(digits.x_test[:2])
    request = service_pb2.ModelInferRequest(model_name="digits", model_version="1.0.0")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(served.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelInfer(request, metadata=tuple(bearer(USER).items()))
        (output,) = answer.outputs
        scores = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(output.shape)
        np.testing.assert_allclose(scores, expected_scores(digits, x), atol=1e-4)

        def code(call: Callable[[], object]) -> grpc.StatusCode:
            with pytest.raises(grpc.RpcError) as failed:
                call()
            return failed.value.code()  # type: ignore[attr-defined, no-any-return]

        user, reader = tuple(bearer(USER).items()), tuple(bearer(READER).items())
        assert code(lambda: stub.ModelInfer(request)) == grpc.StatusCode.UNAUTHENTICATED
        wrong = (("authorization", "Bearer nope-0123456789abcdef"),)
        assert (
            code(lambda: stub.ModelInfer(request, metadata=wrong))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        assert (
            code(lambda: stub.ModelInfer(request, metadata=reader))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        unknown = service_pb2.ModelInferRequest()
        unknown.CopyFrom(request)
        unknown.model_name = "nothing"
        assert code(lambda: stub.ModelInfer(unknown, metadata=user)) == grpc.StatusCode.NOT_FOUND
        bad = service_pb2.ModelInferRequest()
        bad.CopyFrom(request)
        bad.inputs[0].shape[:] = [2, 64]  # 128 values, but the model wants [-1, 1, 8, 8]
        assert code(lambda: stub.ModelInfer(bad, metadata=user)) == grpc.StatusCode.INVALID_ARGUMENT
        short = service_pb2.ModelInferRequest()
        short.CopyFrom(request)
        del short.inputs[0].contents.fp32_contents[-1]
        assert (
            code(lambda: stub.ModelInfer(short, metadata=user)) == grpc.StatusCode.INVALID_ARGUMENT
        )
        nonfinite = service_pb2.ModelInferRequest()
        nonfinite.CopyFrom(request)
        nonfinite.inputs[0].contents.fp32_contents[0] = float("nan")
        assert (
            code(lambda: stub.ModelInfer(nonfinite, metadata=user))
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        streaming = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelConfig
        config = service_pb2.ModelConfigRequest(name="digits")
        assert code(lambda: streaming(config, metadata=user)) == grpc.StatusCode.UNIMPLEMENTED


def test_hot_swap_repository_metrics_and_access_log(
    served: Served, client: grpcclient.InferenceServerClient, digits: Digits
) -> None:
    user, ops = bearer(USER), bearer(OPS)
    served.registry.set_alias("digits", "prod", "1.1.0")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        versions = client.get_model_metadata("digits", headers=user, as_json=True)["versions"]
        if versions == ["1.1.0"]:
            break
        time.sleep(0.05)
    assert versions == ["1.1.0"]

    index = client.get_model_repository_index(headers=user, as_json=True)
    assert index["models"] == [{"name": "digits", "version": "1.1.0", "state": "READY"}]
    with pytest.raises(InferenceServerException) as refused:
        client.unload_model("digits", headers=user)
    assert "PERMISSION_DENIED" in str(refused.value.status())
    client.unload_model("digits", headers=ops)
    assert not client.is_model_ready("digits", headers=user)
    client.load_model("digits", headers=ops)
    assert client.is_model_ready("digits", headers=user)

    x = np.ascontiguousarray(digits.x_test[:1])
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    for _ in range(3):
        client.infer("digits", [tensor], headers=user)
    metrics = httpx.get(f"{served.server.url}/metrics", headers={"Authorization": f"Bearer {USER}"})
    counted = [
        line
        for line in metrics.text.splitlines()
        if line.startswith('modelcrate_requests_total{code="200",model="digits"')
    ]
    assert counted and sum(float(line.split()[-1]) for line in counted) >= 3
    log = served.server.output()
    assert '"path": "/inference.GRPCInferenceService/ModelInfer", "status": "OK"' in log
    assert '"status": "PERMISSION_DENIED"' in log


def test_a_taken_grpc_port_is_a_clear_error(tmp_path: Path, digits_crate_path: Path) -> None:
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(digits_crate_path)
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "modelcrate",
                "serve",
                "digits",
                "--registry",
                str(registry.root),
                "--port",
                str(free_port()),
                "--grpc-port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_checked_in_grpc_modules_match_the_proto(tmp_path: Path) -> None:
    """`make grpc` output is committed; regenerating it from the .proto changes nothing."""
    source = Path(__file__).parents[1] / "src"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{source}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(source / "modelcrate/server/grpc/inference.proto"),
        ],
        check=True,
    )
    for name in ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py"):
        fresh = (tmp_path / "modelcrate/server/grpc" / name).read_text()
        assert fresh == (GENERATED / name).read_text(), f"{name} is stale: run `make grpc`"
