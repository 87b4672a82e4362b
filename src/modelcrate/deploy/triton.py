"""A Triton model repository from a crate: ``NAME/1/model.onnx`` (+ external data),
``NAME/config.pbtxt`` generated from the crate's signature, and the labels as
Triton's ``label_filename`` for its classification extension.

A batch dimension (every input and output dynamic in its first axis) becomes
``max_batch_size`` with dynamic batching (limits from the crate's ``serving``);
other dynamic axes become -1.
"""

from __future__ import annotations

from pathlib import Path

from modelcrate.crate import Crate
from modelcrate.errors import UsageError
from modelcrate.manifest import TensorSpec

DATA_TYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
    "uint16": "TYPE_UINT16",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "string": "TYPE_STRING",
}


def config_pbtxt(crate: Crate) -> str:
    manifest = crate.manifest
    specs = [*manifest.signature.inputs, *manifest.signature.outputs]
    batched = all(s.shape[:1] == [-1] for s in specs)
    serving = manifest.serving
    max_batch = (serving.max_batch_size if serving else 32) if batched else 0
    lines = [
        f'name: "{manifest.name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch}",
    ]
    for section, tensors in (
        ("input", manifest.signature.inputs),
        ("output", manifest.signature.outputs),
    ):
        entries = []
        for number, spec in enumerate(tensors):
            extra = (
                ' label_filename: "labels.txt"'
                if (section == "output" and number == 0 and manifest.labels)
                else ""
            )
            entries.append(
                f'  {{ name: "{spec.name}" data_type: {DATA_TYPES[spec.dtype]} '
                f"dims: {_dims(spec, batched)}{extra} }}"
            )
        lines.append(f"{section} [\n" + ",\n".join(entries) + "\n]")
    if batched:
        delay = int((serving.max_delay_ms if serving else 0.0) * 1000)
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {delay} }}")
    lines.append("instance_group [ { kind: KIND_CPU count: 1 } ]")
    return "\n".join(lines) + "\n"


def _dims(spec: TensorSpec, batched: bool) -> str:
    dims = spec.shape[1:] if batched else spec.shape
    return "[ " + ", ".join(str(d) for d in dims) + " ]" if dims else "[ 1 ]"


def export(crate: Crate, target: Path, *, image: str | None = None) -> list[Path]:
    manifest = crate.manifest
    artifact = manifest.artifact("onnx")
    if artifact is None:
        raise UsageError(
            f"{manifest.ref}: a Triton export needs an ONNX artifact (this crate has "
            f"{', '.join(a.kind for a in manifest.artifacts) or 'none'})"
        )
    if crate.encrypted:
        raise UsageError(f"{manifest.ref} is encrypted; Triton would need the plaintext on disk")
    model_dir = target / manifest.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    written = []
    for path in [artifact.path, *artifact.data_files]:
        name = "model.onnx" if path == artifact.path else Path(path).name
        destination = model_dir / "1" / name
        destination.write_bytes(crate.read_bytes(path))
        written.append(destination)
    (model_dir / "config.pbtxt").write_text(config_pbtxt(crate))
    written.append(model_dir / "config.pbtxt")
    if manifest.labels:
        (model_dir / "labels.txt").write_text("\n".join(manifest.labels) + "\n")
        written.append(model_dir / "labels.txt")
    return written
