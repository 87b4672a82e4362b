"""A KServe ``InferenceService`` running the crate's image (``modelcrate export --format
docker``) as a custom predictor speaking the Open Inference Protocol v2.

Resources are sized from the crate (memory: two loaded versions, for a hot swap, of the
weights the server loads, prepacked copies included, plus 256 MiB); readiness and
liveness probes use the OIP health routes.
Authentication is left to the cluster's ingress / mesh, as is usual for KServe,
so the container runs with ``MODELCRATE_INSECURE=1``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from modelcrate.crate import Crate
from modelcrate.deploy.docker import PORT, image_name
from modelcrate.runtimes.onnxruntime import resident_bytes

API_VERSION = "serving.kserve.io/v1beta1"


def service_name(name: str) -> str:
    """A DNS-1035 label: lowercase letters, digits and '-', starting with a letter."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    label = label if label[:1].isalpha() else f"m-{label}"
    return label[:63].rstrip("-")


def inference_service(crate: Crate, image: str) -> dict[str, Any]:
    manifest = crate.manifest
    memory_mib = 256 + math.ceil(2 * resident_bytes(manifest) / 2**20)
    probe = {
        "httpGet": {"path": "/v2/health/ready", "port": PORT},
        "initialDelaySeconds": 5,
        "periodSeconds": 5,
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": {
            "name": service_name(manifest.name),
            "annotations": {
                "modelcrate.dev/ref": manifest.ref,
                "modelcrate.dev/digest": manifest.digest,
                "modelcrate.dev/protocol": "v2",
            },
        },
        "spec": {
            "predictor": {
                "minReplicas": 1,
                "containers": [
                    {
                        "name": "kserve-container",
                        "image": image,
                        "args": [manifest.ref],
                        "env": [{"name": "MODELCRATE_INSECURE", "value": "1"}],
                        "ports": [{"containerPort": PORT, "protocol": "TCP"}],
                        "resources": {
                            "requests": {"cpu": "1", "memory": f"{memory_mib}Mi"},
                            "limits": {"cpu": "2", "memory": f"{memory_mib}Mi"},
                        },
                        "readinessProbe": probe,
                        "livenessProbe": {
                            **probe,
                            "httpGet": {"path": "/v2/health/live", "port": PORT},
                        },
                    }
                ],
            }
        },
    }


def export(crate: Crate, target: Path, *, image: str | None = None) -> list[Path]:

    target.mkdir(parents=True, exist_ok=True)
    document = inference_service(crate, image or image_name(crate.name, crate.version))
    path = target / "inferenceservice.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return [path]
