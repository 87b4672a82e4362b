"""Run the server: bind one socket, then serve it from one or more worker processes.

Workers are spawned processes that each build their own app and model manager
from the same settings (passed as arguments, not environment variables) and
accept on the shared socket; each polls the registry, so alias moves reach all.
"""

from __future__ import annotations

import ipaddress
import logging
import multiprocessing
import signal
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path

from modelcrate.errors import UsageError
from modelcrate.registry import open_registry
from modelcrate.server.app import AppSettings, create_app
from modelcrate.server.auth import Tokens
from modelcrate.server.browser import AllowedHosts
from modelcrate.server.hot_swap import BatchConfig, ModelManager
from modelcrate.server.http_protocol import (
    DEFAULT_HEADER_TIMEOUT,
    DeadlineHttpProtocol,
    Server,
)
from modelcrate.server.metrics import Metrics
from modelcrate.trust.keys import load_private
from modelcrate.trust.signing import as_policy

log = logging.getLogger("modelcrate.server")


@dataclass(frozen=True)
class ServeSettings:
    refs: list[str]
    registry: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    token_file: str | None = None
    insecure: bool = False
    batch: BatchConfig = field(default_factory=BatchConfig)
    app: AppSettings = field(default_factory=AppSettings)
    poll_interval: float = 0.2
    threads: int = 2
    trust: list[str] = field(default_factory=list)  # public keys / directories
    identity: str | None = None  # private key for encrypted crates
    header_timeout: float = DEFAULT_HEADER_TIMEOUT  # seconds to send a request's head
    allowed_hosts: list[str] = field(default_factory=list)  # Host names beyond loopback ones
    max_connections: int = 4096  # beyond it new requests get 503 (health checks excepted)


def check_exposure(settings: ServeSettings, tokens: Tokens) -> None:
    """Refuse to listen beyond loopback without tokens, unless --insecure says so."""
    try:
        loopback = ipaddress.ip_address(settings.host).is_loopback
    except ValueError:
        loopback = settings.host == "localhost"
    if not loopback and not tokens.enabled and not settings.insecure:
        raise UsageError(
            f"refusing to listen on {settings.host} without --token-file: anyone on the network "
            "could use this server (pass --insecure to do it anyway)"
        )


def build_app(settings: ServeSettings) -> object:
    tokens = Tokens.load(settings.token_file)
    if settings.identity is not None:
        load_private(settings.identity)  # a missing or unreadable key fails now, not per model
    manager = ModelManager(
        open_registry(settings.registry),
        settings.refs,
        batch=settings.batch,
        metrics=Metrics(),
        poll_interval=settings.poll_interval,
        threads=settings.threads,
        trust=as_policy(settings.trust) if settings.trust else None,
        identity=settings.identity,
        freeze_gc=True,
    )
    hosts = AllowedHosts.for_server(settings.host, settings.allowed_hosts, tokens.enabled)
    return create_app(manager, tokens, replace(settings.app, hosts=hosts))


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: ServeSettings) -> None:
    """Serve until interrupted (blocking)."""
    tokens = Tokens.load(settings.token_file)  # fail fast on a bad token file
    check_exposure(settings, tokens)
    local = settings.registry is not None and "://" not in settings.registry
    if local and not Path(str(settings.registry)).exists():
        raise UsageError(f"registry {settings.registry} does not exist")
    source = open_registry(settings.registry)  # an unreachable or malformed registry fails now
    source.list_models()
    source.close()
    sock = bind(settings.host, settings.port)
    if settings.app.grpc is not None:  # fail now, not in each worker's startup
        grpc_host, grpc_port, _ = settings.app.grpc
        bind(grpc_host, grpc_port).close()
    if settings.workers <= 1:
        _worker(settings, sock)
        return
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker, args=(settings, sock), daemon=True)
        for _ in range(settings.workers)
    ]
    for worker in workers:
        worker.start()
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop and all(w.is_alive() for w in workers):
            for worker in workers:
                worker.join(timeout=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join(timeout=10)
        sock.close()


def _worker(settings: ServeSettings, sock: socket.socket) -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app = build_app(settings)
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_level="warning",
        access_log=False,
        http=DeadlineHttpProtocol.with_timeouts(
            settings.header_timeout, settings.app.request_timeout
        ),
        timeout_keep_alive=5,
        limit_concurrency=settings.max_connections,
    )
    # Server.run sets up uvicorn's event loop (uvloop when installed); its Acceptor turns
    # on TCP_NODELAY for each connection (Nagle + delayed ACK would add ~40 ms to every
    # kept-alive request).
    Server(config).run(sockets=[sock])
