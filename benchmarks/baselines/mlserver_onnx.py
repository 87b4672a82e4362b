"""MLServer (Seldon) running an ONNX model with onnxruntime through a custom runtime, the
way MLServer's docs show it, over OIP v2 REST. Runs in its own virtualenv.

python mlserver_onnx.py PORT MODEL_NAME MODEL.onnx WORKDIR [MAX_BATCH_SIZE]
(writes settings.json and model-settings.json into WORKDIR, then `mlserver start WORKDIR`;
MAX_BATCH_SIZE > 1 turns on MLServer's adaptive batching)
"""

import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        uri = self.settings.parameters.uri
        self.session = ort.InferenceSession(uri, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {item.name: NumpyCodec.decode_input(item) for item in payload.inputs}
        values = self.session.run(self.names, feeds)
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output(name, np.asarray(value))
                for name, value in zip(self.names, values, strict=True)
            ],
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    port, name, path, work = int(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
    batch = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    work.mkdir(parents=True, exist_ok=True)
    (work / "settings.json").write_text(
        json.dumps(
            {
                "http_port": port,
                "grpc_port": free_port(),
                "metrics_port": free_port(),
                "host": "127.0.0.1",
                "parallel_workers": 0,
            }
        )
    )
    model = {
        "name": name,
        "implementation": "mlserver_onnx.OnnxModel",
        "parameters": {"uri": path},
    }
    if batch > 1:
        model.update({"max_batch_size": batch, "max_batch_time": 0.002})
    (work / "model-settings.json").write_text(json.dumps(model))
    os.environ["PYTHONPATH"] = str(Path(__file__).parent)
    binary = str(Path(sys.executable).parent / "mlserver")
    os.execv(binary, [binary, "start", str(work)])
