"""TensorFlow and Keras: .keras, .h5 and SavedModel pack into crates with an ONNX artifact
(parity checked) and the original; Lambda layers are refused unless allowed; .tflite packs and
runs on LiteRT; crates export to the TF Serving layout. Models are built here, on digits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modelcrate as mc
from conftest import Server, run_cli

pytestmark = pytest.mark.tensorflow  # `make test` runs these in a process of their own


class TF:
    """TensorFlow and Keras, imported only when a test here runs (never at collection:
    loading TensorFlow before torch's compiler stack crashes the process)."""

    def __init__(self) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        self.tf = pytest.importorskip("tensorflow", reason="the tensorflow extra is not installed")
        self.keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def tfk() -> TF:
    return TF()


@pytest.fixture(scope="module")
def digits_keras(tfk: TF) -> tuple[Any, np.ndarray, np.ndarray, float]:
    """A small Keras CNN trained on digits (channels-last 8x8 images)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    keras = tfk.keras
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, data.target, test_size=0.25, random_state=0
    )
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x_train, y_train, epochs=5, batch_size=64, verbose=0)
    accuracy = float((np.argmax(model.predict(x_test, verbose=0), 1) == y_test).mean())
    return model, x_test, y_test, accuracy


def test_pack_keras_file_and_serve_it_without_tensorflow(
    digits_keras: tuple[Any, np.ndarray, np.ndarray, float], tmp_path: Path, home: Path
) -> None:
    model, x_test, y_test, accuracy = digits_keras
    assert accuracy > 0.85
    path = tmp_path / "mnist_cnn.keras"
    model.save(path)
    packed = run_cli(
        "pack",
        str(path),
        "--name",
        "mnist",
        "--version",
        "1.0.0",
        "--output",
        str(tmp_path / "mnist.crate"),
    )
    assert packed.returncode == 0, packed.stderr
    crate = mc.Crate.open(tmp_path / "mnist.crate")
    kinds = {a.kind: a for a in crate.manifest.artifacts}
    assert set(kinds) == {"onnx", "keras"}
    assert kinds["onnx"].parity is not None and kinds["onnx"].parity.max_abs_diff < 1e-4
    assert crate.manifest.signature.inputs[0].name == "image"
    assert crate.manifest.signature.inputs[0].shape == [-1, 8, 8, 1]
    assert crate.manifest.framework is not None and crate.manifest.framework.name == "tensorflow"
    onnx_scores = mc.load(tmp_path / "mnist.crate").predict(x_test)["output"]
    np.testing.assert_allclose(onnx_scores, model.predict(x_test, verbose=0), atol=1e-4)
    assert float((onnx_scores.argmax(1) == y_test).mean()) == pytest.approx(accuracy, abs=0.01)


def test_pack_h5_and_saved_model_and_an_lstm(
    tmp_path: Path, digits_keras: tuple[Any, ...], tfk: TF
) -> None:
    keras = tfk.keras
    model, x_test, _, _ = digits_keras
    model.save(tmp_path / "legacy.h5")
    h5 = mc.pack(tmp_path / "legacy.h5", name="legacy", version="1.0.0")
    assert {a.kind for a in h5.manifest.artifacts} == {"onnx", "keras"}
    np.testing.assert_allclose(
        mc.Model(h5).predict(x_test[:8])["output"], model.predict(x_test[:8], verbose=0), atol=1e-4
    )

    model.export(str(tmp_path / "saved"), verbose=False)
    saved = mc.pack(tmp_path / "saved", name="saved", version="1.0.0")
    savedmodel = saved.manifest.artifact("savedmodel")
    assert savedmodel is not None and savedmodel.path == "saved_model/saved_model.pb"
    assert any(f.startswith("saved_model/variables/") for f in savedmodel.data_files)
    np.testing.assert_allclose(
        mc.Model(saved).predict(x_test[:8])["output"],
        model.predict(x_test[:8], verbose=0),
        atol=1e-4,
    )
    # A SavedModel crate converts to torch like a Keras one (in a process without TF).
    saved.save(tmp_path / "saved.crate")
    converted = run_cli(
        "convert",
        str(tmp_path / "saved.crate"),
        "--to",
        "torch",
        "--json",
        "--registry",
        str(tmp_path / "registry"),
    )
    assert converted.returncode == 0, converted.stderr
    assert json.loads(converted.stdout)["report"]["max_abs_diff"] <= 1e-4

    keras.utils.set_random_seed(1)
    lstm = keras.Sequential(
        [keras.Input((5, 3), name="series"), keras.layers.LSTM(8), keras.layers.Dense(2)]
    )
    lstm.save(tmp_path / "lstm.keras")
    crate = mc.pack(tmp_path / "lstm.keras", name="lstm", version="1.0.0")
    series = np.random.default_rng(0).standard_normal((6, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(
        mc.Model(crate).predict(series)["output"], lstm.predict(series, verbose=0), atol=1e-4
    )


def test_an_op_tf2onnx_cannot_convert_is_a_clear_error(tmp_path: Path, tfk: TF) -> None:
    keras = tfk.keras
    model = keras.Sequential(
        [keras.Input((4,), name="x"), keras.layers.Dense(3, activation="gelu")]
    )
    model.save(tmp_path / "gelu.keras")  # exact GELU: tf2onnx has no converter for its Erfc
    packed = run_cli(
        "pack",
        str(tmp_path / "gelu.keras"),
        "--name",
        "g",
        "--version",
        "1.0.0",
        "-o",
        str(tmp_path / "g.crate"),
    )
    assert packed.returncode == 1 and "Traceback" not in packed.stderr
    assert "cannot run" in packed.stderr and "Erfc" in packed.stderr
    assert not (tmp_path / "g.crate").exists()


def test_lambda_layers_are_refused_unless_allowed(tmp_path: Path, tfk: TF) -> None:
    keras = tfk.keras
    canary = tmp_path / "canary"

    # Runs whenever Keras builds or calls the layer; saved as bytecode with the path in it.
    double = eval(
        f"lambda v: (__import__('pathlib').Path({str(canary)!r}).write_text('ran'), v * 2.0)[1]"
    )
    model = keras.Sequential(
        [keras.Input((4,), name="x"), keras.layers.Lambda(double), keras.layers.Dense(2)]
    )
    for suffix in (".keras", ".h5"):  # .h5 ignores Keras's safe_mode (CVE-2025-9905)
        path = tmp_path / f"lambda{suffix}"
        model.save(path)
        canary.unlink(missing_ok=True)
        refused = run_cli(
            "pack",
            str(path),
            "--name",
            "lam",
            "--version",
            "1.0.0",
            "--output",
            str(tmp_path / "lam.crate"),
        )
        assert refused.returncode == 1 and "Lambda layer" in refused.stderr, refused.stderr
        assert not (tmp_path / "lam.crate").exists() and not canary.exists()
    allowed = mc.pack(
        tmp_path / "lambda.keras", name="lam", version="1.0.0", keras_allow=["Lambda"]
    )
    assert canary.exists()  # allowed: Keras ran the layer's code, as the user chose
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(
        mc.Model(allowed).predict(x)["output"], model.predict(x, verbose=0), atol=1e-5
    )


def test_tflite_packs_and_runs_on_litert(
    digits_keras: tuple[Any, np.ndarray, np.ndarray, float], tmp_path: Path, tfk: TF
) -> None:
    tf = tfk.tf
    model, x_test, _, _ = digits_keras
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    (tmp_path / "model.tflite").write_bytes(converter.convert())
    packed = run_cli(
        "pack",
        str(tmp_path / "model.tflite"),
        "--name",
        "mnist-edge",
        "--version",
        "1.0.0",
        "--output",
        str(tmp_path / "edge.crate"),
    )
    assert packed.returncode == 0, packed.stderr
    edge = mc.load(tmp_path / "edge.crate")
    assert edge.runtime.name == "litert"
    assert [a.kind for a in edge.manifest.artifacts] == ["tflite"]
    scores = edge.predict(x_test[:5])
    np.testing.assert_allclose(
        next(iter(scores.values())), model.predict(x_test[:5], verbose=0), atol=1e-4
    )
    # Concurrent calls with different batch sizes (the server's batcher runs batches on
    # several threads): each gets its own rows, as if it ran alone.
    from concurrent.futures import ThreadPoolExecutor

    sizes = [1, 7, 3, 12, 5, 9, 2, 11] * 4
    alone = {n: next(iter(edge.predict(x_test[:n]).values())) for n in set(sizes)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda n: next(iter(edge.predict(x_test[:n]).values())), sizes))
    for n, got in zip(sizes, together, strict=True):
        np.testing.assert_array_equal(got, alone[n])
    # A .tflite-only crate has no ONNX to rebuild a torch module from: a clear refusal.
    refused = run_cli("convert", str(tmp_path / "edge.crate"), "--to", "torch")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "no ONNX or torch-export artifact" in refused.stderr and "tflite" in refused.stderr


def test_a_served_tflite_crate_answers_16_concurrent_requests_each_correctly(
    digits_keras: tuple[Any, np.ndarray, np.ndarray, float],
    tmp_path: Path,
    tfk: TF,
    start_server: Callable[..., Server],
) -> None:
    """LiteRT is not thread-safe; the server runs batches on several threads, so the runtime
    is serialized: 16 requests at once, each with its own input, each get their own answer."""
    from concurrent.futures import ThreadPoolExecutor

    model, x_test, _, _ = digits_keras
    converter = tfk.tf.lite.TFLiteConverter.from_keras_model(model)
    (tmp_path / "model.tflite").write_bytes(converter.convert())
    registry = mc.Registry.open(tmp_path / "registry")
    registry.publish(mc.pack(tmp_path / "model.tflite", name="edge", version="1.0.0"))
    alone = mc.load("edge@1.0.0", registry=registry)
    assert alone.runtime.name == "litert"  # serialized by make_runtime
    server = start_server(registry.root, "edge", "--max-batch-size", "1")
    inputs = [x_test[i : i + 1 + i % 3] for i in range(16)]
    expected = [next(iter(alone.predict(x).values())) for x in inputs]

    def ask(x: np.ndarray) -> np.ndarray:
        with mc.Client(server.url) as client:
            return next(iter(client.predict("edge", x).values()))

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(ask, inputs))
    for got, want in zip(answers, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_export_to_the_tf_serving_layout(
    digits_keras: tuple[Any, np.ndarray, np.ndarray, float],
    tmp_path: Path,
    registry: mc.Registry,
    tfk: TF,
) -> None:
    tf = tfk.tf
    model, x_test, _, _ = digits_keras
    model.save(tmp_path / "mnist.keras")
    registry.publish(mc.pack(tmp_path / "mnist.keras", name="mnist", version="1.0.0"))
    exported = run_cli(
        "export",
        "mnist@1.0.0",
        "--format",
        "tfserving",
        "--to",
        str(tmp_path / "models"),
        "--registry",
        str(registry.root),
    )
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "models" / "mnist" / "1" / "saved_model.pb").is_file()
    served = tf.saved_model.load(str(tmp_path / "models" / "mnist" / "1"))
    function = served.signatures["serving_default"]
    outputs = function(
        **{name: tf.constant(x_test[:4]) for name in function.structured_input_signature[1]}
    )
    np.testing.assert_allclose(
        next(iter(outputs.values())).numpy(), model.predict(x_test[:4], verbose=0), atol=1e-4
    )
    again = run_cli(
        "export",
        "mnist@1.0.0",
        "--format",
        "tfserving",
        "--to",
        str(tmp_path / "models"),
        "--registry",
        str(registry.root),
    )
    assert again.returncode == 0 and (tmp_path / "models" / "mnist" / "2").is_dir()


def test_convert_a_keras_crate_to_tflite_with_parity(
    digits_keras: tuple[Any, np.ndarray, np.ndarray, float],
    tmp_path: Path,
    registry: mc.Registry,
    tfk: TF,
) -> None:
    model, x_test, _, _ = digits_keras
    model.save(tmp_path / "mnist.keras")
    registry.publish(mc.pack(tmp_path / "mnist.keras", name="mnist", version="1.0.0"))
    result = mc.convert("mnist@1.0.0", to="tflite", registry=registry)
    assert result.crate.manifest.version == "1.0.0-tflite"
    assert [a.kind for a in result.crate.manifest.artifacts] == ["tflite"]
    assert result.report.max_abs_diff < 1e-4 and result.report.top1_agreement == 1.0
    edge = mc.load("mnist@1.0.0-tflite", registry=registry)
    np.testing.assert_allclose(
        next(iter(edge.predict(x_test[:4]).values())),
        model.predict(x_test[:4], verbose=0),
        atol=1e-4,
    )


# Run in a process of its own: torch must not share a process with TensorFlow. Trains a
# torch CNN like the Keras one (same data, epochs, batch), fine-tunes it the same way, and
# reports the converted Keras module's outputs and the torch-born model's accuracy.
TORCH_SIDE = """
import json, sys
import numpy as np, torch
import modelcrate as mc

x_test = np.load(sys.argv[1])
keras_converted = mc.load("mnist@1.0.0-torch").to_torch()
on_the_fly = mc.load("mnist@1.0.0").to_torch()
with torch.no_grad():
    np.save(sys.argv[2], keras_converted(torch.from_numpy(x_test)).numpy())
    np.save(sys.argv[3], on_the_fly(torch.from_numpy(x_test)).numpy())
trainable = all(p.requires_grad for p in keras_converted.parameters())

data = np.load(sys.argv[4])
x, y = data["x"], data["y"]
torch.manual_seed(0)
net = torch.nn.Sequential(
    torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.BatchNorm2d(16),
    torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(256, 10),
)
nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
for epoch in range(10):  # trained as the Keras model was
    for start in range(0, 600, 32):
        optimizer.zero_grad()
        batch = slice(start, start + 32)
        loss = torch.nn.functional.cross_entropy(net(nchw[batch]), torch.from_numpy(y[batch]))
        loss.backward()
        optimizer.step()
net.eval()
crate = mc.pack(net, example_inputs=(nchw[:32],), name="torchborn", version="1.0.0")
mc.Registry.open().publish(crate)
tuned = mc.finetune("torchborn@1.0.0", (nchw.numpy(), y), epochs=3, version="2.0.0")
print(json.dumps({"trainable": trainable, **tuned.manifest.metrics}))
"""


def test_a_keras_cnn_converts_to_torch_and_finetunes_like_a_torch_born_one(
    tmp_path: Path, tfk: TF, home: Path
) -> None:
    from sklearn.datasets import load_digits

    keras = tfk.keras
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[..., None]  # NHWC
    x_train, y_train = images[:1200], data.target[:1200]
    x_test = images[1200:]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
            keras.layers.BatchNormalization(momentum=0.9),  # torch's default momentum
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x_train[:600], y_train[:600], epochs=10, batch_size=32, verbose=0)
    expected = model.predict(x_test, verbose=0)
    model.save(tmp_path / "mnist.keras")
    crate = tmp_path / "mnist.crate"
    run_cli(
        "pack",
        str(tmp_path / "mnist.keras"),
        "--name",
        "mnist",
        "--version",
        "1.0.0",
        "-o",
        str(crate),
        check=True,
    )
    run_cli("publish", str(crate), check=True)

    converted = run_cli("convert", "mnist@1.0.0", "--to", "torch", "--json", check=True)
    report = json.loads(converted.stdout)
    assert report["ref"] == "mnist@1.0.0-torch" and report["report"]["max_abs_diff"] <= 1e-4
    child = mc.load("mnist@1.0.0-torch")
    assert {a.kind for a in child.manifest.artifacts} == {"onnx", "torch-export", "safetensors"}
    assert child.manifest.signature.inputs[0].shape == [-1, 8, 8, 1]  # NHWC, as in Keras
    assert child.manifest.lineage is not None
    assert child.manifest.lineage.parameters["source_framework"] == "tensorflow"

    np.save(tmp_path / "x_test.npy", x_test)
    np.savez(tmp_path / "train.npz", x=x_train, y=y_train)
    outputs = [tmp_path / "converted.npy", tmp_path / "on_the_fly.npy"]
    torch_side = subprocess.run(
        [
            sys.executable,
            "-c",
            TORCH_SIDE,
            str(tmp_path / "x_test.npy"),
            *map(str, outputs),
            str(tmp_path / "train.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert torch_side.returncode == 0, torch_side.stderr
    torch_born = json.loads(torch_side.stdout.strip().splitlines()[-1])
    assert torch_born["trainable"]
    for path in outputs:  # the torch modules take NHWC and match Keras
        np.testing.assert_allclose(np.load(path), expected, atol=1e-4)

    run_cli(
        "finetune",
        "mnist@1.0.0-torch",
        "--data",
        str(tmp_path / "train.npz"),
        "--epochs",
        "3",
        "--name",
        "mnist",
        "--version",
        "2.0.0",
        check=True,
    )
    tuned = mc.load("mnist@2.0.0").manifest
    assert tuned.metrics is not None and torch_born["accuracy"] > 0.85, (tuned.metrics, torch_born)
    assert tuned.metrics["accuracy"] >= torch_born["accuracy"] - 0.05
    assert tuned.metrics["accuracy"] > tuned.metrics["accuracy_before"]
    print("fine-tuned accuracy: converted Keras", tuned.metrics, "torch-born", torch_born)
    from safetensors.numpy import load as load_safetensors

    registry = mc.Registry.open()
    before, after = (
        load_safetensors(registry.get(ref).read_bytes("model.safetensors"))
        for ref in ("mnist@1.0.0-torch", "mnist@2.0.0")
    )
    changed = sorted(k for k in before if not np.array_equal(before[k], after[k]))
    assert changed and all(k.startswith("dense") for k in changed), changed  # the head only
    assert any(k.startswith("conv2d") for k in before)  # frozen: bit-identical
