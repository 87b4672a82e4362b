"""Baseline: the classic tutorial server: Flask + torch, JSON in/out, one model call per request.

python flask_torch.py PORT MODEL.safetensors {digits|mlp}
"""

import sys
from pathlib import Path

import torch
from flask import Flask, jsonify, request
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "digits"))
from models import mlp_25mb
from train import DigitsCNN

port, weights, kind = int(sys.argv[1]), sys.argv[2], sys.argv[3]
model = DigitsCNN() if kind == "digits" else mlp_25mb()
model.load_state_dict(load_file(weights))
model.eval()
app = Flask(__name__)


@app.post("/<path:path>")
def predict(path: str):  # type: ignore[no-untyped-def]
    tensor = request.get_json()["inputs"][0]
    x = torch.tensor(tensor["data"], dtype=torch.float32).reshape(tensor["shape"])
    with torch.no_grad():
        y = model(x)
    return jsonify({"outputs": [{"name": "output", "data": y.flatten().tolist()}]})


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=port, threaded=True)
