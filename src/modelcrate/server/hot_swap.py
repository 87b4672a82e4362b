"""Loaded models and hot swap.

Each served model follows a *selector*: an alias (``digits@prod``), the bare
name (latest published) or a pinned version. A watcher re-resolves selectors
against the registry every ``poll_interval`` seconds. When the target changes,
the new version is loaded and warmed up in a worker thread, checked on a
golden input, and only then swapped in with one assignment on the event loop.
Requests hold a reference to the version they started on; the old version is
freed once its in-flight count drains to zero. A version that fails to load
never replaces the running one; the failure is kept for readiness/metadata.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from modelcrate.errors import (
    InputError,
    ModelcrateError,
    NotFound,
    RegistryError,
    ServerError,
    status_of,
)
from modelcrate.manifest import Manifest, Serving, TensorSpec
from modelcrate.model import Model, prepare_inputs
from modelcrate.refs import Ref, parse_ref
from modelcrate.registry import ModelRegistry
from modelcrate.runtimes.onnxruntime import OnnxRuntime, prepacked_by_default, resident_bytes
from modelcrate.server.batching import Batcher, Feeds
from modelcrate.server.metrics import Metrics
from modelcrate.server.response_cache import ResponseCache
from modelcrate.server.rollouts import ANSWERED_BY, Rollouts, Trial
from modelcrate.trust.crypto import unlock
from modelcrate.trust.signing import Policy

log = logging.getLogger("modelcrate.server")
MEMORY_MARGIN = 1.5  # a swap needs free memory for the new version times this
LOADER_NICENESS = 10  # added to the server's: a busy server still gives a load ~10% of a core


@dataclass(frozen=True)
class BatchConfig:
    """Per-model serving options from the command line: batching limits (None defers to the
    crate's ``serving``), the queue bound, the response cache, and whether ONNX Runtime
    prepacks weights (None: by the size of the weights served, ``prepacked_by_default``)."""

    max_batch_size: int | None = None
    max_delay_ms: float | None = None
    prepack: bool | None = None
    max_queue: int | None = None  # requests waiting per model (None: batching's default)
    cache_size: int = 0  # responses cached per loaded version (0: no cache)

    def prepack_for(self, manifest: Manifest) -> bool:
        if self.prepack is not None:
            return self.prepack
        return prepacked_by_default(manifest)

    def for_crate(self, manifest: Manifest) -> tuple[int, float]:
        crate = manifest.serving or Serving()
        return (
            crate.max_batch_size if self.max_batch_size is None else self.max_batch_size,
            crate.max_delay_ms if self.max_delay_ms is None else self.max_delay_ms,
        )


class LoadedVersion:
    """One version in memory, with its batcher, the threads that run its batches and its
    in-flight count."""

    def __init__(
        self,
        model: Model,
        batcher: Batcher,
        executor: ThreadPoolExecutor,
        cache: ResponseCache | None,
    ) -> None:
        self.model: Model | None = model  # None once retired and drained (memory freed)
        self.loaded_manifest = model.manifest
        self.digest = model.manifest.digest  # computed once: lookups compare it per request
        self.batcher = batcher
        self.executor = executor
        self.cache = cache
        self.inflight = 0
        self.drained = asyncio.Event()
        self.retired = False

    @property
    def manifest(self) -> Manifest:
        return self.loaded_manifest

    @property
    def version(self) -> str:
        return self.loaded_manifest.version

    def release(self) -> None:
        self.inflight -= 1
        if self.retired and self.inflight == 0:
            self.drained.set()

    def close(self) -> None:
        """Stop serving: queued requests fail, the model threads end."""
        self.batcher.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class ServedModel:
    """A name the server answers to, the selector it follows and what is loaded now."""

    name: str
    selector: Ref
    current: LoadedVersion | None = None
    error: str | None = None
    failed_digest: str | None = None
    loaded_at: float = 0.0
    swaps: int = 0
    unloaded: bool = False  # by the repository API: the watcher leaves it alone
    trial: Trial | None = None  # a running rollout on the alias it follows (rollouts.py)
    stats: dict[str, float] = field(default_factory=lambda: {"requests": 0, "failures": 0})

    def entry(self) -> dict[str, str]:
        """Its line in the repository index (REST and gRPC)."""
        entry = {
            "name": self.name,
            "version": self.current.version if self.current else "",
            "state": "READY" if self.current else "UNAVAILABLE",
        }
        if self.error:
            entry["reason"] = self.error
        return entry


class ModelManager:
    """Loads, serves, swaps and unloads models from one registry."""

    def __init__(
        self,
        registry: ModelRegistry,
        refs: list[str],
        *,
        batch: BatchConfig,
        metrics: Metrics,
        poll_interval: float = 0.2,
        threads: int = 2,
        trust: Policy | None = None,
        identity: str | None = None,
        freeze_gc: bool = False,
    ) -> None:
        """``trust``: signatures required beyond the registry's policy; ``identity``: private
        key that decrypts encrypted crates (else ``$MODELCRATE_PASSPHRASE``), in memory.
        ``freeze_gc`` (a server process): loaded models' objects leave the cycle collector's
        scans (``gc.freeze``), whose full passes over them were tens of milliseconds of p99."""
        self.registry = registry
        self.trust = trust
        self.identity = identity
        self.freeze_gc = freeze_gc
        self.batch = batch
        self.metrics = metrics
        self.poll_interval = poll_interval
        self.threads = threads  # CPU threads each loaded version computes with
        # Registry reads (what an alias points to, rollouts) at normal priority; loading
        # versions on a thread of lower priority (a niced thread holding the GIL while
        # others wait for it would stall the event loop, so it runs only loads).
        self.lookups = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry")
        self.loader = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="load", initializer=_in_background
        )
        self.models: dict[str, ServedModel] = {}
        for text in refs:
            ref = parse_ref(text)
            if ref.name in self.models:
                raise RegistryError(f"model {ref.name!r} is given twice")
            self.models[ref.name] = ServedModel(ref.name, ref)
        self._watcher: asyncio.Task[None] | None = None
        self.rollouts = Rollouts(self, self._run)

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Load every model once (failures are recorded, not fatal), then start watching."""
        for served in list(self.models.values()):
            await self.refresh(served)
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for served in self.models.values():
            for loaded in (served.current, served.trial.candidate if served.trial else None):
                if loaded is not None:
                    loaded.close()
        self.loader.shutdown(wait=False, cancel_futures=True)
        self.lookups.shutdown(wait=False, cancel_futures=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            for served in [m for m in self.models.values() if not m.unloaded]:
                try:
                    await self.refresh(served)
                    await self.rollouts.follow(served)
                except Exception:  # the watcher must survive anything one model does
                    log.exception("refreshing %s failed", served.name)

    # -- swapping ------------------------------------------------------------

    async def refresh(self, served: ServedModel) -> None:
        """Swap in the version the selector points to now, if it changed and can be loaded."""
        loop = asyncio.get_running_loop()
        try:
            info = await loop.run_in_executor(self.lookups, self.registry.resolve, served.selector)
        except ModelcrateError as exc:
            if served.current is None and not served.unloaded:
                served.error = str(exc)
            return
        if served.unloaded:
            return
        current = served.current
        if current is not None and current.digest == info.digest:
            return
        if info.digest == served.failed_digest:
            return  # already tried; wait for the selector to move on
        try:
            loaded = await loop.run_in_executor(self.loader, self._load, info.name, info.digest)
        except Exception as exc:
            served.error = f"{info.name}@{info.version} failed to load: {exc}"
            served.failed_digest = info.digest
            self.metrics.swaps.labels(served.name, "failed").inc()
            log.error(served.error)
            return
        if served.unloaded:  # unloaded while this version was loading: drop it
            loaded.close()
            return
        self._swap(served, loaded)

    def _load(self, name: str, digest: str) -> LoadedVersion:
        """Load, warm up and check one version (runs in the loader thread)."""
        # Exactly what refresh resolved; signatures checked first when policy asks for them.
        crate = unlock(self.registry.get(Ref(name, digest=digest), trust=self.trust), self.identity)
        manifest = crate.manifest
        _check_memory(manifest, self.registry, self.batch)
        batchable = all(s.shape[:1] == [-1] for s in manifest.signature.inputs) and all(
            s.shape[:1] == [-1] for s in manifest.signature.outputs
        )
        # A batchable model runs one batch at a time on all the threads: two batches side by
        # side double the rows in the system (and the wait of queued requests) for no more
        # throughput. Requests that cannot be merged run side by side, one thread each.
        # ONNX Runtime starts its helper threads here, so they run at the loader's lower
        # priority: they take a core the event loop and the batch's own thread leave idle
        # (measured: more answers per second and a lower p99 under overload than helpers
        # at serving priority from a shared pool, which also spin between batches).
        side_by_side = 1 if batchable else self.threads
        model = Model(
            crate,
            threads=self.threads // side_by_side,
            registry=self.registry,
            trust=self.trust,
            identity=self.identity,
            prepack=self.batch.prepack_for(manifest),
        )
        outputs = model.predict(golden_input(manifest.signature.inputs))
        for output_name, value in outputs.items():
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise RegistryError(f"warm-up output {output_name!r} is not finite")

        def run(feeds: Feeds) -> Feeds:
            return model.runtime.run(feeds)

        # Its threads start on the first batch, from the event loop: at serving priority.
        executor = ThreadPoolExecutor(max_workers=side_by_side, thread_name_prefix=f"infer-{name}")
        max_batch_size, max_delay_ms = self.batch.for_crate(manifest)
        runtime = model.runtime
        batcher = Batcher(
            run,
            executor,
            max_batch_size=max_batch_size if batchable else 1,
            max_delay_ms=max_delay_ms,
            on_batch=self.metrics.batch_size.labels(name).observe,
            max_queue=self.batch.max_queue,
            on_refused=self.metrics.rejected.labels(name, "queue_full").inc,
            start=runtime.start if isinstance(runtime, OnnxRuntime) and runtime.can_start else None,
        )
        cache = ResponseCache(self.batch.cache_size) if self.batch.cache_size > 0 else None
        return LoadedVersion(model, batcher, executor, cache)

    def _swap(self, served: ServedModel, new: LoadedVersion) -> None:
        old, served.current = served.current, new  # atomic on the event loop
        served.error = served.failed_digest = None
        served.loaded_at = time.time()
        served.swaps += 1
        self.metrics.swaps.labels(served.name, "ok").inc()
        log.info("%s now serves %s (%s)", served.name, new.version, new.digest[:19])
        if self.freeze_gc:
            gc.freeze()
        if old is not None:
            asyncio.get_running_loop().create_task(self._retire(old))

    async def _retire(self, old: LoadedVersion) -> None:
        old.retired = True
        if old.inflight == 0:
            old.drained.set()
        await old.drained.wait()
        old.close()
        # Free the old session now, not whenever the cycle collector next runs: a big
        # model's memory must come back before the next swap needs it. Dropping the last
        # references frees it; a full collection (which holds the GIL for about 100 ms on a
        # server's heap, stalling every request) runs only if something still holds it.
        model, old.model = old.model, None
        alive = weakref.ref(model) if model is not None else None
        del model
        await asyncio.sleep(0)  # the batcher's cancelled tasks let go of it
        if alive is not None and alive() is not None:
            await asyncio.get_running_loop().run_in_executor(self.loader, self._collect)

    def _collect(self) -> None:
        """Free what retired versions left (frozen objects included), then freeze the rest."""
        if self.freeze_gc:
            gc.unfreeze()
        gc.collect()
        if self.freeze_gc:
            gc.freeze()

    def unload(self, name: str) -> None:
        served = self._served(name)
        if served.current is not None:
            asyncio.get_running_loop().create_task(self._retire(served.current))
        if served.trial is not None:  # a rollout's candidate goes with it
            self.rollouts.drop(served)
        served.current = None
        served.error = "unloaded"
        served.failed_digest = None
        served.unloaded = True

    async def load(self, name: str, ref: str | None = None) -> ServedModel:
        """Serve ``name`` (following ``ref``'s selector, default the bare name) and load it now."""
        if ref is not None and ("://" in ref or "/" in ref):
            raise InputError(
                "parameters.ref must be a registry reference like name@alias; the server never "
                "loads from URLs or paths"
            )
        selector = parse_ref(ref or name)
        if selector.name != name:
            raise RegistryError(f"reference {ref!r} is not a version of model {name!r}")
        served = self.models.get(name)
        if served is None or ref is not None:
            current = served.current if served is not None else None
            served = self.models[name] = ServedModel(name, selector, current=current)
        served.failed_digest = None
        served.unloaded = False
        await self.refresh(served)
        if served.current is None:
            raise NotFound(served.error or f"model {name!r} could not be loaded")
        return served

    # -- serving -------------------------------------------------------------

    def _served(self, name: str) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise NotFound(f"model {name!r} is not served here")
        return served

    def lookup(self, name: str, version: str | None = None) -> tuple[ServedModel, LoadedVersion]:
        """The loaded version answering ``name`` [``version``: a version, alias or digest]."""
        served = self._served(name)
        current = served.current
        if current is None:
            raise NotFound(f"model {name!r} is not ready: {served.error or 'still loading'}")
        if version is None or version in (current.version, current.digest):
            return served, current
        selector = served.selector
        if version == (selector.alias or selector.version):
            return served, current
        raise NotFound(
            f"model {name!r} version {version!r} is not loaded; this server serves "
            f"{name}@{current.version}" + (f" (as {selector})" if selector.alias else "")
        )

    def using(self, name: str, version: str | None) -> Use:
        """Hold a version for the duration of one infer request (it is not freed meanwhile),
        and count the request, with its outcome, in the metrics and the model's stats:
        ``async with manager.using(name, version) as loaded``."""
        return Use(self, name, version)

    def answered_by(self, loaded: LoadedVersion) -> str:
        """The version that answered the request being served (inside ``using``): a rollout's
        candidate took it, or ``loaded``."""
        return ANSWERED_BY.get() or loaded.version

    def record(self, name: str, version: str | None, status: int, seconds: float) -> None:
        """Count one infer request in the metrics and the model's stats."""
        self.metrics.requests.record(name, version or "", status, seconds)
        served = self.models.get(name)
        if served is not None:
            served.stats["requests"] += 1
            served.stats["failures"] += status != 200

    def admit(self, name: str, version: str | None) -> None:
        """Refuse a request before its body is read or decoded when the version that would
        run it has a full queue (the batcher checks again when the request is submitted)."""
        try:
            _, loaded = self.lookup(name, version)
        except NotFound:
            return  # answered with 404 by the request itself
        loaded.batcher.check_room()

    async def infer(
        self,
        loaded: LoadedVersion,
        inputs: dict[str, np.ndarray],
        timeout: float | None = None,
        *,
        asked: str | None = None,
        key: str | None = None,
    ) -> Feeds:
        """Run one request through the version's batcher: refused at once when its queue is
        full (503, counted as rejected), 504 when it is not answered within ``timeout``.
        While a rollout runs on the alias, a request that named the alias (``asked``) or no
        version takes part in it (``key``: the request id, for sticky routing)."""
        feeds = prepare_inputs(loaded.manifest.signature.inputs, inputs)
        trial = self.rollouts.trial_for(loaded, asked)
        if trial is not None:
            return await self.rollouts.answer(trial, loaded, feeds, timeout, key)
        return await self._run(loaded, feeds, timeout)

    async def _run(self, loaded: LoadedVersion, feeds: Feeds, timeout: float | None) -> Feeds:
        cache, key = loaded.cache, None
        if cache is not None and (key := cache.key(feeds)) is not None:
            hit = cache.get(key)
            self.metrics.cache.labels(loaded.manifest.name, "miss" if hit is None else "hit").inc()
            if hit is not None:
                return hit
        try:
            outputs = await loaded.batcher.submit(feeds, timeout)
        except TimeoutError:
            raise ServerError(f"inference took longer than {timeout} s", status=504) from None
        return outputs if key is None or cache is None else cache.put(key, outputs)


class Use:
    """``ModelManager.using``: an infer request's hold on a loaded version (a plain class: a
    generator-based context manager costs a measurable share of a small model's request)."""

    __slots__ = ("loaded", "manager", "name", "started", "token", "version")

    def __init__(self, manager: ModelManager, name: str, version: str | None) -> None:
        self.manager, self.name, self.version = manager, name, version
        self.loaded: LoadedVersion | None = None

    async def __aenter__(self) -> LoadedVersion:
        self.started = time.perf_counter()
        self.token = ANSWERED_BY.set(None)
        try:
            _, loaded = self.manager.lookup(self.name, self.version)
        except BaseException as exc:
            self._finish(status_of(exc))
            raise
        loaded.inflight += 1
        self.loaded = loaded
        return loaded

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _: object
    ) -> None:
        assert self.loaded is not None
        self.loaded.release()
        status = 200 if exc is None else status_of(exc)
        self._finish(status)

    def _finish(self, status: int) -> None:
        # The metrics name the version that answered: a rollout's candidate, or the loaded one.
        answered = ANSWERED_BY.get() or (self.loaded.version if self.loaded else self.version)
        ANSWERED_BY.reset(self.token)
        self.manager.record(self.name, answered, status, time.perf_counter() - self.started)


def golden_input(specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """A small valid input for warm-up: dynamic dimensions set to 1, zeros (or empty strings)."""
    feeds = {}
    for spec in specs:
        shape = [1 if d < 0 else d for d in spec.shape]
        if spec.dtype == "string":
            feeds[spec.name] = np.full(shape, b"", dtype=object)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feeds


def footprint(manifest: Manifest, registry: ModelRegistry, batch: BatchConfig) -> int:
    """Bytes a loaded version's weights take: the form a server loads, prepacked copies
    included (for a composition, of all its members)."""
    if manifest.composition is not None:
        return sum(
            footprint(
                registry.manifest(Ref(parse_ref(m.ref).name, digest=m.digest)), registry, batch
            )
            for m in manifest.composition.members
        )
    return resident_bytes(manifest, batch.prepack_for(manifest))


def _check_memory(manifest: Manifest, registry: ModelRegistry, batch: BatchConfig) -> None:
    """Refuse a load that would not fit in available memory (keeps the old version serving)."""
    needed = footprint(manifest, registry, batch) * MEMORY_MARGIN
    available = _available_memory()
    if available is not None and needed > available:
        raise RegistryError(
            f"{manifest.ref} needs about {math.ceil(needed / 2**20)} MiB but only "
            f"{available // 2**20} MiB are available"
        )


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _in_background() -> None:
    """Lower the loader thread's CPU priority (Linux: niceness is per thread, and threads it
    starts, such as the hash check, inherit it). Loading a new version then takes the CPU
    that serving leaves, instead of slowing the version that answers requests meanwhile."""
    if sys.platform == "linux":
        try:
            thread = threading.get_native_id()
            niceness = os.getpriority(os.PRIO_PROCESS, thread) + LOADER_NICENESS
            os.setpriority(os.PRIO_PROCESS, thread, min(19, niceness))
        except OSError:  # not permitted here: load at normal priority
            pass
