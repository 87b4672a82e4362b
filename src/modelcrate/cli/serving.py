"""``serve`` and ``bench``."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from modelcrate.cli.options import JsonOption, RegistryOption
from modelcrate.cli.output import console, errors, print_json
from modelcrate.errors import UsageError


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
    app.command("ui")(ui_command)
    app.command("bench")(bench_command)


def serve_command(
    refs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Models to serve: digits@prod resnet@1.2.0 … (none: registry API only)"
        ),
    ] = None,
    port: Annotated[int, typer.Option("--port", "-p")] = 8000,
    host: Annotated[str, typer.Option("--host", help="Interface (default loopback only).")] = (
        "127.0.0.1"
    ),
    workers: Annotated[int, typer.Option("--workers", help="Processes sharing the port.")] = 1,
    token_file: Annotated[str | None, typer.Option("--token-file", help="TOML bearer tokens.")] = (
        None
    ),
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a non-loopback host without tokens.")
    ] = False,
    max_batch_size: Annotated[
        int | None, typer.Option("--max-batch-size", help="Default: the crate's, else 32.")
    ] = None,
    max_delay_ms: Annotated[
        float | None, typer.Option("--max-delay-ms", help="Default: the crate's, else 0.")
    ] = None,
    prepack: Annotated[
        bool | None,
        typer.Option(
            "--prepack/--no-prepack",
            help="ONNX Runtime weight prepacking (default: "
            "only for models under 1 GiB; off halves a big model's memory).",
            show_default=False,
        ),
    ] = None,
    grpc_port: Annotated[
        int | None,
        typer.Option("--grpc-port", help="Also serve OIP v2 over gRPC on this port (same host)."),
    ] = None,
    max_queue: Annotated[
        int | None,
        typer.Option(
            "--max-queue",
            help="Requests waiting per model before new ones get 503 / RESOURCE_EXHAUSTED "
            "(default: two batches, at least 64).",
        ),
    ] = None,
    cache_size: Annotated[
        int,
        typer.Option(
            "--cache-size",
            help="Cache this many responses per model version, keyed by the input tensors "
            "(0: off).",
        ),
    ] = 0,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb")] = 64.0,
    request_timeout: Annotated[float, typer.Option("--request-timeout")] = 30.0,
    header_timeout: Annotated[
        float, typer.Option("--header-timeout", help="Seconds a client has to send headers.")
    ] = 10.0,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="Also answer this Host name (repeatable; '*' for any). Without it a "
            "loopback server with no tokens answers loopback names only (DNS rebinding).",
        ),
    ] = None,
    max_connections: Annotated[
        int,
        typer.Option("--max-connections", help="Open connections before new requests get 503."),
    ] = 4096,
    allow_nonfinite: Annotated[
        bool, typer.Option("--allow-nonfinite", help="Accept NaN/Inf in inputs.")
    ] = False,
    poll_interval: Annotated[float, typer.Option("--poll-interval", help="Seconds.")] = 0.2,
    access_log: Annotated[bool, typer.Option("--access-log", help="JSON line per request.")] = (
        False
    ),
    trust: Annotated[
        list[str] | None,
        typer.Option("--trust", help="Serve only crates signed by these keys (.pub or dir)."),
    ] = None,
    identity: Annotated[
        str | None,
        typer.Option("--identity", help="Private key that decrypts encrypted crates (in memory)."),
    ] = None,
    ray: Annotated[
        bool, typer.Option("--ray", help="Run as a Ray Serve deployment (local Ray instance).")
    ] = False,
    replicas: Annotated[int, typer.Option("--replicas", help="Ray Serve replicas.")] = 1,
    autoscale: Annotated[
        str | None, typer.Option("--autoscale", help="Ray Serve autoscaling MIN:MAX.")
    ] = None,
    registry: RegistryOption = None,
) -> None:
    """Serve models over the Open Inference Protocol v2; aliases are followed live."""
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
        refs=refs or [],
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
    served = ", ".join(refs or []) or "the registry API"
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


def ui_command(
    port: Annotated[int, typer.Option("--port", "-p")] = 8000,
    host: Annotated[str, typer.Option("--host", help="Interface (default loopback only).")] = (
        "127.0.0.1"
    ),
    token_file: Annotated[str | None, typer.Option("--token-file", help="TOML bearer tokens.")] = (
        None
    ),
    registry: RegistryOption = None,
) -> None:
    """Browse the registry in a web browser (http://HOST:PORT/ui); serves no models."""
    from modelcrate.server.runner import ServeSettings, serve

    errors.print(f"registry UI on http://{host}:{port}/ui (Ctrl-C to stop)")
    serve(ServeSettings(refs=[], registry=registry, host=host, port=port, token_file=token_file))


def bench_command(
    url: Annotated[str, typer.Argument(help="Server URL, like http://127.0.0.1:8000")],
    ref: Annotated[str, typer.Argument(help="Model (digits, digits@prod).")],
    concurrency: Annotated[int, typer.Option("--concurrency", "-c")] = 16,
    duration: Annotated[str, typer.Option("--duration", "-d", help="Like 20s or 1m.")] = "10s",
    token: Annotated[str | None, typer.Option("--token", envvar="MODELCRATE_TOKEN")] = None,
    as_json: JsonOption = False,
) -> None:
    """Load-test a server for a fixed time and report req/s and latency percentiles."""
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
