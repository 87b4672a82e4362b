"""Deployment exports: a Docker build context, a KServe InferenceService and a Triton model
repository, each checked the way the platform would read it."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import onnxruntime as ort
import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import modelcrate as mc
from conftest import Digits, run_cli


@pytest.fixture
def published(registry: mc.Registry, digits_crate_path: Path) -> mc.Registry:
    registry.publish(digits_crate_path)
    return registry


def export(registry: mc.Registry, fmt: str, to: Path, *extra: str) -> None:
    result = run_cli(
        "export",
        "digits@1.0.0",
        "--format",
        fmt,
        "--to",
        str(to),
        "--registry",
        str(registry.root),
        *extra,
    )
    assert result.returncode == 0, result.stderr


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def test_docker_context_is_lint_clean_and_complete(published: mc.Registry, tmp_path: Path) -> None:
    export(published, "docker", tmp_path / "ctx")
    context = tmp_path / "ctx"
    steps = instructions((context / "Dockerfile").read_text())
    names = [name for name, _ in steps]
    known = {
        "FROM",
        "ARG",
        "ENV",
        "RUN",
        "COPY",
        "USER",
        "EXPOSE",
        "HEALTHCHECK",
        "ENTRYPOINT",
        "CMD",
    }
    assert set(names) <= known and names[0] == "FROM" and names.count("FROM") == 1
    base = steps[0][1]
    assert re.fullmatch(r"python:3\.\d+-slim-\w+", base), base  # slim, pinned, never :latest
    users = [args for name, args in steps if name == "USER"]
    assert users and users[-1] not in ("root", "0")  # runs as non-root
    assert names.index("USER") < names.index("ENTRYPOINT")
    health = dict(steps)["HEALTHCHECK"]
    assert (
        "healthcheck.py" in health
        and "/v2/health/ready" in (context / "healthcheck.py").read_text()
    )
    assert not any(name == "ADD" for name in names)  # no remote fetches at build time
    sources = [
        arg
        for name, args in steps
        if name == "COPY"
        for arg in args.split()[:-1]
        if not arg.startswith("--")
    ]
    assert sorted(sources) == ["entrypoint.sh", "healthcheck.py", "model.crate"]
    for source in sources:
        assert (context / source).is_file(), f"COPY source {source} is missing from the context"
        assert f"!{source}" in (context / ".dockerignore").read_text()
    assert "torch" not in dict(steps)["ARG"]  # an ONNX crate needs no torch
    entry = (context / "entrypoint.sh").read_text()
    assert "--token-file" in entry and "MODELCRATE_INSECURE" in entry and "0.0.0.0" in entry
    crate = mc.Crate.open(context / "model.crate")
    crate.verify()
    assert crate.digest == published.resolve("digits@1.0.0").digest
    ignore = (context / ".dockerignore").read_text().split()
    assert ignore[0] == "*" and "!model.crate" in ignore


# The part of KServe's InferenceService CRD (serving.kserve.io/v1beta1) this export uses,
# with the Kubernetes core/v1 Container fields it sets; objects are closed, so a misspelt
# or invented field fails.
CONTAINER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "image"],
    "properties": {
        "name": {"type": "string"},
        "image": {"type": "string"},
        "args": {"type": "array", "items": {"type": "string"}},
        "env": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
            },
        },
        "ports": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["containerPort"],
                "additionalProperties": False,
                "properties": {
                    "containerPort": {"type": "integer"},
                    "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
                },
            },
        },
        "resources": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "requests": {"type": "object", "additionalProperties": {"type": "string"}},
                "limits": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "readinessProbe": {"$ref": "#/$defs/probe"},
        "livenessProbe": {"$ref": "#/$defs/probe"},
    },
}
INFERENCE_SERVICE = {
    "$defs": {
        "probe": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "httpGet": {
                    "type": "object",
                    "required": ["port"],
                    "additionalProperties": False,
                    "properties": {"path": {"type": "string"}, "port": {"type": "integer"}},
                },
                "initialDelaySeconds": {"type": "integer"},
                "periodSeconds": {"type": "integer"},
            },
        }
    },
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["predictor"],
            "properties": {
                "predictor": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["containers"],
                    "properties": {
                        "minReplicas": {"type": "integer", "minimum": 0},
                        "maxReplicas": {"type": "integer", "minimum": 0},
                        "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
                    },
                }
            },
        },
    },
}


def test_kserve_manifest_matches_the_crd_fields(published: mc.Registry, tmp_path: Path) -> None:
    export(published, "kserve", tmp_path / "k8s", "--image", "registry.example/digits:1.0.0")
    document = yaml.safe_load((tmp_path / "k8s" / "inferenceservice.yaml").read_text())
    jsonschema.validate(document, INFERENCE_SERVICE)
    container = document["spec"]["predictor"]["containers"][0]
    assert container["image"] == "registry.example/digits:1.0.0"
    assert container["args"] == ["digits@1.0.0"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["ports"][0]["containerPort"] == container["readinessProbe"]["httpGet"]["port"]
    assert document["metadata"]["annotations"]["modelcrate.dev/digest"].startswith("sha256:")
    memory = container["resources"]["requests"]["memory"]
    assert re.fullmatch(r"\d+Mi", memory) and int(memory[:-2]) >= 256


def test_kserve_memory_is_sized_from_the_weights_the_server_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two loaded versions (a hot swap) of the ONNX weights, prepacked copies included:
    not the crate's whole size, which holds a torch model's weights three times."""
    import torch

    from modelcrate.deploy.kserve import inference_service
    from modelcrate.runtimes import onnxruntime

    crate = mc.pack(
        torch.nn.Linear(1024, 1024).eval(),
        example_inputs=(torch.zeros(1, 1024),),
        name="lin",
        version="1.0.0",
    )
    served = crate.manifest.file("model.onnx").size
    mib = 2**20

    def requested() -> int:
        container = inference_service(crate, "img")["spec"]["predictor"]["containers"][0]
        memory: str = container["resources"]["requests"]["memory"]
        return int(memory.removesuffix("Mi"))

    assert requested() == 256 + -(-4 * served // mib)  # prepacked: two copies a version
    monkeypatch.setattr(onnxruntime, "PREPACK_BELOW", served)  # too big to prepack
    assert requested() == 256 + -(-2 * served // mib)
    assert requested() < 256 + 2 * sum(f.size for f in crate.manifest.files) // mib


def test_triton_repository_parses_and_runs(
    published: mc.Registry, tmp_path: Path, digits: Digits
) -> None:
    export(published, "triton", tmp_path / "repo")
    model_dir = tmp_path / "repo" / "digits"
    config = text_format.Parse(
        (model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.name == "digits" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 32 and config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [1, 8, 8])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("output", [10])]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert config.output[0].label_filename == "labels.txt"
    assert (model_dir / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == [i.name for i in config.input]
    scores = session.run(None, {"x": digits.x_test[:4]})[0]
    assert scores.shape == (4, 10)


def test_export_refuses_what_a_target_cannot_run(published: mc.Registry, tmp_path: Path) -> None:
    bad = run_cli(
        "export",
        "digits@1.0.0",
        "--format",
        "helm",
        "--to",
        str(tmp_path / "x"),
        "--registry",
        str(published.root),
    )
    assert (
        bad.returncode == 2
        and "expected one of docker, kserve, triton, tfserving, wheel" in bad.stderr
    )


def test_wheel_installs_in_a_fresh_venv_and_predicts_like_load(
    published: mc.Registry, digits: Digits, tmp_path: Path
) -> None:
    """`export --format wheel`: reproducible, installs into a fresh venv (pip resolves only
    numpy and onnxruntime), verifies its files on import, predicts as mc.load does."""
    import subprocess
    import sys

    import numpy as np

    export(published, "wheel", tmp_path / "dist")
    export(published, "wheel", tmp_path / "again")
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name == "digits_model-1.0.0-py3-none-any.whl"
    assert wheel.read_bytes() == (tmp_path / "again" / wheel.name).read_bytes()

    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    installed = subprocess.run(
        [str(venv / "bin/pip"), "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stderr
    python = str(venv / "bin/python")
    x = np.ascontiguousarray(digits.x_test[:5])
    np.save(tmp_path / "x.npy", x)
    script = (
        "import json, sys, numpy as np, digits_model as m\n"
        "y = m.predict(np.load(sys.argv[1]))['output']\n"
        "print(json.dumps({'v': m.__version__, 'labels': m.labels, 'y': y.tolist(),\n"
        "                  'inputs': m.signature['inputs'], 'name': m.metadata['name'],\n"
        "                  'modelcrate': 'modelcrate' in sys.modules}))\n"
    )
    ran = subprocess.run(
        [python, "-c", script, str(tmp_path / "x.npy")], capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr
    import json

    answer = json.loads(ran.stdout)
    expected = mc.load("digits@1.0.0", registry=published).predict(x)["output"]
    np.testing.assert_allclose(np.array(answer["y"], np.float32), expected, rtol=1e-5, atol=1e-6)
    assert answer["v"] == "1.0.0" and answer["name"] == "digits" and not answer["modelcrate"]
    assert answer["labels"] == [str(d) for d in range(10)]
    assert answer["inputs"][0]["shape"] == [-1, 1, 8, 8]
    cli = subprocess.run(
        [
            python,
            "-m",
            "digits_model",
            "--input",
            str(tmp_path / "x.npy"),
            "--output",
            str(tmp_path / "y.npz"),
        ],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0, cli.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["output"], expected, rtol=1e-5)

    # A damaged installed file refuses to import.
    (model,) = venv.glob("lib/python*/site-packages/digits_model/crate/model.onnx")
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    broken = subprocess.run([python, "-c", "import digits_model"], capture_output=True, text=True)
    assert broken.returncode != 0 and "does not match its sha256" in broken.stderr


PROMTOOL_TESTS = """
rule_files: [digits-alerts.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'modelcrate_requests_total{model="digits",version="1.0.0",code="200"}'
        values: '0+90x30'
      - series: 'modelcrate_requests_total{model="digits",version="1.0.0",code="500"}'
        values: '0+10x30'
      - series: 'modelcrate_requests_total{model="digits",version="1.1.0",code="200"}'
        values: '0+100x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: ModelcrateDigitsHighErrorRate
        exp_alerts:
          - exp_labels: {model: digits, version: 1.0.0, severity: page}
            exp_annotations: {summary: "digits 1.0.0: more than 5.00% of requests fail"}
      - eval_time: 20m
        alertname: ModelcrateDigitsNoTraffic
        exp_alerts: []
  - interval: 1m
    input_series:
      - series: 'modelcrate_requests_total{model="digits",version="1.0.0",code="200"}'
        values: '5+0x30'
    alert_rule_test:
      - eval_time: 30m
        alertname: ModelcrateDigitsNoTraffic
        exp_alerts:
          - exp_labels: {model: digits, severity: ticket}
            exp_annotations: {summary: "digits has served no request for 15 minutes"}
"""


def test_prometheus_rules_pass_promtool_and_fire_on_errors(
    published: mc.Registry, tmp_path: Path
) -> None:
    import shutil
    import subprocess

    written = run_cli(
        "export",
        "digits@1.0.0",
        "--format",
        "prometheus-rules",
        "--to",
        str(tmp_path),
        "--max-error-rate",
        "0.05",
        "--registry",
        str(published.root),
        check=True,
    )
    path = tmp_path / "digits-alerts.yaml"
    assert str(path) in written.stdout
    groups = yaml.safe_load(path.read_text())["groups"]
    names = [r["alert"] for r in groups[0]["rules"]]
    assert names == [
        "ModelcrateDigitsHighErrorRate",
        "ModelcrateDigitsSlowRequests",
        "ModelcrateDigitsNoTraffic",
        "ModelcrateDigitsOverloaded",
    ]
    refused = run_cli(
        "export",
        "digits@1.0.0",
        "--format",
        "docker",
        "--to",
        str(tmp_path / "d"),
        "--max-p99-ms",
        "5",
        "--registry",
        str(published.root),
    )
    assert refused.returncode == 2 and "prometheus-rules only" in refused.stderr
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("PROMTOOL MISSING: apt-get install prometheus (.ci/run installs it)")
    checked = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (tmp_path / "tests.yaml").write_text(PROMTOOL_TESTS)
    tested = subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "tests.yaml")], capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
