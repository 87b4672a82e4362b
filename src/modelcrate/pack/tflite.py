"""Build a crate from a ``.tflite`` file (run with LiteRT; needs the ``tensorflow`` extra's
``ai-edge-litert``). The signature comes from the interpreter's input and output details;
a leading dimension of 1 is taken as the batch and served dynamically."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from modelcrate.manifest import Artifact, Framework, Signature, TensorSpec
from modelcrate.pack.build import Build
from modelcrate.runtimes.tflite import interpreter

TFLITE_FILE = "model.tflite"


def is_tflite(head: bytes) -> bool:
    """TFLite flatbuffers carry the file identifier ``TFL3`` at bytes 4..8."""
    return len(head) >= 8 and head[4:8] == b"TFL3"


def tensor_spec(detail: dict[str, Any], fallback: str) -> TensorSpec:
    shape = [int(d) for d in detail.get("shape_signature", detail["shape"])]
    if shape and shape[0] in (1, -1):
        shape[0] = -1
    return TensorSpec(
        name=clean_name(str(detail["name"])) or fallback,
        dtype=np.dtype(detail["dtype"]).name,
        shape=shape,
    )


def clean_name(name: str) -> str:
    """``serving_default_image:0`` -> ``image``; graph-internal names give way to defaults."""
    name = name.split(":")[0].removeprefix("serving_default_")
    return "" if name.startswith(("StatefulPartitionedCall", "PartitionedCall")) else name


def build(source: Path, workdir: Path, **_: Any) -> Build:
    runner = interpreter(source.read_bytes())
    inputs, outputs = runner.get_input_details(), runner.get_output_details()
    shutil.copyfile(source, workdir / TFLITE_FILE)
    from ai_edge_litert import __version__ as litert_version

    return Build(
        artifacts=[Artifact(kind="tflite", path=TFLITE_FILE)],
        signature=Signature(
            inputs=[tensor_spec(d, f"input_{i}") for i, d in enumerate(inputs)],
            outputs=[
                tensor_spec(d, "output" if len(outputs) == 1 else f"output_{i}")
                for i, d in enumerate(outputs)
            ],
        ),
        framework=Framework(name="litert", version=litert_version),
    )
