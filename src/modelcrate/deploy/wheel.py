"""A crate as a pip-installable Python library: ``export --format wheel``.

``digits@1.0.0`` becomes ``digits_model-1.0.0-py3-none-any.whl``: the package
``digits_model`` holds the crate's files (``crate/``) and a generated loader of a few dozen
lines that needs only onnxruntime and numpy (no modelcrate). Importing it re-hashes every
file against ``crate.json``; it offers ``predict``, ``load()``, ``signature``, ``labels``,
``metadata`` and ``__version__``, and ``python -m digits_model --input x.npy`` predicts.

The wheel is reproducible: entries sorted, fixed timestamps and modes, model files stored
as they are (streamed in, so memory does not grow with the model). Crate versions that
are not PEP 440 (``1.0.0-fp16``) become local versions (``1.0.0+fp16``).
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

from modelcrate.crate import Crate
from modelcrate.errors import UsageError
from modelcrate.manifest import MANIFEST_NAME

PUBLIC_VERSION = re.compile(r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?$")
EPOCH = (1980, 1, 1, 0, 0, 0)
CHUNK = 1024 * 1024

LOADER = '''"""{name} {version}, packaged by modelcrate. Needs only onnxruntime and numpy."""

import hashlib
import json
from pathlib import Path

import numpy as np

__version__ = {version!r}
_CRATE = Path(__file__).parent / "crate"
metadata = json.loads((_CRATE / "crate.json").read_text(encoding="utf-8"))
signature = metadata["signature"]
labels = metadata.get("labels")
_MODEL = {model!r}
_session = None


def _verify():
    for entry in metadata["files"]:
        digest = hashlib.sha256()
        with open(_CRATE / entry["path"], "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != entry["sha256"]:
            raise ImportError(f"{{__name__}}: {{entry['path']}} does not match its sha256")


_verify()


def load():
    """The ONNX Runtime session (made once, on first use)."""
    global _session
    if _session is None:
        import onnxruntime

        _session = onnxruntime.InferenceSession(
            str(_CRATE / _MODEL), providers=["CPUExecutionProvider"]
        )
    return _session


def predict(x=None, **inputs):
    """Outputs by name, for an array (one-input models) or arrays by input name."""
    specs = signature["inputs"]
    if x is not None:
        if len(specs) != 1:
            raise ValueError(f"pass inputs by name: {{[s['name'] for s in specs]}}")
        inputs = {{specs[0]["name"]: x}}
    feeds = {{}}
    for spec in specs:
        if spec["name"] not in inputs:
            raise ValueError(f"missing input {{spec['name']!r}}")
        dtype = object if spec["dtype"] == "string" else spec["dtype"]
        feeds[spec["name"]] = np.asarray(inputs[spec["name"]], dtype=dtype)
    names = [s["name"] for s in signature["outputs"]]
    return dict(zip(names, load().run(names, feeds)))
'''

MAIN = '''"""python -m {module} --input x.npy|x.npz [--output y.npz]"""

import argparse
import json

import numpy as np

from {module} import predict

parser = argparse.ArgumentParser(prog="python -m {module}", description=__doc__)
parser.add_argument("--input", required=True, help=".npy (one input) or .npz (by name)")
parser.add_argument("--output", help="write the outputs to this .npz instead of printing")
args = parser.parse_args()
data = np.load(args.input, allow_pickle=False)
outputs = predict(**dict(data)) if args.input.endswith(".npz") else predict(data)
if args.output:
    np.savez(args.output, **outputs)
else:
    print(json.dumps({{name: value.tolist() for name, value in outputs.items()}}))
'''


def export(crate: Crate, target: Path, *, image: str | None = None) -> list[Path]:
    manifest = crate.manifest
    if crate.encrypted:
        raise UsageError(f"{manifest.ref} is encrypted: a wheel would carry its weights readable")
    model = manifest.artifact("onnx")
    if model is None:
        kinds = ", ".join(a.kind for a in manifest.artifacts) or "a composition"
        raise UsageError(
            f"{manifest.ref} has no ONNX artifact (it has {kinds}); convert it first: "
            f"modelcrate convert {manifest.ref} --to onnx"
        )
    module = re.sub(r"[^a-z0-9]+", "_", manifest.name.lower()).strip("_") + "_model"
    version = wheel_version(manifest.version)
    dist_info = f"{module}-{version}.dist-info"
    target.mkdir(parents=True, exist_ok=True)
    wheel = target / f"{module}-{version}-py3-none-any.whl"
    texts = {
        f"{module}/__init__.py": LOADER.format(
            name=manifest.name, version=version, model=model.path
        ),
        f"{module}/__main__.py": MAIN.format(module=module),
        f"{dist_info}/METADATA": _metadata(module, version, manifest.description),
        f"{dist_info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: modelcrate\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    files = {f"{module}/crate/{MANIFEST_NAME}": manifest.file_bytes()}
    records: list[str] = []
    partial = wheel.with_name(wheel.name + ".partial")
    with zipfile.ZipFile(partial, "w", allowZip64=True) as archive:
        for name in sorted([*texts, *files, *(f"{module}/crate/{f.path}" for f in manifest.files)]):
            if name in texts or name in files:
                data = texts[name].encode() if name in texts else files[name]
                records.append(_add_bytes(archive, name, data))
            else:
                path = name.removeprefix(f"{module}/crate/")
                with crate.open_verified(path) as stream:
                    records.append(_add_stream(archive, name, stream))
        record = f"{dist_info}/RECORD"
        records.append(f"{record},,")
        _add_bytes(archive, record, ("\n".join(records) + "\n").encode(), deflate=True)
    partial.replace(wheel)
    return [wheel]


def wheel_version(version: str) -> str:
    """A PEP 440 version for a crate version: ``1.0.0`` as is, ``1.0.0-fp16`` as
    ``1.0.0+fp16`` (a local version label)."""
    public, _, local = version.partition("-")
    public, _, plus = public.partition("+")
    local = ".".join(p for p in re.split(r"[^A-Za-z0-9]+", f"{plus}.{local}".lower()) if p)
    if not PUBLIC_VERSION.match(public):
        raise UsageError(f"version {version!r} cannot be a Python package version (PEP 440)")
    return f"{public}+{local}" if local else public


def _metadata(module: str, version: str, description: str) -> str:
    summary = " ".join(description.split())[:200] or f"{module}, a model packaged by modelcrate"
    return (
        f"Metadata-Version: 2.1\nName: {module}\nVersion: {version}\nSummary: {summary}\n"
        "Requires-Python: >=3.9\nRequires-Dist: numpy\nRequires-Dist: onnxruntime\n"
    )


def _info(name: str, deflate: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=EPOCH)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    return info


def _add_bytes(archive: zipfile.ZipFile, name: str, data: bytes, deflate: bool = True) -> str:
    archive.writestr(_info(name, deflate), data)
    return _record(name, hashlib.sha256(data), len(data))


def _add_stream(archive: zipfile.ZipFile, name: str, stream: BinaryIO) -> str:
    digest, size = hashlib.sha256(), 0
    with archive.open(_info(name, deflate=False), "w", force_zip64=True) as out:
        while block := stream.read(CHUNK):
            digest.update(block)
            out.write(block)
            size += len(block)
    return _record(name, digest, size)


def _record(name: str, digest: Any, size: int) -> str:
    encoded = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    return f"{name},sha256={encoded},{size}"
