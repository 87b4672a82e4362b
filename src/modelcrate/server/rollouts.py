"""Carrying out a rollout (registry/rollouts.py) in a server that follows the alias.

Every poll the server reads the alias's rollout. While one runs it keeps the candidate
loaded and warmed beside the stable version (a ``Trial``) and routes the alias's requests:

- canary: ``weight`` percent of them go to the candidate (sticky by the request's ``id``
  when the client sends one); a candidate that fails or answers with non-finite numbers is
  counted as an error and the request is answered by the stable version, so a bad
  candidate never fails a request. Each candidate answer is compared with the stable
  version's off the response path.
- shadow: the stable version answers; a copy runs on the candidate off the response path.

Each version's requests, errors, latencies and disagreements are kept in a sliding window
of the rollout's interval. The server holding the rollout's decision lease compares the
candidate's figures with the SLOs at every poll (once it has ``MIN_SAMPLES``): a breach
rolls the rollout back at once; a candidate that stayed healthy for a whole interval
advances a step, and after the last step it is promoted (the alias moves). Disagreement
is the share of rows whose top-1 class differs for classifiers (2-D scores), else the
largest absolute difference.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from modelcrate.registry.records import Rollout
    from modelcrate.server.hot_swap import LoadedVersion, ModelManager, ServedModel

Feeds = dict[str, np.ndarray]
Run = Callable[["LoadedVersion", Feeds, float | None], Awaitable[Feeds]]
# The version that answered the request this task serves, when a rollout's candidate did.
ANSWERED_BY: ContextVar[str | None] = ContextVar("modelcrate_answered_by", default=None)
MIN_SAMPLES = 20  # candidate requests (or comparisons) before its figures can decide
MAX_COPIES = 256  # shadow copies and comparisons in flight; beyond, copies are skipped
REPORT_EVERY_S = 1.0  # how often the deciding server writes its live figures
log = logging.getLogger("modelcrate.server")


class Window:
    """One version's recent requests: (time, ok, seconds) and comparisons with stable."""

    def __init__(self, span: float) -> None:
        self.span = span
        self.requests: deque[tuple[float, bool, float]] = deque()
        self.compared: deque[tuple[float, float, int, bool]] = deque()  # value, rows, classes

    def add(self, ok: bool, seconds: float) -> None:
        self.requests.append((time.monotonic(), ok, seconds))

    def compare(self, value: float, rows: int, classes: bool) -> None:
        self.compared.append((time.monotonic(), value, rows, classes))

    def figures(self) -> dict[str, float]:
        horizon = time.monotonic() - self.span
        for events in (self.requests, self.compared):
            while events and events[0][0] < horizon:
                events.popleft()
        count = len(self.requests)
        errors = sum(not ok for _, ok, _ in self.requests)
        figures = {"requests": float(count), "errors": float(errors)}
        if count:
            figures["error_rate"] = errors / count
            latencies = [s for _, ok, s in self.requests if ok]
            if latencies:
                figures["p99_ms"] = float(np.percentile(latencies, 99) * 1000)
        if self.compared:
            rows = sum(r for _, _, r, _ in self.compared)
            if self.compared[-1][3]:  # classifier: share of rows whose class differs
                figures["disagreement"] = sum(v for _, v, _, _ in self.compared) / max(rows, 1)
            else:
                figures["disagreement"] = max(v for _, v, _, _ in self.compared)
            figures["compared"] = float(len(self.compared))
        return figures


class Trial:
    """A running rollout in this server: the candidate, loaded, and both versions' windows."""

    def __init__(self, rollout: Rollout, candidate: LoadedVersion) -> None:
        self.rollout = rollout
        self.candidate = candidate
        self.stable = Window(rollout.interval_s)
        self.trial = Window(rollout.interval_s)
        self.step = rollout.step
        self.reported_at = 0.0

    def update(self, rollout: Rollout) -> None:
        if rollout.step != self.step:  # a new step is judged on its own traffic
            self.stable, self.trial = Window(rollout.interval_s), Window(rollout.interval_s)
            self.step = rollout.step
        self.rollout = rollout

    def to_candidate(self, key: str | None) -> bool:
        weight = self.rollout.weight if self.rollout.mode == "canary" else 0
        if weight <= 0:
            return False
        if key:  # the same request id always lands on the same side
            return zlib.crc32(key.encode()) % 100 < weight
        return bool(np.random.randint(100) < weight)

    def figures(self) -> dict[str, dict[str, float]]:
        return {
            self.rollout.stable: self.stable.figures(),
            self.rollout.candidate: self.trial.figures(),
        }

    def breach(self, figures: dict[str, float]) -> str | None:
        """Which SLO the candidate's figures break, once there are enough of them."""
        slos = self.rollout.slos
        found = []
        if figures.get("requests", 0) >= MIN_SAMPLES:
            rate, limit = figures.get("error_rate", 0.0), slos.get("max_error_rate")
            if limit is not None and rate > limit:
                found.append(f"error rate {rate:.3f} > {limit:g}")
            p99, limit = figures.get("p99_ms"), slos.get("max_p99_ms")
            if limit is not None and p99 is not None and p99 > limit:
                found.append(f"p99 {p99:.1f} ms > {limit:g} ms")
        if figures.get("compared", 0) >= MIN_SAMPLES:
            value, limit = figures.get("disagreement", 0.0), slos.get("max_disagreement")
            if limit is not None and value > limit:
                found.append(f"disagreement {value:.3f} > {limit:g}")
        return "; ".join(found) or None

    def enough(self, figures: dict[str, float]) -> bool:
        """Whether this step saw enough of the candidate to call it healthy."""
        seen = (
            figures.get("compared", 0)
            if self.rollout.mode == "shadow"
            else figures.get("requests", 0)
        )
        return seen >= MIN_SAMPLES


def disagreement(stable: Feeds, candidate: Feeds) -> tuple[float, int, bool]:
    """(value, rows, classifier): differing top-1 rows, or the largest absolute difference."""
    a, b = next(iter(stable.values())), next(iter(candidate.values()))
    if a.shape != b.shape:
        return float("inf"), int(a.shape[0]) if a.ndim else 1, False
    if a.ndim == 2 and a.shape[1] > 1:
        return float((a.argmax(axis=1) != b.argmax(axis=1)).sum()), int(a.shape[0]), True
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(diff.max()) if diff.size else 0.0, int(a.shape[0]) if a.ndim else 1, False


def finite(outputs: Feeds) -> bool:
    return all(v.dtype.kind != "f" or bool(np.isfinite(v).all()) for v in outputs.values())


class Rollouts:
    """Follows the rollouts of one manager's alias-following models and routes requests."""

    def __init__(self, manager: ModelManager, run: Run) -> None:
        self.manager = manager
        self.run = run
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.copies: set[asyncio.Task[None]] = set()

    async def follow(self, served: ServedModel) -> None:
        """Read the alias's rollout; load, update, decide on or drop the trial."""
        registry: Any = self.manager.registry  # a Registry: only it has rollouts
        alias = served.selector.alias
        if alias is None or not hasattr(registry, "rollout") or served.current is None:
            return
        loop = asyncio.get_running_loop()
        lookups, loader = self.manager.lookups, self.manager.loader
        rollout = await loop.run_in_executor(lookups, registry.rollout, served.name, alias)
        trial: Trial | None = served.trial
        running = rollout is not None and rollout.state == "running"
        if not running or served.current.version != rollout.stable:
            if trial is not None:
                self.drop(served)
            return
        assert rollout is not None
        if trial is None or trial.rollout.id != rollout.id:
            if trial is not None:
                self.drop(served)
            try:
                info = await loop.run_in_executor(
                    lookups, registry.resolve, f"{served.name}@{rollout.candidate}"
                )
                loaded = await loop.run_in_executor(
                    loader, self.manager._load, served.name, info.digest
                )
            except Exception as exc:  # it never got traffic: end the rollout, say why
                reason = f"the candidate failed to load: {exc}"
                log.error("%s: %s", served.name, reason)
                await loop.run_in_executor(
                    lookups, registry.rollback_rollout, rollout.id, reason, {}
                )
                return
            served.trial = trial = Trial(rollout, loaded)
            log.info("%s: rollout of %s started (%s)", served.name, rollout.candidate, rollout.mode)
        trial.update(rollout)
        await self.decide(served, trial)

    async def decide(self, served: ServedModel, trial: Trial) -> None:
        registry: Any = self.manager.registry
        loop = asyncio.get_running_loop()
        lookups = self.manager.lookups
        lease = max(5.0, 3 * self.manager.poll_interval)
        rollout = trial.rollout
        if not await loop.run_in_executor(
            lookups, registry.claim_rollout, rollout.id, self.holder, lease
        ):
            return
        figures = trial.figures()
        mine = figures[rollout.candidate]
        breach = trial.breach(mine)
        if breach is not None:
            log.warning("%s: rolling back %s: %s", served.name, rollout.candidate, breach)
            await loop.run_in_executor(
                lookups, registry.rollback_rollout, rollout.id, breach, figures
            )
            self.drop(served)
        elif time.time() - rollout.step_started_at >= rollout.interval_s and trial.enough(mine):
            ended = await loop.run_in_executor(
                lookups, registry.advance_rollout, rollout.id, figures
            )
            if ended is not None:
                trial.update(ended)
        elif time.monotonic() - trial.reported_at >= REPORT_EVERY_S:  # live figures
            trial.reported_at = time.monotonic()
            await loop.run_in_executor(lookups, registry.report_rollout, rollout.id, figures)

    def drop(self, served: ServedModel) -> None:
        trial: Trial | None = served.trial
        served.trial = None
        if trial is not None:
            asyncio.get_running_loop().create_task(self.manager._retire(trial.candidate))

    def trial_for(self, loaded: LoadedVersion, asked: str | None) -> Trial | None:
        """The trial a request for ``loaded`` takes part in: only requests that named the
        alias (or no version) are split; one naming a version gets that version."""
        served = self.manager.models.get(loaded.manifest.name)
        if served is None or served.trial is None or served.current is not loaded:
            return None
        if asked is not None and asked != served.selector.alias:
            return None
        trial: Trial = served.trial
        return trial

    async def answer(
        self,
        trial: Trial,
        stable: LoadedVersion,
        feeds: Feeds,
        timeout: float | None,
        key: str | None,
    ) -> Feeds:
        if trial.to_candidate(key):
            started = time.perf_counter()
            try:
                outputs = await self.on_candidate(trial, feeds, timeout)
            except Exception as exc:  # a failing candidate never fails the request
                trial.trial.add(False, time.perf_counter() - started)
                log.warning(
                    "%s: candidate failed (%s); answered by stable", trial.rollout.name, exc
                )
            else:
                ok = finite(outputs)
                trial.trial.add(ok, time.perf_counter() - started)
                if ok:
                    self.copy(self.mirror(trial, stable, feeds, outputs))
                    ANSWERED_BY.set(trial.candidate.version)
                    return outputs
        started = time.perf_counter()
        outputs = await self.run(stable, feeds, timeout)
        trial.stable.add(True, time.perf_counter() - started)
        if trial.rollout.mode == "shadow":
            self.copy(self.shadow(trial, feeds, outputs, timeout))
        return outputs

    async def on_candidate(self, trial: Trial, feeds: Feeds, timeout: float | None) -> Feeds:
        """Run on the candidate, counted in flight so that dropping the trial (promotion,
        rollback) frees it only after every request it holds has its answer."""
        trial.candidate.inflight += 1
        try:
            return await self.run(trial.candidate, feeds, timeout)
        finally:
            trial.candidate.release()

    def copy(self, work: Awaitable[None]) -> None:
        if len(self.copies) >= MAX_COPIES:
            if asyncio.iscoroutine(work):
                work.close()
            return
        task = asyncio.ensure_future(work)
        self.copies.add(task)
        task.add_done_callback(self.copies.discard)

    async def shadow(
        self, trial: Trial, feeds: Feeds, stable: Feeds, timeout: float | None
    ) -> None:
        started = time.perf_counter()
        try:
            outputs = await self.on_candidate(trial, feeds, timeout)
        except Exception:  # counted, never raised: nobody waits for a shadow copy
            trial.trial.add(False, time.perf_counter() - started)
            return
        ok = finite(outputs)
        trial.trial.add(ok, time.perf_counter() - started)
        if ok:
            trial.trial.compare(*disagreement(stable, outputs))

    async def mirror(
        self, trial: Trial, stable: LoadedVersion, feeds: Feeds, candidate: Feeds
    ) -> None:
        if stable.retired:  # swapped out meanwhile: nothing to compare with
            return
        stable.inflight += 1  # held like a request, so a swap waits for it
        try:
            reference = await self.run(stable, feeds, None)
        except Exception:  # the stable side of a comparison failed: nothing to compare
            return
        finally:
            stable.release()
        trial.trial.compare(*disagreement(reference, candidate))
