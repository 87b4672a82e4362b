"""uvicorn's HTTP protocol with deadlines and byte caps on what a client sends, and
whole responses in one write.

uvicorn cancels its keep-alive timer whenever a byte arrives, starts no timer on a
new connection, never times out a body and buffers headers without limit. Here:

- **head deadline**: a connection must finish each request's line and headers
  within ``header_timeout`` seconds of connecting (or of its previous response);
  trickling bytes does not extend it, and a connection that sends nothing is closed
  at the same deadline (slowloris, idle floods);
- **head size**: more than ``MAX_HEAD_BYTES`` of request line and headers gets
  431 and the connection is closed, before the rest is buffered;
- **body deadline**: a body must arrive within ``body_timeout`` seconds (the
  server's request timeout) of its headers, plus one second per ``MIN_BODY_RATE``
  bytes received, so a large upload at a reasonable rate finishes and a body
  trickled a byte at a time is cut off with 408;
- **health in reserve**: ``/v2/health/*`` is answered even when the connection
  limit is reached (the limit counts idle connections too);
- **whole responses**: each request's scope offers ``scope["extensions"][WHOLE]["write"]``,
  an awaitable ``(status, head, headers, body)`` that writes a response in one write.
  ``head`` is header lines the server built from constants; only ``headers`` are
  checked. uvicorn's ``send`` checks every header against two regular expressions and
  writes the head and the body apart: for a small model's request, that was ~9% of
  the instructions the server spent on it. The infer route uses it
  (``infer.respond``); any other app sends ASGI messages as usual;
- **accepting in batches**: ``Server`` accepts every waiting connection (up to
  ``ACCEPT_BATCH``) each time the listening socket is ready. uvloop's server accepts one
  a turn of the event loop (libuv since 1.45), and a turn of a loaded server takes
  milliseconds: 256 connections opened at once took ~370 ms to be accepted, their
  requests waiting unread meanwhile (the slowest admitted requests of the overload
  benchmark were those).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import logging
import socket
import weakref
from collections.abc import Callable, Sequence

import uvicorn
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from modelcrate.errors import REFUSALS

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
MAX_HEAD_BYTES = 64 * 1024
MIN_BODY_RATE = 1024 * 1024  # bytes per second that extend a body's deadline
HEALTH_PATHS = (b"/v2/health/live", b"/v2/health/ready")
HEAD, BODY, NONE = 0, 1, 2  # what a connection is expected to send next (NONE: nothing)
WHOLE = "modelcrate.whole_response"  # the scope extension offering write_whole
ACCEPT_BATCH = 128  # connections accepted at most each time the listening socket is ready
ACCEPT_RETRY_S = 1.0  # pause after running out of file descriptors (as asyncio's servers)
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
Headers = Sequence[tuple[bytes, bytes]]
log = logging.getLogger("modelcrate.server")


class DeadlineHttpProtocol(HttpToolsProtocol):
    """The deadlines run on one timer per connection that fires at most ``header_timeout``
    ahead and, when the deadline has moved meanwhile, sets itself again: a request only
    moves the deadline (a number), where scheduling and cancelling a timer at each of its
    stages cost ~5% of a small model's request."""

    header_timeout = DEFAULT_HEADER_TIMEOUT
    body_timeout = DEFAULT_BODY_TIMEOUT
    _timer: asyncio.TimerHandle | None = None
    _timer_at = 0.0  # loop time the timer fires at
    _due = 0.0  # loop time by which the head, or the body (plus time earned), must be in
    _phase = HEAD  # which deadline applies: HEAD, BODY or NONE (the app has the request)
    _in_head = True  # reading a request line and headers (not a body)
    _head_bytes = 0
    _body_bytes = 0

    @classmethod
    def with_timeouts(cls, header: float, body: float) -> type[DeadlineHttpProtocol]:
        return type(cls.__name__, (cls,), {"header_timeout": header, "body_timeout": body})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect(HEAD, self.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Only a head still incomplete after this read is too long: a read that holds a
        # whole head and the start of a large body is fine.
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(431, f"request line and headers exceed {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes, self._body_bytes = False, 0, 0
        self._expect(BODY, self.body_timeout)
        limit = self.limit_concurrency
        if limit is not None and len(self.connections) >= limit and self._is_health():
            self.limit_concurrency = None  # capacity kept in reserve for health checks
        try:
            super().on_headers_complete()
        finally:
            self.limit_concurrency = limit
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope and not cycle.access_log:
            # A weak reference: the cycle holds the scope, and a scope holding its cycle
            # would leave every request's objects for the garbage collector (~15 a request;
            # its passes were milliseconds of the p99 under load).
            write = functools.partial(write_whole, weakref.ref(cycle))
            self.scope["extensions"] = {WHOLE: {"write": write}}

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)  # each MIN_BODY_RATE bytes earn one more second
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = NONE
        self._in_head = True  # whatever follows is the next request's head
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # uvicorn arms its keep-alive timer only when no pipelined request is starting;
        # then the next request's head is due within the deadline too.
        if self.timeout_keep_alive_task is not None:
            self._expect(HEAD, self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    # -- deadlines -------------------------------------------------------------

    def _expect(self, phase: int, seconds: float) -> None:
        """From now, ``phase`` must be over within ``seconds``."""
        now = self.loop.time()
        self._phase, self._due = phase, now + seconds
        if self._timer is None or self._timer_at > self._due:
            self._set_timer(now, self._due)

    def _set_timer(self, now: float, due: float) -> None:
        """Fire at ``due``, or ``header_timeout`` from now if sooner (a shorter deadline set
        meanwhile is then never missed)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = min(due, now + self.header_timeout)
        self._timer = self.loop.call_at(self._timer_at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._phase == NONE or self.transport.is_closing():
            return  # the next phase sets the timer again
        now = self.loop.time()
        due = self._due
        if self._phase == BODY:  # a body arriving fast enough earns the time it needs
            due += self._body_bytes / MIN_BODY_RATE
        if now < due:
            self._set_timer(now, due)
        elif self._phase == HEAD:
            self.transport.close()
        else:
            self._refuse(408, f"the request body did not arrive within {self.body_timeout:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` (unless a response has started) and close the connection."""
        if self.transport.is_closing():
            return
        cycle = self.cycle  # the current request's, or the previous one's while in a head
        if cycle is None or cycle.response_complete or not cycle.response_started:
            body = json.dumps({"error": message, "code": REFUSALS[status]}).encode()
            head = (
                b"content-type: application/json\r\ncontent-length: "
                + str(len(body)).encode()
                + b"\r\nconnection: close\r\n\r\n"
            )
            self.transport.write(STATUS_LINE[status] + head + body)
        if cycle is not None:
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _is_health(self) -> bool:
        return self.url.split(b"?", 1)[0] in HEALTH_PATHS


async def write_whole(
    cycle_ref: weakref.ref[RequestResponseCycle],
    status: int,
    head: bytes,
    headers: Headers,
    body: bytes,
) -> None:
    """Answer the request of ``cycle`` as its ``send`` would answer a start message and
    one body message (flow control, keep-alive, the server's date and name, the
    next pipelined request started), in one write. ``head`` is header lines built by
    the server ("name: value\\r\\n" each); ``headers`` are checked for line breaks."""
    cycle = cycle_ref()
    if cycle is None:  # the connection and its request are gone: nobody to answer
        return
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    if cycle.disconnected:
        return
    if cycle.response_started:
        raise RuntimeError("the response has already started")
    cycle.response_started, cycle.waiting_for_100_continue = True, False
    parts = [STATUS_LINE[status]]
    for name, value in (*cycle.default_headers, *headers):
        # CR, LF, NUL as ints: a bytes operand first fails as an int inside CPython (an
        # exception raised and cleared: 16x slower, ~4% of a small model's request).
        if 13 in value or 10 in value or 0 in value:
            raise RuntimeError(f"header {name.decode()!r} holds a line break")
        parts += (name, b": ", value, b"\r\n")
    parts += (head, b"content-length: %d\r\n" % len(body))
    if not cycle.keep_alive:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", body)
    cycle.transport.write(b"".join(parts))
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()


class Server(uvicorn.Server):
    """uvicorn's server, its listening sockets served by ``Acceptor``s (see the module's
    docstring) instead of the event loop's own servers."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None:  # uvicorn binds host and port itself
            await super().startup()
            return
        await super().startup(sockets=[])  # the app's lifespan; no listener of uvicorn's
        loop = asyncio.get_running_loop()
        config, state = self.config, self.server_state

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=state, app_state=self.lifespan.state, _loop=loop
            )

        # uvicorn's shutdown closes and awaits what is here (close, wait_closed).
        self.servers = [Acceptor(loop, sock, protocol) for sock in sockets]  # type: ignore[misc]


class Acceptor:
    """Accepts up to ``ACCEPT_BATCH`` connections each time ``sock`` is ready and hands
    each to the event loop's transports, with ``protocol()``. Worker processes sharing
    ``sock`` each accept what they can; one that finds nothing waiting moves on."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: Callable[[], asyncio.Protocol],
    ) -> None:
        self.loop, self.sock, self.protocol = loop, sock, protocol
        self.connecting: set[asyncio.Task[object]] = set()
        self.closed = False
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # nothing (more) waiting, or another worker took it
            except OSError as exc:
                if exc.errno not in OUT_OF_RESOURCES:
                    raise
                log.warning("cannot accept connections (%s); trying again shortly", exc)
                self.loop.remove_reader(self.sock.fileno())
                self.loop.call_later(ACCEPT_RETRY_S, self._resume)
                return
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle delay
            except OSError:  # reset by the client already
                conn.close()
                continue
            task = self.loop.create_task(self._connect(conn))
            self.connecting.add(task)
            task.add_done_callback(self.connecting.discard)

    async def _connect(self, conn: socket.socket) -> object:
        try:
            return await self.loop.connect_accepted_socket(self.protocol, conn)
        except OSError:  # the client went away meanwhile
            conn.close()
            return None

    def _resume(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())

    async def wait_closed(self) -> None:
        """Nothing to wait for: connections are uvicorn's to close."""
