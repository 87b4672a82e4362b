"""A stock tritonclient[http] works against our server unchanged."""

from __future__ import annotations

import numpy as np
import torch
import tritonclient.http as httpclient

from conftest import Digits, Server


def test_tritonclient_health_metadata_and_infer(served_digits: Server, digits: Digits) -> None:
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{served_digits.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("digits", "prod")
        assert client.is_model_ready("digits", "1.0.0")
        metadata = client.get_model_metadata("digits", "prod")
        assert metadata["inputs"][0]["shape"] == [-1, 1, 8, 8]
        server = client.get_server_metadata()
        assert "binary_tensor_data" in server["extensions"]

        x = np.ascontiguousarray(digits.x_test[:6])
        with torch.no_grad():
            expected = digits.model(torch.from_numpy(x)).numpy()
        for binary in (True, False):
            tensor = httpclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            wanted = httpclient.InferRequestedOutput("output", binary_data=binary)
            result = client.infer("digits", [tensor], model_version="prod", outputs=[wanted])
            np.testing.assert_allclose(result.as_numpy("output"), expected, atol=1e-4)

        tensor = httpclient.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        top = httpclient.InferRequestedOutput("output", class_count=3)
        result = client.infer("digits", [tensor], outputs=[top])
        labels = result.as_numpy("output")
        assert labels.shape == (6, 3)
        first = [int(row[0].decode().split(":")[1]) for row in labels]
        assert first == list(expected.argmax(1))

        stats = client.get_inference_statistics("digits")
        assert stats["model_stats"][0]["inference_count"] >= 3
        index = client.get_model_repository_index()
        assert index[0]["name"] == "digits"
    finally:
        client.close()
