"""Prometheus alerting rules for a served model, from the metrics ``modelcrate serve``
exports (``/metrics``), so an operator is paged without watching dashboards:

- error rate: the share of the model's requests answered 5xx over 5 minutes, per version;
- latency: the 99th percentile over 5 minutes, per version (from the latency histogram);
- no traffic: no request for 15 minutes while the server is scraped;
- overload: requests refused because the queue was full (503 + Retry-After).

``promtool check rules`` accepts the file. Thresholds: ``max_error_rate`` (default 0.01)
and ``max_p99_ms`` (default 250).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from modelcrate.crate import Crate

MAX_ERROR_RATE = 0.01
MAX_P99_MS = 250.0


def rules(name: str, max_error_rate: float, max_p99_ms: float) -> dict[str, Any]:
    model = f'model="{name}"'
    slug = re.sub(r"[^A-Za-z0-9]+", "", name.title()) or "Model"
    labels = {"model": name}

    def alert(kind: str, expr: str, wait: str, severity: str, summary: str) -> dict[str, Any]:
        return {
            "alert": f"Modelcrate{slug}{kind}",
            "expr": expr,
            "for": wait,
            "labels": {**labels, "severity": severity},
            "annotations": {"summary": summary},
        }

    requests = f"modelcrate_requests_total{{{model}}}"
    return {
        "groups": [
            {
                "name": f"modelcrate-{name}",
                "rules": [
                    alert(
                        "HighErrorRate",
                        f'sum by (version) (rate(modelcrate_requests_total{{{model},code=~"5.."}}'
                        f"[5m])) / sum by (version) (rate({requests}[5m])) > {max_error_rate}",
                        "5m",
                        "page",
                        f"{name} {{{{ $labels.version }}}}: more than {max_error_rate:.2%} of "
                        "requests fail",
                    ),
                    alert(
                        "SlowRequests",
                        "histogram_quantile(0.99, sum by (le, version) "
                        f"(rate(modelcrate_request_latency_seconds_bucket{{{model}}}[5m]))) "
                        f"> {max_p99_ms / 1000:g}",
                        "10m",
                        "page",
                        f"{name} {{{{ $labels.version }}}}: p99 latency above {max_p99_ms:g} ms",
                    ),
                    alert(
                        "NoTraffic",
                        f"sum(rate({requests}[15m])) == 0 or absent({requests})",
                        "15m",
                        "ticket",
                        f"{name} has served no request for 15 minutes",
                    ),
                    alert(
                        "Overloaded",
                        "sum(rate(modelcrate_requests_rejected_total"
                        f'{{{model},reason="queue_full"}}[5m])) > 0',
                        "5m",
                        "ticket",
                        f"{name} refuses requests: its queue is full (scale out or raise "
                        "--max-queue)",
                    ),
                ],
            }
        ]
    }


def export(
    crate: Crate,
    target: Path,
    *,
    image: str | None = None,
    max_error_rate: float = MAX_ERROR_RATE,
    max_p99_ms: float = MAX_P99_MS,
) -> list[Path]:
    """Write the rules to ``target`` (a .yml/.yaml file, or a directory for
    ``<name>-alerts.yaml``)."""
    path = (
        target
        if target.suffix in (".yml", ".yaml")
        else target / f"{crate.manifest.name}-alerts.yaml"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    document = rules(crate.manifest.name, max_error_rate, max_p99_ms)
    path.write_text(yaml.safe_dump(document, sort_keys=False, width=1000))
    return [path]
