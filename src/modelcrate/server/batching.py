"""Adaptive batching: merge concurrent requests into one model call, split the answers back.

Requests queue per loaded model version. A batch starts at once when the model is idle
(so batches stay at 1 when load is light); while a batch computes, the requests arriving
meanwhile form the next one, which starts the moment that batch ends. So the event loop
decodes and answers one group of requests while the model runs the next, and batches
grow with load to what arrived during one run. One batch computes at a time (on all the
model's threads): two side by side bring a compute-bound model no more throughput and
double the rows in the system, so the wait of every queued request. ``max_delay_ms``
makes an idle model wait up to that long for more.
Requests are merged only when every input has the same trailing shape and dtype.
Models run in worker threads, except those whose batches take microseconds, which run
on the event loop (a thread hop would cost more than the run), and those whose batches
take milliseconds on a runtime that can start a run on its own threads (ONNX Runtime's
asynchronous run) when several requests wait: no Python thread then has to take the GIL
from the busy event loop before the model can start, which left it idle about a third of
the time. Such a run computes on one thread, so a lone request is still called on the
model's thread, where all the model's threads compute it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

import numpy as np

from modelcrate.errors import ServerError

Feeds = dict[str, np.ndarray]
# Batches that take less than this run on the event loop itself: handing them to a worker
# thread and back costs the loop more than running them (the digits CNN: ~60 us a batch).
INLINE_BELOW_S = 0.0002
# Batches measured to take at least this long, over at least MEASURED_BEFORE_OWN_THREADS
# batches, start on the runtime's own threads when it has them (see Batcher._own_threads).
OWN_THREADS_FROM_S = 0.001
MEASURED_BEFORE_OWN_THREADS = 8
# A model is saturated once, for this long since it started a full batch, it has started no
# batch half empty nor been idle: by default it then admits a request only while less than
# a full batch waits (see check_room).
SATURATED_AFTER_S = 0.1
RETRY_AFTER_S = 1  # what a refused request is told to wait before trying again (any 503)
RunFn = Callable[[Feeds], Feeds]
# Starts a run on the runtime's own threads and returns at once; the callback gets the
# outputs or the error, on one of those threads.
StartFn = Callable[[Feeds, Callable[[Feeds | BaseException], None]], None]


@dataclass
class _Pending:
    feeds: Feeds
    rows: int
    key: tuple[object, ...]
    future: asyncio.Future[Feeds] = field(repr=False)
    started: bool = False  # taken into a running batch (no longer waiting)
    queued_at: float = 0.0
    deadline: float = 0.0  # when it is answered with TimeoutError (loop time; see Deadlines)


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
        max_queue: int | None = None,
        on_refused: Callable[[], None] | None = None,
        start: StartFn | None = None,
    ) -> None:
        self.run = run
        self.start = start
        self.executor = executor
        self.max_batch_size = max(1, max_batch_size)
        self.max_delay = max(0.0, max_delay_ms) / 1000
        self.on_batch = on_batch
        self.on_refused = on_refused
        # Requests admitted but not yet running; past max_queue new ones are refused (503),
        # so what is admitted waits for at most about max_queue / max_batch_size batches
        # besides the one running. None: the default (see check_room).
        self.fixed = max_queue is not None
        self.max_queue = default_max_queue(self.max_batch_size) if max_queue is None else max_queue
        self.full_since: float | None = None  # when the current busy run began (see _note)
        self.refused_at: float | None = None  # the last refusal (see saturated)
        self.waiting = 0
        self.queue: collections.deque[_Pending] = collections.deque()
        self.queued_rows = 0
        self.running: Future[Feeds] | None = None  # the batch computing on the model's thread
        self.timer: asyncio.TimerHandle | None = None  # max_delay's wake-up
        self.soon = False  # a deferred dispatch is scheduled
        self.deadlines = Deadlines()
        # Until batches are measured fast they run in a worker thread (see _timed).
        self.seconds_per_batch: float | None = None
        self.measured = 0  # batches measured
        self.own_threads = False  # batches of several requests start on the runtime's threads

    @property
    def depth(self) -> int:
        return self.waiting

    @property
    def saturated(self) -> bool:
        """Whether the model has been busy since a full batch SATURATED_AFTER_S ago, or has
        refused a request in the last RETRY_AFTER_S (the wait its client was told: the
        clients it refused come back together then). Without the second, overload
        came in waves once a second: refusing sent clients away, the model's batches shrank
        below half full and it counted as keeping up, and when the refused clients came
        back together a burst of up to max_queue was admitted (the slowest 1% at 256
        connections were admitted that way, with ~40 requests waiting)."""
        now = time.monotonic()
        if self.refused_at is not None and now - self.refused_at < RETRY_AFTER_S:
            return True
        since = self.full_since
        return since is not None and now - since >= SATURATED_AFTER_S

    @property
    def inline(self) -> bool:
        """Whether batches run on the event loop (measured to take microseconds)."""
        return self.seconds_per_batch is not None and self.seconds_per_batch < INLINE_BELOW_S

    def _own_threads(self, live: list[_Pending]) -> StartFn | None:
        """The runtime's start when this batch starts on its own threads: a batch of several
        requests (a backlog, when the event loop is busy and a Python thread would first
        wait for the GIL) of a model that can, once its batches were measured to take
        milliseconds. That is for good: such a run cannot be measured in CPU time (the wall
        time until its callback includes the wait for the GIL), and a model of milliseconds
        does not become one of microseconds. A lone request is called on the model's
        thread: all the model's threads compute it there, where a run on the runtime's
        own threads computes on one (the MLP alone: 1,431 calls/s against 608)."""
        return self.start if self.own_threads and len(live) > 1 else None

    async def submit(self, feeds: Feeds, timeout: float | None = None) -> Feeds:
        """Run ``feeds`` (batch dimension first) as part of some batch; returns its own rows.
        Raises ServerError (503, code ``queue_full``) when ``max_queue`` requests wait, and
        TimeoutError when no answer came within ``timeout`` seconds."""
        self.check_room()
        rows = _rows(feeds)
        loop = asyncio.get_running_loop()
        self.waiting += 1
        if self.max_batch_size == 1 or rows is None:
            alone = _Pending(feeds, 1, (), loop.create_future())

            def run_alone() -> Feeds:
                loop.call_soon_threadsafe(self._start, alone)
                return self.run(feeds)

            try:
                async with asyncio.timeout(timeout):
                    return await loop.run_in_executor(self.executor, run_alone)
            finally:
                self._start(alone)  # no longer waiting, whether it ran or timed out
        # Inputs in another order only form batches of their own: still each its own rows.
        key = tuple([(n, a.shape[1:], a.dtype) for n, a in feeds.items()])
        pending = _Pending(feeds, rows, key, loop.create_future(), queued_at=time.monotonic())
        if timeout is not None:
            self.deadlines.add(pending, timeout, loop)
        self.queue.append(pending)
        self.queued_rows += rows
        if self.inline:
            # Fast models batch what is ready in this turn of the loop: run after it.
            if not self.soon:
                self.soon = True
                loop.call_soon(self._dispatch_soon)
        else:
            self._dispatch()
        try:
            return await pending.future
        finally:
            self._start(pending)  # no longer waiting, whether it ran or timed out
            if timeout is not None:
                self.deadlines.forget(timeout)

    def check_room(self) -> None:
        """Refuse (ServerError 503, code ``queue_full``; counted) when ``max_queue`` requests
        wait, or by default also when the model is saturated and a full batch already waits.
        A saturated model cannot catch up: a second batch waiting brings it no throughput
        and doubles the wait of every admitted request, while one batch waiting is all it
        needs to start a full batch the moment one ends. An idle or keeping-up model takes
        a burst of up to ``max_queue`` (default_max_queue) requests."""
        if self.waiting >= self.max_queue:
            reason = f"the model's queue is full ({self.max_queue} requests waiting)"
        elif not self.fixed and self.queued_rows >= self.max_batch_size and self.saturated:
            reason = (
                f"the model is saturated and a full batch ({self.max_batch_size} rows) "
                "already waits"
            )
        else:
            return
        self.refused_at = time.monotonic()
        if self.on_refused is not None:
            self.on_refused()
        raise ServerError(f"{reason}; retry shortly", status=503, code="queue_full")

    def _start(self, pending: _Pending) -> None:
        """Count ``pending`` out of the waiting requests (once; on the event loop)."""
        if not pending.started:
            pending.started = True
            self.waiting -= 1

    def close(self) -> None:
        self.run, self.start = _unloaded, None  # drop the model: nothing here may keep it
        if self.timer is not None:
            self.timer.cancel()
        self.deadlines.close()
        if self.running is not None:
            self.running.cancel()
        while self.queue:
            pending = self.queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("model was unloaded"))
        self.queued_rows = 0

    def _dispatch_soon(self) -> None:
        self.soon = False
        self._dispatch()

    def _dispatch(self) -> None:
        """Start the next batch if the model is idle: whatever is queued (once ``max_delay``
        has passed, unless a full batch waits). While a batch computes, the next forms and
        starts when it ends (from ``_batch_done``)."""
        loop = asyncio.get_running_loop()
        if not self.queue and self.running is None:
            self.full_since = None  # idle: whatever comes next is a burst, not a backlog
        while self.queue and self.running is None:
            if self.queued_rows < self.max_batch_size:
                due = self.queue[0].queued_at + self.max_delay - time.monotonic()
                if due > 0:
                    if self.timer is None:
                        self.timer = loop.call_later(due, self._delay_passed)
                    return
            self._note(self.queued_rows)
            batch = self._take()  # requests that timed out while waiting drop out
            if batch:
                self._run_batch(batch)

    def _note(self, rows: int) -> None:
        """Saturation: a busy run starts with a full batch and ends with one started at most
        half full (a single batch a little short, as clients refill the queue, does not end
        it), or when the model is idle."""
        if rows >= self.max_batch_size:
            if self.full_since is None:
                self.full_since = time.monotonic()
        elif 2 * rows <= self.max_batch_size:
            self.full_since = None

    def _delay_passed(self) -> None:
        self.timer = None
        self._dispatch()

    def _take(self) -> list[_Pending]:
        """Up to ``max_batch_size`` rows of the oldest request's shape, in order (a request
        larger than that alone); requests of other shapes keep their places for the next."""
        first, rows = self.queue[0].key, 0
        batch: list[_Pending] = []
        others: list[_Pending] = []
        while self.queue and rows < self.max_batch_size:
            item = self.queue.popleft()
            self.queued_rows -= item.rows
            if item.future.done():  # timed out or cancelled while waiting
                self._start(item)
            elif item.key == first and (not batch or rows + item.rows <= self.max_batch_size):
                batch.append(item)
                rows += item.rows
            else:
                others.append(item)
                if len(others) >= self.max_batch_size:
                    break
        for item in reversed(others):
            self.queue.appendleft(item)
            self.queued_rows += item.rows
        return batch

    def _run_batch(self, live: list[_Pending]) -> None:
        """Start one batch: on the event loop when batches take microseconds (answered at
        once), else on the runtime's own threads or the model's thread, which hand back to
        the loop once, in ``_batch_done`` (one turn of a busy loop, not three: a task's
        wake-ups each wait their turn, and the model would sit idle meanwhile)."""
        for pending in live:
            self._start(pending)
        merged = (
            live[0].feeds
            if len(live) == 1
            else {name: np.concatenate([p.feeds[name] for p in live]) for name in live[0].feeds}
        )
        if self.on_batch is not None:
            self.on_batch(sum(p.rows for p in live))
        if self.inline:  # a thread hop would cost more than the run
            try:
                outputs = self._timed(merged)
            except Exception as exc:  # the model failed: every request in the batch gets it
                _answer(live, exc)
            else:
                _answer(live, outputs)
            return
        loop = asyncio.get_running_loop()
        try:
            start = self._own_threads(live)
            if start is not None:
                work = _started(start, merged)
            else:
                work = self.executor.submit(self._timed, merged)
        except Exception as exc:  # the version was closed (its threads are gone), or the
            _answer(live, exc)  # runtime refused the inputs at once
            return
        self.running = work

        def done(work: Future[Feeds]) -> None:  # not closing over work: no reference cycle
            with contextlib.suppress(RuntimeError):  # a stopped loop: nobody waits for these
                loop.call_soon_threadsafe(self._batch_done, work, live, start)

        work.add_done_callback(done)

    def _batch_done(self, work: Future[Feeds], live: list[_Pending], start: StartFn | None) -> None:
        """A batch's model call is over (on the event loop): start the next before answering
        this one's requests, so the model computes while the loop answers them. ``start``,
        the runtime's when the batch ran on its threads, is held until here: the last
        reference to a model must not go on one of them (ONNX Runtime would then wait for
        its own thread pool's threads to end, from inside one)."""
        if self.running is work:
            self.running = None
        self._dispatch()
        if work.cancelled():
            _answer(live, RuntimeError("model was unloaded"))
        elif (exc := work.exception()) is not None:
            _answer(live, exc)
        else:
            _answer(live, work.result())

    def _timed(self, feeds: Feeds) -> Feeds:
        """``run``, keeping a moving average of the CPU time a batch takes on the thread that
        runs it. Not the wall time: on a worker thread that includes waiting for the GIL
        the event loop holds, so under load a model of microseconds measured ~0.6 ms a
        batch (the digits CNN at 16 connections) and never ran on the loop."""
        started = time.thread_time()
        outputs = self.run(feeds)
        seconds = time.thread_time() - started
        average = self.seconds_per_batch
        average = seconds if average is None else average + (seconds - average) / 10
        self.seconds_per_batch = average
        self.measured += 1
        if self.measured >= MEASURED_BEFORE_OWN_THREADS and average >= OWN_THREADS_FROM_S:
            self.own_threads = True  # for good (see _own_threads)
        return outputs


class Deadlines:
    """Answers requests that wait past their timeout with TimeoutError, on one timer for all
    of them: an ``asyncio.timeout`` per request (a timer scheduled, then cancelled) cost
    ~7 us of a request that takes ~100 in all. Requests of one timeout are kept in the
    order they came, so their deadlines are in order too: the timer is set for the earliest
    of each line's first, and when it fires, the requests whose deadline has passed are
    answered (those already answered leave the lines as later requests finish)."""

    def __init__(self) -> None:
        self.lines: dict[float, collections.deque[_Pending]] = {}  # timeout -> requests
        self.timer: asyncio.TimerHandle | None = None
        self.due = math.inf  # when the timer fires

    def add(self, pending: _Pending, timeout: float, loop: asyncio.AbstractEventLoop) -> None:
        pending.deadline = loop.time() + timeout
        line = self.lines.get(timeout)
        if line is None:
            line = self.lines[timeout] = collections.deque()
        line.append(pending)
        if pending.deadline < self.due:
            self._set(loop)

    def forget(self, timeout: float) -> None:
        """Let go of the answered requests at the front of ``timeout``'s line (a request
        calls this once answered: lines stay about as long as the requests in flight)."""
        line = self.lines.get(timeout)
        while line and line[0].future.done():
            line.popleft()

    def _expire(self) -> None:
        self.timer, self.due = None, math.inf
        loop = asyncio.get_running_loop()
        now = loop.time()
        for line in self.lines.values():
            while line and (line[0].future.done() or line[0].deadline <= now):
                late = line.popleft().future
                if not late.done():
                    late.set_exception(TimeoutError())
        self._set(loop)

    def _set(self, loop: asyncio.AbstractEventLoop) -> None:
        """Set the timer for the earliest deadline of the requests still waiting."""
        due = min((line[0].deadline for line in self.lines.values() if line), default=math.inf)
        if due == self.due:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.due = due
        if due < math.inf:
            self.timer = loop.call_at(due, self._expire)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer, self.due = None, math.inf
        self.lines.clear()


def default_max_queue(max_batch_size: int) -> int:
    """Requests a model lets wait by default: two full batches, and at least 64 (a burst is
    not refused; a saturated model refuses sooner, see ``Batcher.check_room``)."""
    return max(64, 2 * max_batch_size)


def _rows(feeds: Feeds) -> int | None:
    """The shared batch size of all inputs, or None when they cannot be merged."""
    sizes = {a.shape[0] if a.ndim else -1 for a in feeds.values()}
    if len(sizes) != 1:
        return None
    size = sizes.pop()
    return size if size > 0 else None


def _answer(live: list[_Pending], outputs: Feeds | BaseException) -> None:
    """Each request of a batch gets its own rows of ``outputs``, or the model's error."""
    start = 0
    for pending in live:
        end = start + pending.rows
        if not pending.future.done():  # else it timed out meanwhile
            if isinstance(outputs, BaseException):
                pending.future.set_exception(outputs)
            else:
                pending.future.set_result({n: v[start:end] for n, v in outputs.items()})
        start = end


def _started(start: StartFn, feeds: Feeds) -> Future[Feeds]:
    """A run started on the runtime's own threads, as a future that cannot be cancelled
    (the run cannot be stopped)."""
    work: Future[Feeds] = Future()
    work.set_running_or_notify_cancel()

    def finished(outcome: Feeds | BaseException) -> None:
        if isinstance(outcome, BaseException):
            work.set_exception(outcome)
        else:
            work.set_result(outcome)

    start(feeds, finished)
    return work


def _unloaded(feeds: Feeds) -> Feeds:
    raise RuntimeError("model was unloaded")
