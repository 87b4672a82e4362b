"""Build crate artifacts from TensorFlow/Keras: ``.keras`` (Keras 3), legacy ``.h5`` and
SavedModel directories. Needs the ``tensorflow`` extra (TensorFlow, tf2onnx).

Each becomes an ONNX artifact (tf2onnx, from the model's serving function, batch
dimension dynamic; what ``load`` runs) plus the original, kept as its own artifact
(``keras`` or ``savedmodel``) for TensorFlow users and TF Serving exports. ONNX
outputs are compared with TensorFlow's on seeded inputs; packing fails above the
tolerance.

Safety: the model's config is read as data and checked before Keras sees the
file: ``Lambda`` layers (arbitrary Python) and classes from outside Keras are
refused unless named in ``keras_allow``; ``.keras`` files load with
``safe_mode=True`` (``.h5`` ignores safe_mode, CVE-2025-9905, so its config is
checked the same way first). SavedModel serving graphs that read or write files
are refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelcrate.errors import PackError, RuntimeUnavailable, UnsafeContentError, first_line
from modelcrate.manifest import Artifact, Framework, Parity, Signature, TensorSpec
from modelcrate.pack.build import Build
from modelcrate.pack.onnx import ONNX_FILE, opset_of, signature_of

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
SAVED_MODEL_DIR = "saved_model"
FILE_OPS = {
    "ReadFile",
    "WriteFile",
    "MatchingFiles",
    "PyFunc",
    "EagerPyFunc",
    "PyFuncStateless",
    "DeleteFile",
}
OPSET = 17


def is_keras_zip(names: Sequence[str]) -> bool:
    return "config.json" in names and "metadata.json" in names


def is_saved_model(path: Path) -> bool:
    return path.is_dir() and (path / "saved_model.pb").is_file()


def import_tensorflow() -> tuple[Any, Any, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import keras
        import tensorflow as tf
        import tf2onnx
    except ImportError:
        raise RuntimeUnavailable(
            "TensorFlow models need the tensorflow extra: pip install 'modelcrate[tensorflow]'"
        ) from None
    return tf, keras, tf2onnx


def build(
    source: Path,
    workdir: Path,
    *,
    keras_allow: Sequence[str] = (),
    parity_tolerance: float = 1e-3,
    **_: Any,
) -> Build:
    tf, keras, _tf2onnx = import_tensorflow()
    allow = set(keras_allow)
    if is_saved_model(source):
        function, original = _saved_model(tf, source, workdir)
    else:
        _check_config(_keras_config(source), allow, source.name)
        try:
            model = keras.models.load_model(source, safe_mode="Lambda" not in allow, compile=False)
        except Exception as exc:  # Keras raises ValueError/TypeError for what it refuses
            raise PackError(f"Keras cannot load {source.name}: {first_line(exc)}") from None
        suffix = ".h5" if source.suffix.lower() in (".h5", ".hdf5") else ".keras"
        shutil.copyfile(source, workdir / f"model{suffix}")
        original = Artifact(kind="keras", path=f"model{suffix}")
        spec = [
            tf.TensorSpec([None, *m.shape[1:]], m.dtype, name=_input_name(m, i))
            for i, m in enumerate(model.inputs)
        ]
        function = tf.function(
            lambda *xs: model(list(xs) if len(xs) > 1 else xs[0]), input_signature=spec
        )
    onnx_model = _to_onnx(function, workdir / ONNX_FILE)
    signature = signature_of(onnx_model)
    parity = _parity(function, workdir / ONNX_FILE, signature, parity_tolerance)
    return Build(
        artifacts=[
            Artifact(kind="onnx", path=ONNX_FILE, opset=opset_of(onnx_model), parity=parity),
            original,
        ],
        signature=signature,
        framework=Framework(name="tensorflow", version=tf.__version__),
        dependencies={"tensorflow": tf.__version__, "keras": keras.__version__},
    )


def _input_name(tensor: Any, index: int) -> str:
    name = str(getattr(tensor, "name", "") or "").split(":")[0]
    return name if name and not name.startswith("keras_tensor") else f"input_{index}"


def _keras_config(source: Path) -> dict[str, Any]:
    """The model config of a .keras or .h5 file, read as data (nothing is deserialized)."""
    with source.open("rb") as handle:
        head = handle.read(8)
    try:
        if head.startswith(HDF5_MAGIC):
            import h5py

            with h5py.File(source, "r") as h5:
                raw = h5.attrs.get("model_config")
            if raw is None:
                raise PackError(f"{source.name} holds weights only (no model config)")
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
        else:
            with zipfile.ZipFile(source) as archive:
                text = archive.read("config.json").decode()
        config: dict[str, Any] = json.loads(text)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise PackError(f"{source.name} is not a readable Keras model: {first_line(exc)}") from None
    return config


def _classes(node: Any) -> Iterator[tuple[str, str]]:
    """(class_name, module) of every object in a Keras config."""
    if isinstance(node, dict):
        if isinstance(node.get("class_name"), str):
            yield node["class_name"], str(node.get("module") or "keras")
        for value in node.values():
            yield from _classes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _classes(value)


def _check_config(config: dict[str, Any], allow: set[str], label: str) -> None:
    for name, module in _classes(config):
        if name in allow:
            continue
        if "Lambda" in allow and module == "builtins" and name in ("function", "__lambda__"):
            continue  # the code of an allowed Lambda layer
        if name == "Lambda":
            raise UnsafeContentError(
                f"{label} has a Lambda layer (arbitrary Python code); refused. Pass "
                "keras_allow=['Lambda'] (CLI: --keras-allow Lambda) if you trust this file"
            )
        if not module.startswith("keras"):
            raise UnsafeContentError(
                f"{label} uses {name} from {module}, outside Keras; refused unless allowed "
                f"with keras_allow=[{name!r}] (and registered in this process)"
            )


def _saved_model(tf: Any, source: Path, workdir: Path) -> tuple[Any, Artifact]:
    try:
        loaded = tf.saved_model.load(str(source))
        function = loaded.signatures["serving_default"]
    except (KeyError, Exception) as exc:
        raise PackError(
            f"{source.name}: no loadable serving_default signature ({first_line(exc)})"
        ) from None
    used = {op.type for op in function.graph.get_operations()} & FILE_OPS
    if used:
        raise UnsafeContentError(f"{source.name}: the serving graph uses {sorted(used)}; refused")
    target = workdir / SAVED_MODEL_DIR
    shutil.copytree(source, target, symlinks=False)
    files = sorted(p.relative_to(workdir).as_posix() for p in target.rglob("*") if p.is_file())
    main = f"{SAVED_MODEL_DIR}/saved_model.pb"
    original = Artifact(kind="savedmodel", path=main, data_files=[f for f in files if f != main])

    def call(*xs: Any) -> Any:
        # Through `loaded`, which owns the variables: a signature alone would let them go.
        serving = loaded.signatures["serving_default"]
        names = list(serving.structured_input_signature[1])
        outputs = serving(**dict(zip(names, xs, strict=True)))
        return [outputs[k] for k in sorted(outputs)]

    specs = [
        tf.TensorSpec(s.shape, s.dtype, name=name)
        for name, s in function.structured_input_signature[1].items()
    ]
    return tf.function(call, input_signature=specs), original


def _to_onnx(function: Any, path: Path) -> Any:
    _tf, _keras, tf2onnx = import_tensorflow()
    import onnx

    try:
        model, _ = tf2onnx.convert.from_function(
            function, input_signature=function.input_signature, opset=OPSET
        )
    except Exception as exc:  # tf2onnx raises what TensorFlow and its handlers raise
        raise PackError(f"tf2onnx cannot convert the model: {first_line(exc)}") from None
    for number, output in enumerate(model.graph.output):  # "Identity:0" -> "output"
        _rename(
            model, output.name, "output" if len(model.graph.output) == 1 else f"output_{number}"
        )
    for graph_input in model.graph.input:
        _rename(model, graph_input.name, graph_input.name.split(":")[0])
    onnx.save(model, path)
    return model


def _rename(model: Any, old: str, new: str) -> None:
    if old == new:
        return
    for node in model.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in [*model.graph.input, *model.graph.output]:
        if value.name == old:
            value.name = new


def _parity(function: Any, onnx_path: Path, signature: Signature, tolerance: float) -> Parity:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    feeds = {s.name: _random(rng, s) for s in signature.inputs}
    expected = function(*feeds.values())
    expected = expected if isinstance(expected, (list, tuple)) else [expected]
    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        got = session.run(None, feeds)
    except Exception as exc:  # ORT raises its own types (INVALID_GRAPH for an op it lacks)
        raise PackError(
            "tf2onnx wrote a model ONNX Runtime cannot run (an op it could not convert?): "
            f"{first_line(exc)}"
        ) from None
    worst = max(
        float(np.max(np.abs(np.asarray(e) - g))) for e, g in zip(expected, got, strict=True)
    )
    if not worst <= tolerance:
        raise PackError(f"ONNX differs from TensorFlow by {worst:.3g} (tolerance {tolerance})")
    return Parity(
        reference="tensorflow", max_abs_diff=worst, samples=len(next(iter(feeds.values())))
    )


def _random(rng: np.random.Generator, spec: TensorSpec) -> np.ndarray:
    shape = [4 if d == -1 else d for d in spec.shape]
    if spec.dtype.startswith(("int", "uint")):
        return rng.integers(0, 10, shape).astype(spec.dtype)
    return rng.standard_normal(shape).astype(spec.dtype)


def read_keras_bytes(data: bytes, suffix: str) -> Any:
    """A Keras model from a crate's verified bytes (safe_mode; via a private temp file)."""
    _tf, keras, _ = import_tensorflow()
    with tempfile.TemporaryDirectory(prefix="modelcrate-keras-") as scratch:
        path = Path(scratch) / f"model{suffix}"
        path.write_bytes(data)
        _check_config(_keras_config(path), set(), path.name)
        return keras.models.load_model(path, safe_mode=True, compile=False)
