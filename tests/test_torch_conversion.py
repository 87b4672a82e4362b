"""ONNX -> PyTorch: every supported operator against ONNX Runtime, whole models (MLP, CNN,
LSTM, GRU, transformer encoder) through `modelcrate convert --to torch` and
`Model.to_torch()`, fine-tuning the converted module, and clear refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import modelcrate as mc
from conftest import make_onnx, run_cli
from modelcrate.errors import PackError
from modelcrate.runtimes.from_onnx import to_module

RNG = np.random.default_rng(0)


def f32(*shape: int, positive: bool = False) -> np.ndarray:
    values = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(values) + 0.1 if positive else values


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def single_node(
    op: str,
    inputs: dict[str, np.ndarray],
    attrs: dict[str, Any] | None = None,
    *,
    constants: tuple[str, ...] = (),
    outputs: int = 1,
    opset: int = 17,
    dynamic_batch: bool = False,
) -> onnx.ModelProto:
    """One ``op`` node; inputs named in ``constants`` are initializers, the rest graph inputs
    (an empty name skips an optional input)."""
    graph_inputs = []
    for name, value in inputs.items():
        if name in constants or not name:
            continue
        elem = helper.np_dtype_to_tensor_dtype(value.dtype)
        shape: list[Any] = list(value.shape)
        if dynamic_batch and shape:
            shape[0] = "batch"
        graph_inputs.append(helper.make_tensor_value_info(name, elem, shape))
    node = helper.make_node(
        op, list(inputs), [f"y{i}" for i in range(outputs)], name=f"{op}_node", **(attrs or {})
    )
    graph = helper.make_graph(
        [node],
        op,
        graph_inputs,
        [helper.make_value_info(f"y{i}", onnx.TypeProto()) for i in range(outputs)],
        [numpy_helper.from_array(inputs[n], n) for n in constants],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def assert_matches_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> Any:
    expected = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    module = to_module(model)
    with torch.no_grad():
        result = module(*(torch.from_numpy(v) for v in feeds.values()))
    got = list(result) if isinstance(result, (tuple, list)) else [result]
    assert len(got) == len(expected)
    for want, have in zip(expected, got, strict=True):
        have = have.numpy()
        assert have.shape == want.shape, (have.shape, want.shape)
        if want.dtype.kind == "f":
            np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(have, want)
    return module


X = f32(2, 3, 4)
POS = f32(2, 3, 4, positive=True)
IMG = f32(2, 3, 7, 7)
B = RNG.random((2, 3, 4)) > 0.5
INTS = RNG.integers(-5, 6, (2, 3, 4)).astype(np.int64)

# (id, op, inputs, attrs, constants, outputs, opset)
CASES: list[tuple[str, str, dict[str, np.ndarray], dict[str, Any], tuple[str, ...], int, int]] = [
    *[
        (op, op, {"x": X}, {}, (), 1, 17)
        for op in (
            "Relu",
            "Sigmoid",
            "Tanh",
            "Exp",
            "Neg",
            "Abs",
            "Erf",
            "Floor",
            "Ceil",
            "Sin",
            "Cos",
            "Sign",
            "Softplus",
            "HardSwish",
            "IsNaN",
            "Identity",
        )
    ],
    *[(op, op, {"x": POS}, {}, (), 1, 17) for op in ("Log", "Sqrt", "Reciprocal")],
    ("Not", "Not", {"x": B}, {}, (), 1, 17),
    *[(op, op, {"a": X, "b": f32(4)}, {}, (), 1, 17) for op in ("Add", "Sub", "Mul", "Div")],
    ("Div-int", "Div", {"a": INTS, "b": i64(3)}, {}, ("b",), 1, 17),
    ("Pow", "Pow", {"a": POS, "b": np.array(1.5, np.float32)}, {}, ("b",), 1, 17),
    *[
        (op, op, {"a": INTS, "b": INTS[::-1].copy()}, {}, (), 1, 17)
        for op in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")
    ],
    *[(op, op, {"a": B, "b": ~B}, {}, (), 1, 17) for op in ("And", "Or", "Xor")],
    *[
        (op, op, {"a": X, "b": f32(4), "c": f32(3, 1)}, {}, (), 1, 17)
        for op in ("Max", "Min", "Sum", "Mean")
    ],
    ("Where", "Where", {"c": B, "a": X, "b": f32(4)}, {}, (), 1, 17),
    ("Dropout", "Dropout", {"x": X}, {}, (), 1, 17),
    ("LeakyRelu", "LeakyRelu", {"x": X}, {"alpha": 0.2}, (), 1, 17),
    ("Elu", "Elu", {"x": X}, {"alpha": 0.5}, (), 1, 17),
    ("Selu", "Selu", {"x": X}, {}, (), 1, 17),
    ("HardSigmoid", "HardSigmoid", {"x": X}, {"alpha": 0.3}, (), 1, 17),
    ("Gelu", "Gelu", {"x": X}, {}, (), 1, 20),
    ("Gelu-tanh", "Gelu", {"x": X}, {"approximate": "tanh"}, (), 1, 20),
    ("PRelu", "PRelu", {"x": X, "slope": f32(4)}, {}, ("slope",), 1, 17),
    (
        "Clip",
        "Clip",
        {"x": X, "lo": np.array(-0.5, np.float32), "hi": np.array(0.5, np.float32)},
        {},
        ("lo", "hi"),
        1,
        17,
    ),
    ("Clip-opset6", "Clip", {"x": X}, {"min": -0.3, "max": 0.2}, (), 1, 6),
    ("Softmax", "Softmax", {"x": X}, {"axis": 1}, (), 1, 17),
    ("Softmax-opset11", "Softmax", {"x": X}, {"axis": 1}, (), 1, 11),
    ("LogSoftmax", "LogSoftmax", {"x": X}, {}, (), 1, 17),
    ("MatMul", "MatMul", {"a": X, "b": f32(2, 4, 5)}, {}, (), 1, 17),
    ("MatMul-weight", "MatMul", {"a": X, "w": f32(4, 5)}, {}, ("w",), 1, 17),
    (
        "Gemm",
        "Gemm",
        {"a": f32(3, 4), "w": f32(5, 4), "c": f32(5)},
        {"transB": 1, "alpha": 0.5, "beta": 2.0},
        ("w", "c"),
        1,
        17,
    ),
    (
        "Gemm-transA",
        "Gemm",
        {"a": f32(4, 3), "w": f32(4, 5), "c": f32(3, 5)},
        {"transA": 1},
        ("w", "c"),
        1,
        17,
    ),
    (
        "Conv",
        "Conv",
        {"x": IMG, "w": f32(4, 3, 3, 3), "b": f32(4)},
        {"pads": [1, 1, 1, 1]},
        ("w", "b"),
        1,
        17,
    ),
    (
        "Conv-strided-asymmetric",
        "Conv",
        {"x": IMG, "w": f32(4, 3, 3, 3)},
        {"pads": [0, 1, 2, 1], "strides": [2, 2], "dilations": [1, 2]},
        ("w",),
        1,
        17,
    ),
    (
        "Conv-grouped-same",
        "Conv",
        {"x": f32(2, 4, 6, 6), "w": f32(4, 2, 3, 3)},
        {"group": 2, "auto_pad": "SAME_UPPER", "strides": [2, 2]},
        ("w",),
        1,
        17,
    ),
    ("Conv1d", "Conv", {"x": f32(2, 3, 9), "w": f32(5, 3, 2)}, {"strides": [2]}, ("w",), 1, 17),
    ("Conv3d", "Conv", {"x": f32(1, 2, 4, 4, 4), "w": f32(3, 2, 2, 2, 2)}, {}, ("w",), 1, 17),
    (
        "BatchNormalization",
        "BatchNormalization",
        {"x": IMG, "s": f32(3), "b": f32(3), "m": f32(3), "v": f32(3, positive=True)},
        {"epsilon": 1e-3},
        ("s", "b", "m", "v"),
        1,
        17,
    ),
    (
        "LayerNormalization",
        "LayerNormalization",
        {"x": X, "s": f32(4), "b": f32(4)},
        {},
        ("s", "b"),
        1,
        17,
    ),
    (
        "LayerNormalization-2d",
        "LayerNormalization",
        {"x": X, "s": f32(3, 4)},
        {"axis": -2},
        ("s",),
        1,
        17,
    ),
    (
        "LSTM",
        "LSTM",
        {"x": f32(5, 2, 3), "w": f32(1, 16, 3), "r": f32(1, 16, 4), "b": f32(1, 32)},
        {"hidden_size": 4},
        ("w", "r", "b"),
        3,
        17,
    ),
    (
        "LSTM-bidirectional-states",
        "LSTM",
        {
            "x": f32(5, 2, 3),
            "w": f32(2, 16, 3),
            "r": f32(2, 16, 4),
            "b": f32(2, 32),
            "": np.zeros(0),
            "h0": f32(2, 2, 4),
            "c0": f32(2, 2, 4),
        },
        {"hidden_size": 4, "direction": "bidirectional"},
        ("w", "r", "b"),
        3,
        17,
    ),
    (
        "GRU",
        "GRU",
        {"x": f32(5, 2, 3), "w": f32(1, 12, 3), "r": f32(1, 12, 4), "b": f32(1, 24)},
        {"hidden_size": 4, "linear_before_reset": 1},
        ("w", "r", "b"),
        2,
        17,
    ),
    (
        "GRU-bidirectional",
        "GRU",
        {"x": f32(5, 2, 3), "w": f32(2, 12, 3), "r": f32(2, 12, 4), "b": f32(2, 24)},
        {"hidden_size": 4, "linear_before_reset": 1, "direction": "bidirectional"},
        ("w", "r", "b"),
        2,
        17,
    ),
    ("Shape", "Shape", {"x": X}, {"start": 1}, (), 1, 17),
    ("Gather", "Gather", {"x": X, "i": i64(2, -1, 0)}, {"axis": 2}, ("i",), 1, 17),
    (
        "Gather-embedding",
        "Gather",
        {"table": f32(10, 4), "ids": i64(1, 7, 7, 0)},
        {},
        ("table",),
        1,
        17,
    ),
    ("Gather-scalar", "Gather", {"x": X, "i": np.array(1, np.int64)}, {"axis": 1}, ("i",), 1, 17),
    (
        "Slice",
        "Slice",
        {"x": X, "s": i64(0, 1), "e": i64(2, 99), "a": i64(1, 2), "st": i64(1, 2)},
        {},
        ("s", "e", "a", "st"),
        1,
        17,
    ),
    ("Slice-opset9", "Slice", {"x": X}, {"starts": [1], "ends": [-1], "axes": [2]}, (), 1, 9),
    ("Concat", "Concat", {"a": X, "b": f32(2, 1, 4)}, {"axis": 1}, ("b",), 1, 17),
    ("Unsqueeze", "Unsqueeze", {"x": X, "a": i64(0, -1)}, {}, ("a",), 1, 17),
    ("Unsqueeze-opset11", "Unsqueeze", {"x": X}, {"axes": [1]}, (), 1, 11),
    ("Squeeze", "Squeeze", {"x": f32(2, 1, 4, 1), "a": i64(1)}, {}, ("a",), 1, 17),
    ("Squeeze-all", "Squeeze", {"x": f32(2, 1, 4, 1)}, {}, (), 1, 17),
    ("Cast", "Cast", {"x": X}, {"to": TensorProto.INT32}, (), 1, 17),
    ("CastLike", "CastLike", {"x": INTS, "like": X}, {}, (), 1, 17),
    ("Reshape", "Reshape", {"x": X, "s": i64(0, -1)}, {}, ("s",), 1, 17),
    ("Flatten", "Flatten", {"x": X}, {"axis": 2}, (), 1, 17),
    ("Flatten-0", "Flatten", {"x": X}, {"axis": 0}, (), 1, 17),
    ("Transpose", "Transpose", {"x": X}, {"perm": [2, 0, 1]}, (), 1, 17),
    ("Transpose-default", "Transpose", {"x": X}, {}, (), 1, 17),
    ("Split", "Split", {"x": X, "s": i64(1, 3)}, {"axis": 2}, ("s",), 2, 17),
    ("Split-equal", "Split", {"x": X}, {"axis": 1}, (), 3, 17),
    ("Split-num-outputs", "Split", {"x": f32(2, 5)}, {"axis": 1, "num_outputs": 2}, (), 2, 18),
    ("Expand", "Expand", {"x": f32(3, 1), "s": i64(2, 3, 4)}, {}, ("s",), 1, 17),
    ("Tile", "Tile", {"x": X, "r": i64(1, 2, 3)}, {}, ("r",), 1, 17),
    (
        "ConstantOfShape",
        "ConstantOfShape",
        {"s": i64(2, 3)},
        {"value": numpy_helper.from_array(np.array([7], np.int64))},
        ("s",),
        1,
        17,
    ),
    (
        "Range",
        "Range",
        {
            "a": np.array(1.0, np.float32),
            "b": np.array(4.0, np.float32),
            "c": np.array(0.5, np.float32),
        },
        {},
        ("a", "b", "c"),
        1,
        17,
    ),
    (
        "Pad",
        "Pad",
        {"x": IMG, "p": i64(0, 0, 1, 2, 0, 0, 2, 1), "v": np.array(0.5, np.float32)},
        {},
        ("p", "v"),
        1,
        17,
    ),
    (
        "Pad-reflect",
        "Pad",
        {"x": IMG, "p": i64(0, 0, 1, 2, 0, 0, 2, 1)},
        {"mode": "reflect"},
        ("p",),
        1,
        17,
    ),
    (
        "Pad-edge-axes",
        "Pad",
        {"x": IMG, "p": i64(1, 2, 3, 0), "": np.zeros(0), "a": i64(2, 3)},
        {"mode": "edge"},
        ("p", "a"),
        1,
        18,
    ),
    ("Constant", "Constant", {}, {"value": numpy_helper.from_array(f32(2, 2))}, (), 1, 17),
    ("ReduceMean", "ReduceMean", {"x": X}, {"axes": [1, 2]}, (), 1, 13),
    ("ReduceMean-opset18", "ReduceMean", {"x": X, "a": i64(-1)}, {"keepdims": 0}, ("a",), 1, 18),
    ("ReduceSum", "ReduceSum", {"x": X, "a": i64(0)}, {}, ("a",), 1, 13),
    ("ReduceSum-all", "ReduceSum", {"x": X}, {"keepdims": 0}, (), 1, 13),
    ("ReduceSum-noop", "ReduceSum", {"x": X}, {"noop_with_empty_axes": 1}, (), 1, 13),
    *[
        (op, op, {"x": X}, {"axes": [1]}, (), 1, 17)
        for op in ("ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceSumSquare")
    ],
    ("ArgMax", "ArgMax", {"x": X}, {"axis": 2}, (), 1, 17),
    (
        "ArgMin-last",
        "ArgMin",
        {"x": np.round(X)},
        {"axis": 1, "keepdims": 0, "select_last_index": 1},
        (),
        1,
        17,
    ),
    (
        "MaxPool",
        "MaxPool",
        {"x": IMG},
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        (),
        1,
        17,
    ),
    (
        "MaxPool-asymmetric-ceil",
        "MaxPool",
        {"x": IMG},
        {"kernel_shape": [2, 2], "pads": [0, 0, 1, 1], "strides": [2, 2], "ceil_mode": 1},
        (),
        1,
        17,
    ),
    (
        "MaxPool-same",
        "MaxPool",
        {"x": IMG},
        {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
        (),
        1,
        17,
    ),
    (
        "AveragePool",
        "AveragePool",
        {"x": IMG},
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
        (),
        1,
        17,
    ),
    (
        "AveragePool-include-pad",
        "AveragePool",
        {"x": IMG},
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1},
        (),
        1,
        17,
    ),
    ("GlobalAveragePool", "GlobalAveragePool", {"x": IMG}, {}, (), 1, 17),
    ("GlobalMaxPool", "GlobalMaxPool", {"x": IMG}, {}, (), 1, 17),
]


@pytest.mark.parametrize(
    ("op", "inputs", "attrs", "constants", "outputs", "opset"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_each_operator_matches_onnx_runtime(
    op: str,
    inputs: dict[str, np.ndarray],
    attrs: dict[str, Any],
    constants: tuple[str, ...],
    outputs: int,
    opset: int,
) -> None:
    model = single_node(op, inputs, attrs, constants=constants, outputs=outputs, opset=opset)
    feeds = {k: v for k, v in inputs.items() if k and k not in constants}
    assert_matches_ort(model, feeds)


def test_every_supported_operator_is_tested() -> None:
    from modelcrate.runtimes.from_onnx.ops import HANDLERS

    assert set(HANDLERS) == {case[1] for case in CASES}


def test_weights_become_named_trainable_parameters() -> None:
    model = single_node(
        "Conv",
        {"x": IMG, "conv1.weight": f32(4, 3, 3, 3), "conv1.bias": f32(4)},
        constants=("conv1.weight", "conv1.bias"),
    )
    module = to_module(model)
    assert {n: p.requires_grad for n, p in module.named_parameters()} == {
        "conv1.weight": True,
        "conv1.bias": True,
    }
    out = module(torch.from_numpy(IMG))
    out.sum().backward()
    assert all(p.grad is not None for p in module.parameters())


def shape_graph() -> onnx.ModelProto:
    """x [batch, 3, 4] -> reshape to [batch, 12] with the batch read by Shape/Gather at run
    time, then a bias Add fused into a MatMul, and a Range/ConstantOfShape over the batch."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "dense.weight"], ["mm"]),
        helper.make_node("Add", ["dense.bias", "mm"], ["y"]),
        helper.make_node(
            "Cast",
            [
                "n",
            ],
            ["nf"],
            to=TensorProto.INT64,
        ),
        helper.make_node("Range", ["zero", "nf", "one"], ["ids"]),
        helper.make_node(
            "ConstantOfShape",
            ["n1"],
            ["ones"],
            value=numpy_helper.from_array(np.array([1.0], np.float32)),
        ),
    ]
    inits = {
        "zero": np.array(0, np.int64),
        "one": np.array(1, np.int64),
        "zero1": i64(0),
        "minus1": i64(-1),
        "dense.weight": f32(12, 5),
        "dense.bias": f32(5),
    }
    graph = helper.make_graph(
        nodes,
        "shapes",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4])],
        [helper.make_value_info(n, onnx.TypeProto()) for n in ("y", "ids", "ones")],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_shape_arithmetic_keeps_the_batch_dynamic() -> None:
    model = shape_graph()
    module = None
    for batch in (1, 6):
        module = assert_matches_ort(model, {"x": f32(batch, 3, 4)})
    assert module is not None
    assert [n for n, _ in module.named_parameters()] == ["dense.weight", "dense.bias"]
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        module, (torch.from_numpy(f32(4, 3, 4)),), dynamic_shapes=({0: batch},)
    )
    y, ids, ones = program.module()(torch.from_numpy(f32(9, 3, 4)))
    assert y.shape == (9, 5) and ids.tolist() == list(range(9)) and ones.shape == (9,)


def test_unsupported_operators_are_all_named() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Hardmax", ["a"], ["b"]),
        helper.make_node("Hardmax", ["b"], ["c"]),
        helper.make_node("FusedMatMul", ["c", "c"], ["y"], domain="com.microsoft"),
    ]
    graph = helper.make_graph(
        nodes,
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_value_info("y", onnx.TypeProto())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(
        PackError, match=r"Hardmax \(2 nodes\), com.microsoft:FusedMatMul \(1 node\)"
    ):
        to_module(model)
    unsupported = single_node(
        "LSTM",
        {"x": f32(5, 2, 3), "w": f32(1, 16, 3), "r": f32(1, 16, 4)},
        {"hidden_size": 4, "direction": "reverse", "clip": 1.0},
        constants=("w", "r"),
        outputs=3,
    )
    with pytest.raises(PackError, match="LSTM_node.*direction reverse, clip not supported"):
        to_module(unsupported)


# --- whole models, through the CLI and the Python API ---------------------------------


class Encoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.TransformerEncoderLayer(
            16, 2, 32, batch_first=True, activation="gelu", dropout=0.0
        )
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(x).mean(1))


class Recurrent(torch.nn.Module):
    def __init__(self, cls: type[torch.nn.Module], **options: Any) -> None:
        super().__init__()
        self.rnn = cls(6, 8, batch_first=True, **options)
        self.head = torch.nn.Linear(16 if options.get("bidirectional") else 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.max_pool2d(torch.relu(self.norm(self.conv(x))), 2)
        return self.fc(torch.flatten(x, 1))


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    """``module`` as an ONNX file only (torch's dynamo exporter, dynamic batch)."""
    module.eval()
    torch.manual_seed(0)
    for parameter in module.parameters():  # non-trivial weights, norms included
        torch.nn.init.normal_(parameter, std=0.3)
    program = torch.export.export(
        module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.onnx.export(program, dynamo=True, verbose=False).save(str(path))
    return path


MODELS = {
    "mlp": (
        lambda: torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)),
        (4, 5),
    ),
    "cnn": (SmallCNN, (4, 1, 8, 8)),
    "lstm": (lambda: Recurrent(torch.nn.LSTM), (4, 5, 6)),
    "bilstm": (lambda: Recurrent(torch.nn.LSTM, bidirectional=True), (4, 5, 6)),
    "gru": (lambda: Recurrent(torch.nn.GRU), (4, 5, 6)),
    "transformer": (Encoder, (4, 5, 16)),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_onnx_only_crates_become_torch_modules(kind: str, tmp_path: Path) -> None:
    make, shape = MODELS[kind]
    x = torch.from_numpy(f32(*shape))
    path = export_onnx(make(), x, tmp_path / f"{kind}.onnx")
    model = mc.load(mc.pack(path, name=kind, version="1.0.0", samples=x.numpy()))
    assert model.manifest.artifact("torch-export") is None
    module = model.to_torch()
    bigger = f32(7, *shape[1:])
    with torch.no_grad():
        got = module(torch.from_numpy(bigger)).numpy()
    np.testing.assert_allclose(got, next(iter(model.predict(bigger).values())), atol=1e-5)
    assert all(p.requires_grad for p in module.parameters())


def test_convert_to_torch_publishes_a_parity_checked_trainable_version(
    tmp_path: Path, home: Path
) -> None:
    x = torch.from_numpy(f32(4, 1, 8, 8))
    path = export_onnx(SmallCNN(), x, tmp_path / "cnn.onnx")
    crate = tmp_path / "cnn.crate"
    run_cli("pack", str(path), "--name", "cnn", "--version", "1.0.0", "-o", str(crate), check=True)
    run_cli("publish", str(crate), check=True)
    done = run_cli("convert", "cnn@1.0.0", "--to", "torch", "--json", check=True)
    result = json.loads(done.stdout)
    assert result["ref"] == "cnn@1.0.0-torch"
    assert result["report"]["max_abs_diff"] <= 1e-4
    child = mc.load("cnn@1.0.0-torch")
    assert {a.kind for a in child.manifest.artifacts} >= {"onnx", "torch-export"}
    lineage = child.manifest.lineage
    assert lineage is not None and lineage.operation == "convert"
    assert lineage.parents[0].digest == mc.load("cnn@1.0.0").manifest.digest
    assert lineage.parameters["to"] == "torch" and lineage.parameters["torch"]
    assert lineage.parameters["onnx"] == onnx.__version__
    module = child.to_torch()
    names = {n for n, _ in module.named_parameters()}  # the exporter folds the norm into conv
    assert {"conv.weight", "fc.weight"} <= names
    again = run_cli("convert", "cnn@1.0.0-torch", "--to", "torch")
    assert again.returncode != 0 and "already has a torch-export" in again.stderr


def test_finetune_a_converted_crate_keeps_frozen_tensors(tmp_path: Path, home: Path) -> None:
    x = torch.from_numpy(f32(4, 1, 8, 8))
    path = export_onnx(SmallCNN(), x, tmp_path / "cnn.onnx")
    registry = mc.Registry.open()
    registry.publish(mc.pack(path, name="cnn", version="1.0.0"))
    images = f32(64, 1, 8, 8)
    labels = RNG.integers(0, 10, 64)
    np.savez(tmp_path / "train.npz", x=images, y=labels)
    run_cli(
        "finetune",
        "cnn@1.0.0",
        "--data",
        str(tmp_path / "train.npz"),
        "--epochs",
        "2",
        "--version",
        "2.0.0",
        check=True,
    )
    parent = mc.load("cnn@1.0.0").to_torch().state_dict()
    child = mc.load("cnn@2.0.0").to_torch().state_dict()
    assert torch.equal(parent["conv.weight"], child["conv.weight"])  # backbone frozen
    assert not torch.equal(parent["fc.weight"], child["fc.weight"])  # the head trained


def test_prune_an_onnx_only_crate(tmp_path: Path) -> None:
    registry = mc.Registry.open(tmp_path / "reg")
    registry.publish(mc.pack(make_onnx(tmp_path / "m.onnx", width=8), name="tiny", version="1.0.0"))
    result = mc.optimize("tiny@1.0.0", prune=0.5, registry=registry)
    assert result.report.sparsity == pytest.approx(0.5)
