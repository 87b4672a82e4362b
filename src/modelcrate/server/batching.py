"""Adaptive batching: merge concurrent requests into one model call, split the answers back.

One runner task per loaded model version takes the first queued request, then
everything else already queued (requests pile up while the model is busy, so
batches grow with load and stay at 1 when idle), and, if ``max_delay_ms`` is
set, waits up to that long for more, up to ``max_batch_size`` rows. Requests
are merged only when every input has the same trailing shape and dtype; the
model runs in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from modelcrate.errors import ServerError

Feeds = dict[str, np.ndarray]
RunFn = Callable[[Feeds], Feeds]


@dataclass
class _Pending:
    feeds: Feeds
    rows: int
    key: tuple[object, ...]
    future: asyncio.Future[Feeds] = field(repr=False)
    started: bool = False  # taken into a running batch (no longer waiting)


class Batcher:
    """Queues requests for one model version and runs them in merged batches."""

    def __init__(
        self,
        run: RunFn,
        executor: Executor,
        *,
        max_batch_size: int,
        max_delay_ms: float,
        on_batch: Callable[[int], None] | None = None,
        concurrency: int = 1,
        max_queue: int | None = None,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self.run = run
        self.executor = executor
        self.max_batch_size = max(1, max_batch_size)
        self.max_delay = max(0.0, max_delay_ms) / 1000
        self.on_batch = on_batch
        self.on_refused = on_refused
        # Requests admitted but not yet running; past max_queue new ones are refused (503),
        # so what is admitted waits for at most about max_queue / max_batch_size batches.
        self.max_queue = default_max_queue(self.max_batch_size) if max_queue is None else max_queue
        self.waiting = 0
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        # Batches in flight at once: while one runs in a worker thread the next forms.
        self.slots = asyncio.Semaphore(max(1, concurrency))
        self.running: set[asyncio.Task[None]] = set()
        self.task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return self.waiting

    async def submit(self, feeds: Feeds) -> Feeds:
        """Run ``feeds`` (batch dimension first) as part of some batch; returns its own rows.
        Raises ServerError (503, code ``queue_full``) when ``max_queue`` requests wait."""
        self.check_room()
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._loop())
        rows = _rows(feeds)
        loop = asyncio.get_running_loop()
        self.waiting += 1
        if self.max_batch_size == 1 or rows is None:
            alone = _Pending(feeds, 1, (), loop.create_future())

            def run_alone() -> Feeds:
                loop.call_soon_threadsafe(self._start, alone)
                return self.run(feeds)

            try:
                return await loop.run_in_executor(self.executor, run_alone)
            finally:
                self._start(alone)  # no longer waiting, whether it ran or timed out
        key = tuple((n, a.shape[1:], a.dtype.str) for n, a in sorted(feeds.items()))
        pending = _Pending(feeds, rows, key, loop.create_future())
        self.queue.put_nowait(pending)
        try:
            return await pending.future
        finally:
            self._start(pending)  # no longer waiting, whether it ran or timed out

    def check_room(self) -> None:
        """Refuse (ServerError 503, code ``queue_full``; counted) when ``max_queue`` wait."""
        if self.waiting >= self.max_queue:
            if self.on_refused is not None:
                self.on_refused()
            raise ServerError(
                f"the model's queue is full ({self.max_queue} requests waiting); retry shortly",
                status=503,
                code="queue_full",
            )

    def _start(self, pending: _Pending) -> None:
        """Count ``pending`` out of the waiting requests (once; on the event loop)."""
        if not pending.started:
            pending.started = True
            self.waiting -= 1

    def close(self) -> None:
        self.run = _unloaded  # drop the model: nothing here may keep its memory alive
        if self.task is not None:
            self.task.cancel()
        for task in self.running:
            task.cancel()
        while not self.queue.empty():
            pending = self.queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("model was unloaded"))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.slots.acquire()
            first = await self.queue.get()
            batch, held = [first], []
            rows = first.rows
            deadline = time.monotonic() + self.max_delay
            while rows < self.max_batch_size:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), remaining)
                    except TimeoutError:
                        break
                if item.key == first.key and rows + item.rows <= self.max_batch_size:
                    batch.append(item)
                    rows += item.rows
                else:
                    held.append(item)
                    if len(held) >= self.max_batch_size:
                        break
            for item in held:  # different shapes wait for the next round, in order
                self.queue.put_nowait(item)
            task = loop.create_task(self._run_batch(loop, batch))
            self.running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.running.discard(task)
        self.slots.release()

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # cancelled requests drop out
        for pending in live:
            self._start(pending)
        if not live:
            return
        merged = (
            live[0].feeds
            if len(live) == 1
            else {name: np.concatenate([p.feeds[name] for p in live]) for name in live[0].feeds}
        )
        if self.on_batch is not None:
            self.on_batch(sum(p.rows for p in live))
        try:
            outputs = await loop.run_in_executor(self.executor, self.run, merged)
        except Exception as exc:  # the model failed: every request in the batch gets the error
            for pending in live:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        start = 0
        for pending in live:
            end = start + pending.rows
            if not pending.future.done():
                pending.future.set_result({n: v[start:end] for n, v in outputs.items()})
            start = end


def default_max_queue(max_batch_size: int) -> int:
    """Requests a model lets wait by default: two full batches, and at least 64."""
    return max(64, 2 * max_batch_size)


def _rows(feeds: Feeds) -> int | None:
    """The shared batch size of all inputs, or None when they cannot be merged."""
    sizes = {a.shape[0] if a.ndim else -1 for a in feeds.values()}
    if len(sizes) != 1:
        return None
    size = sizes.pop()
    return size if size > 0 else None


def _unloaded(feeds: Feeds) -> Feeds:
    raise RuntimeError("model was unloaded")
