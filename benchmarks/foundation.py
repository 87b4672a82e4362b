"""Foundation benchmarks (issue 2), run by benchmarks/run.py.

(a) load-to-first-prediction of a published crate (mc.load + predict, ONNX
    Runtime) vs torch.load of a pickled full model + first forward — the same
    model, each in a fresh interpreter so imports count, alternated, median of 5;
    also with the registry's file cache emptied first (a new server's first load:
    the files the runtime reads are copied out of the packs).
(b) pack + publish time and registry bytes for a ~100 MB MLP, vs torch.save of
    its state dict (the usual baseline), same run.
"""

from __future__ import annotations

import inspect
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import modelcrate as mc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples" / "digits"))
from train import DigitsCNN  # noqa: E402

sys.path.insert(0, str(HERE))
from models import mlp_100mb  # noqa: E402

REPEATS = 5

CRATE_SCRIPT = """
import time; t0 = time.perf_counter()
import numpy as np, modelcrate as mc
m = mc.load({ref!r}, registry={registry!r})
m.predict(np.zeros({shape}, np.float32))
print(time.perf_counter() - t0)
"""
FILE_SCRIPT = """
import time; t0 = time.perf_counter()
import numpy as np, modelcrate as mc
m = mc.load({path!r})
m.predict(np.zeros({shape}, np.float32))
print(time.perf_counter() - t0)
"""
PICKLE_SCRIPT = """
import time; t0 = time.perf_counter()
import itertools
from collections.abc import Sequence
import torch
from torch import nn
exec({class_source!r})
m = torch.load({path!r}, weights_only=False)
with torch.no_grad():
    m(torch.zeros({shape}))
print(time.perf_counter() - t0)
"""


def timed_subprocess(script: str) -> float:
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_load(work: Path, name: str, model: nn.Module, shape: tuple[int, ...]) -> dict[str, float]:
    registry = str(work / "registry")
    example = torch.zeros(shape)
    crate = mc.pack(model, example_inputs=(example,), name=name, version="1.0.0")
    mc.publish(crate, registry=registry)
    crate_file = crate.save(work / f"{name}.crate")
    pickled = work / f"{name}.pt"
    # The classic full-model pickle (baseline only). Its class lives in __main__ of the
    # baseline script, so unpickling costs what it costs a user, not an extra import.
    cls = type(model)
    class_source = inspect.getsource(cls)
    original, main = cls.__module__, sys.modules["__main__"]
    cls.__module__ = "__main__"
    setattr(main, cls.__name__, cls)
    try:
        torch.save(model, pickled)
    finally:
        cls.__module__ = original
        delattr(main, cls.__name__)
    crate_script = CRATE_SCRIPT.format(ref=f"{name}@1.0.0", registry=registry, shape=shape)
    pickle_script = PICKLE_SCRIPT.format(class_source=class_source, path=str(pickled), shape=shape)
    file_script = FILE_SCRIPT.format(path=str(crate_file), shape=shape)
    ours, cold, files, theirs = [], [], [], []
    for _ in range(REPEATS):  # alternate, so drift hits both alike
        ours.append(timed_subprocess(crate_script))
        theirs.append(timed_subprocess(pickle_script))
        files.append(timed_subprocess(file_script))
        shutil.rmtree(work / "registry" / "cache", ignore_errors=True)  # as on a new server
        cold.append(timed_subprocess(crate_script))
    return {
        "crate": statistics.median(ours),
        "cold": statistics.median(cold),
        "file": statistics.median(files),
        "pickle": statistics.median(theirs),
        "cached": dir_bytes(work / "registry" / "cache" / "files"),
    }


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_publish(work: Path, model: nn.Module) -> dict[str, float]:
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    pack_times, publish_times, save_times = [], [], []
    stored = 0
    for i in range(3):
        registry = work / f"publish-{i}"
        start = time.perf_counter()
        crate = mc.pack(model, example_inputs=(torch.zeros(1, 1024),), name="big", version="1.0.0")
        packed = time.perf_counter()
        mc.publish(crate, registry=registry)
        pack_times.append(packed - start)
        publish_times.append(time.perf_counter() - packed)
        stored = dir_bytes(registry / "blobs")
        start = time.perf_counter()
        torch.save(model.state_dict(), work / "state.pt")
        save_times.append(time.perf_counter() - start)
        shutil.rmtree(registry)
        del crate
    return {
        "param_bytes": params,
        "pack": statistics.median(pack_times),
        "publish": statistics.median(publish_times),
        "torch_save": statistics.median(save_times),
        "stored": stored,
        "state_dict_bytes": (work / "state.pt").stat().st_size,
    }


def main() -> list[str]:
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="modelcrate-bench-"))
    try:
        digits = bench_load(work, "digits", DigitsCNN().eval(), (1, 1, 8, 8))
        big = mlp_100mb().eval()
        big_load = bench_load(work, "big", big, (1, 1024))
        publish = bench_publish(work, big)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results(digits, big_load, publish)


def results(digits: dict[str, float], big: dict[str, float], pub: dict[str, float]) -> list[str]:
    mb = 1024 * 1024
    lines = [
        "## Foundation: load and publish",
        "",
        f"Medians of {REPEATS} fresh interpreters (a) and 3 runs (b), alternated with the "
        "baseline.",
        "",
        "### (a) load to first prediction, fresh process (imports included)",
        "",
        "| model | mc.load + predict (ORT) | torch.load pickle + forward | ratio ours/baseline "
        "| first load, empty file cache | ratio | file cache filled "
        "| mc.load of the .crate file + predict | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, result in (("digits CNN (0.26 MB)", digits), ("MLP (~100 MB)", big)):
        lines.append(
            f"| {name} | {result['crate']:.3f} s | {result['pickle']:.3f} s | "
            f"{result['crate'] / result['pickle']:.2f} | {result['cold']:.3f} s | "
            f"{result['cold'] / result['pickle']:.2f} | {result['cached'] / 2**20:.1f} MiB | "
            f"{result['file']:.3f} s | {result['file'] / result['pickle']:.2f} |"
        )
    lines += [
        "",
        "First load, empty file cache: the registry's file cache emptied before each run, as",
        "on a new server. Only the files the runtime reads are copied out of the packs (the",
        "ONNX form, not the crate's .pt2 and safetensors): the cache column is what it held.",
        "A .crate file (torch-packed: ONNX, .pt2 and safetensors forms) is screened (sizes, no",
        "pickle) and only the ONNX form is copied out and hashed.",
        "",
        "### (b) pack + publish a ~100 MB model",
        "",
        "| what | figure |",
        "| --- | --- |",
        f"| parameters | {pub['param_bytes'] / mb:.1f} MB |",
        f"| mc.pack (torch.export + ONNX export + parity + safetensors) | {pub['pack']:.2f} s |",
        f"| mc.publish (hash, copy, fsync, commit) | {pub['publish']:.2f} s |",
        f"| baseline torch.save(state_dict) | {pub['torch_save']:.2f} s |",
        f"| ratio (pack + publish) / torch.save | "
        f"{(pub['pack'] + pub['publish']) / pub['torch_save']:.1f} |",
        f"| registry blob bytes | {pub['stored'] / mb:.1f} MB |",
        f"| baseline state_dict file | {pub['state_dict_bytes'] / mb:.1f} MB |",
        f"| ratio registry / state_dict | {pub['stored'] / pub['state_dict_bytes']:.2f} |",
        "",
        "The crate holds three forms of the weights (ONNX for serving, .pt2 for",
        "training, safetensors for your own module); the registry stores files as",
        "content-defined chunks, so the three share their tensors' bytes (about 1x).",
        "",
    ]
    return lines
