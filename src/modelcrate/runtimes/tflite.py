"""LiteRT (TFLite) runtime: runs a crate's ``.tflite`` artifact from verified bytes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from modelcrate.errors import InputError, PackError, RuntimeUnavailable, first_line

if TYPE_CHECKING:
    from modelcrate.crate import Crate
    from modelcrate.manifest import Artifact


def interpreter(content: bytes) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise RuntimeUnavailable(
            "TFLite models need LiteRT: pip install 'modelcrate[tensorflow]'"
        ) from None
    try:
        runner = Interpreter(model_content=content)
        runner.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise PackError(f"LiteRT cannot load the model: {first_line(exc)}") from None
    return runner


class LiteRTRuntime:
    """One LiteRT interpreter. It is resized, filled and read per call, so it is not
    thread-safe: ``make_runtime`` serializes it (the server runs batches on several threads)."""

    name = "litert"
    thread_safe = False

    def __init__(self, crate: Crate, artifact: Artifact) -> None:
        self.runner = interpreter(crate.read_bytes(artifact.path))
        self.inputs = self.runner.get_input_details()
        self.outputs = self.runner.get_output_details()
        self.output_names = [o.name for o in crate.manifest.signature.outputs]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            for detail, array in zip(self.inputs, inputs.values(), strict=True):
                if list(detail["shape"]) != list(array.shape):
                    self.runner.resize_tensor_input(detail["index"], list(array.shape))
            self.runner.allocate_tensors()
            self.inputs = self.runner.get_input_details()
            for detail, array in zip(self.inputs, inputs.values(), strict=True):
                self.runner.set_tensor(detail["index"], array)
            self.runner.invoke()
        except (ValueError, RuntimeError) as exc:
            raise InputError(f"LiteRT rejected the inputs: {first_line(exc)}") from None
        return {
            name: np.array(self.runner.get_tensor(detail["index"]))
            for name, detail in zip(self.output_names, self.outputs, strict=True)
        }
