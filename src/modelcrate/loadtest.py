"""``modelcrate bench``: a bounded load test of an OIP v2 server (loopback by default).

Sends JSON infer requests from ``concurrency`` connections for ``duration``
seconds, then stops by itself, and reports throughput, latency percentiles and
every non-2xx answer. For publishable figures use wrk (see benchmarks/).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from modelcrate.client import _model_path, _split


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    statuses: dict[int, int]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def request_body(metadata: dict[str, Any], batch: int = 1) -> bytes:
    """A JSON infer body of zeros matching the model's inputs (dynamic dims -> ``batch``)."""
    inputs = []
    for spec in metadata["inputs"]:
        shape = [batch if d < 0 else d for d in spec["shape"]]
        inputs.append(
            {
                "name": spec["name"],
                "shape": shape,
                "datatype": spec["datatype"],
                "data": np.zeros(int(np.prod(shape))).tolist(),
            }
        )
    return json.dumps({"inputs": inputs}).encode()


async def run_load(
    url: str, ref: str, *, concurrency: int, duration: float, token: str | None = None
) -> LoadResult:
    name, version = _split(ref)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url.rstrip("/"), headers=headers, limits=limits, timeout=30
    ) as http:
        meta = await http.get(_model_path(name, version))
        meta.raise_for_status()
        body = request_body(meta.json())
        path = _model_path(name, version) + "/infer"
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        deadline = time.monotonic() + duration

        async def worker() -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    status = (await http.post(path, content=body)).status_code
                except httpx.HTTPError:
                    status = 0
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return LoadResult(
        requests=len(latencies),
        errors=sum(n for s, n in statuses.items() if not 200 <= s < 300),
        seconds=elapsed,
        p50_ms=float(np.percentile(ms, 50)),
        p95_ms=float(np.percentile(ms, 95)),
        p99_ms=float(np.percentile(ms, 99)),
        statuses=statuses,
    )
