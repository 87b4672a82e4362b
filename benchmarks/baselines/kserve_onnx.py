"""KServe's Python model server (the `kserve` package) running an ONNX model with
onnxruntime over OIP v2 REST: the peer a KServe user writes. Runs in its own virtualenv.

python kserve_onnx.py PORT MODEL_NAME MODEL.onnx
"""

import sys

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class OnnxModel(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.ready = True

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        feeds = {item.name: item.as_numpy() for item in payload.inputs}
        names = [o.name for o in self.session.get_outputs()]
        outputs = []
        for name, value in zip(names, self.session.run(names, feeds), strict=True):
            output = InferOutput(name=name, shape=list(value.shape), datatype="FP32")
            output.set_data_from_numpy(np.asarray(value, np.float32), binary_data=False)
            outputs.append(output)
        return InferResponse(
            response_id=payload.id or "", model_name=self.name, infer_outputs=outputs
        )


if __name__ == "__main__":
    port, name, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    sys.argv = sys.argv[:1]  # kserve parses the command line itself
    ModelServer(http_port=port, enable_grpc=False, workers=1).start([OnnxModel(name, path)])
