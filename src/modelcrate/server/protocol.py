"""uvicorn's HTTP protocol with an absolute deadline on each request head (slowloris).

uvicorn cancels its keep-alive timer whenever a byte arrives and starts no timer
at all on a new connection, so a client that trickles a header one byte at a
time holds its connection forever. Here every connection must finish sending
each request's line and headers within ``header_timeout`` seconds of
connecting (or of its previous response); trickling does not extend that.
Body reads are bounded by the app's request timeout.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_HEADER_TIMEOUT = 10.0


class DeadlineHttpProtocol(HttpToolsProtocol):
    header_timeout = DEFAULT_HEADER_TIMEOUT
    _deadline: asyncio.TimerHandle | None = None

    @classmethod
    def with_timeout(cls, seconds: float) -> type[DeadlineHttpProtocol]:
        return type(cls.__name__, (cls,), {"header_timeout": seconds})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # uvicorn arms its keep-alive timer only when no pipelined request is starting;
        # then the next request's head is due within the deadline too.
        if self.timeout_keep_alive_task is not None:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()
