"""``serve`` and ``bench``."""

from __future__ import annotations

import re

import click

from modelcrate.cli.options import json_option, listed, registry_option
from modelcrate.cli.output import console, errors, print_json
from modelcrate.errors import UsageError


def register(group: click.Group) -> None:
    group.add_command(serve_command)
    group.add_command(ui_command)
    group.add_command(bench_command)


@click.command("serve")
@click.argument("refs", nargs=-1)
@click.option("--port", "-p", type=int, default=8000)
@click.option("--host", default="127.0.0.1", help="Interface (default loopback only).")
@click.option("--workers", type=int, default=1, help="Processes sharing the port.")
@click.option("--token-file", help="TOML bearer tokens.")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback host without tokens.")
@click.option("--max-batch-size", type=int, help="Default: the crate's, else 32.")
@click.option("--max-delay-ms", type=float, help="Default: the crate's, else 0.")
@click.option(
    "--prepack/--no-prepack",
    default=None,
    show_default=False,
    help="ONNX Runtime weight prepacking (default: "
    "only for models under 1 GiB; off halves a big model's memory).",
)
@click.option("--grpc-port", type=int, help="Also serve OIP v2 over gRPC on this port (same host).")
@click.option(
    "--max-queue",
    type=int,
    help="Requests waiting per model before new ones get 503 / RESOURCE_EXHAUSTED "
    "(default: two batches, at least 64; a saturated model, less than one batch).",
)
@click.option(
    "--cache-size",
    type=int,
    default=0,
    help="Cache this many responses per model version, keyed by the input tensors (0: off).",
)
@click.option("--max-body-mb", type=float, default=64.0)
@click.option("--request-timeout", type=float, default=30.0)
@click.option(
    "--header-timeout", type=float, default=10.0, help="Seconds a client has to send headers."
)
@click.option(
    "--allowed-host",
    multiple=True,
    callback=listed,
    help="Also answer this Host name (repeatable; '*' for any). Without it a "
    "loopback server with no tokens answers loopback names only (DNS rebinding).",
)
@click.option(
    "--max-connections",
    type=int,
    default=4096,
    help="Open connections before new requests get 503.",
)
@click.option("--allow-nonfinite", is_flag=True, help="Accept NaN/Inf in inputs.")
@click.option("--poll-interval", type=float, default=0.2, help="Seconds.")
@click.option("--access-log", is_flag=True, help="JSON line per request.")
@click.option(
    "--trust",
    multiple=True,
    callback=listed,
    help="Serve only crates signed by these keys (.pub or dir).",
)
@click.option("--identity", help="Private key that decrypts encrypted crates (in memory).")
@click.option("--ray", is_flag=True, help="Run as a Ray Serve deployment (local Ray instance).")
@click.option("--replicas", type=int, default=1, help="Ray Serve replicas.")
@click.option("--autoscale", help="Ray Serve autoscaling MIN:MAX.")
@registry_option
def serve_command(
    refs: tuple[str, ...],
    port: int,
    host: str,
    workers: int,
    token_file: str | None,
    insecure: bool,
    max_batch_size: int | None,
    max_delay_ms: float | None,
    prepack: bool | None,
    grpc_port: int | None,
    max_queue: int | None,
    cache_size: int,
    max_body_mb: float,
    request_timeout: float,
    header_timeout: float,
    allowed_host: list[str] | None,
    max_connections: int,
    allow_nonfinite: bool,
    poll_interval: float,
    access_log: bool,
    trust: list[str] | None,
    identity: str | None,
    ray: bool,
    replicas: int,
    autoscale: str | None,
    registry: str | None,
) -> None:
    """Serve models over the Open Inference Protocol v2; aliases are followed live.

    REFS are the models to serve: digits@prod resnet@1.2.0 … (none: the registry API only)."""
    from modelcrate.server.app import AppSettings
    from modelcrate.server.hot_swap import BatchConfig
    from modelcrate.server.oip import Limits
    from modelcrate.server.runner import ServeSettings, serve

    if cache_size < 0:
        raise UsageError("--cache-size must be 0 (off) or more")
    if (
        workers < 1
        or max_connections < 1
        or any(value is not None and value < 1 for value in (max_batch_size, max_queue))
    ):
        raise UsageError(
            "--workers, --max-connections, --max-batch-size and --max-queue must be at least 1"
        )
    settings = ServeSettings(
        refs=list(refs),
        registry=registry,
        host=host,
        port=port,
        workers=workers,
        token_file=token_file,
        insecure=insecure,
        batch=BatchConfig(
            max_batch_size=max_batch_size,
            max_delay_ms=max_delay_ms,
            prepack=prepack,
            max_queue=max_queue,
            cache_size=cache_size,
        ),
        app=AppSettings(
            limits=Limits(max_body_bytes=int(max_body_mb * 2**20), allow_nonfinite=allow_nonfinite),
            request_timeout=request_timeout,
            access_log=access_log,
            grpc=None if grpc_port is None else (host, grpc_port, workers > 1),
        ),
        poll_interval=poll_interval,
        trust=trust or [],
        identity=identity,
        header_timeout=header_timeout,
        allowed_hosts=allowed_host or [],
        max_connections=max_connections,
    )
    served = ", ".join(refs) or "the registry API"
    if ray:
        from modelcrate.server.auth import Tokens
        from modelcrate.server.ray import Scaling, serve_with_ray
        from modelcrate.server.runner import check_exposure

        if grpc_port is not None:
            raise UsageError("--grpc-port is not available with --ray (Ray Serve speaks HTTP)")
        scaling = Scaling.parse(replicas, autoscale)
        check_exposure(settings, Tokens.load(token_file))
        errors.print(f"serving {served} with Ray Serve on http://{host}:{port} (Ctrl-C to stop)")
        serve_with_ray(settings, scaling)
        return
    grpc = f" and grpc://{host}:{grpc_port}" if grpc_port is not None else ""
    errors.print(f"serving {served} on http://{host}:{port}{grpc} (Ctrl-C to stop)")
    serve(settings)


@click.command("ui")
@click.option("--port", "-p", type=int, default=8000)
@click.option("--host", default="127.0.0.1", help="Interface (default loopback only).")
@click.option("--token-file", help="TOML bearer tokens.")
@registry_option
def ui_command(port: int, host: str, token_file: str | None, registry: str | None) -> None:
    """Browse the registry in a web browser (http://HOST:PORT/ui); serves no models."""
    from modelcrate.server.runner import ServeSettings, serve

    errors.print(f"registry UI on http://{host}:{port}/ui (Ctrl-C to stop)")
    serve(ServeSettings(refs=[], registry=registry, host=host, port=port, token_file=token_file))


@click.command("bench")
@click.argument("url")
@click.argument("ref")
@click.option("--concurrency", "-c", type=int, default=16)
@click.option("--duration", "-d", default="10s", help="Like 20s or 1m.")
@click.option("--token", envvar="MODELCRATE_TOKEN", show_envvar=True)
@json_option
def bench_command(
    url: str, ref: str, concurrency: int, duration: str, token: str | None, as_json: bool
) -> None:
    """Load-test a server for a fixed time and report req/s and latency percentiles.

    URL is the server (http://127.0.0.1:8000); REF the model (digits, digits@prod)."""
    from modelcrate.loadtest import run_load

    seconds = parse_duration(duration)
    if concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    import asyncio

    result = asyncio.run(run_load(url, ref, concurrency=concurrency, duration=seconds, token=token))
    summary = {**vars(result), "rps": result.rps}
    if as_json:
        print_json(summary)
        return
    console.print(
        f"{result.requests} requests in {result.seconds:.1f} s: {result.rps:.0f} req/s, "
        f"p50 {result.p50_ms:.2f} ms, p95 {result.p95_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, "
        f"{result.errors} errors {result.statuses}"
    )


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text.strip())
    if not match:
        raise UsageError(f"--duration {text!r}: expected a number with s, ms or m, like 20s")
    value = float(match.group(1))
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match.group(2)]
