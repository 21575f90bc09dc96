"""Dynamic micro-batching for the HTTP service: concurrent ``POST /recommend`` requests share
one model pass.

Why: one request's model pass is short (about a millisecond of scoring, a few more for the
imputation pass), but under 32 concurrent clients each request waits for the passes of all
the others, so latency is bound by throughput; a pass over 64 histories costs far less than
64 passes over one. The :class:`Coalescer` queues requests that were already validated (a bad
request never reaches the queue, so it cannot fail its batch-mates); one asyncio worker takes
up to ``max_batch`` of them, waiting at most ``max_wait_ms`` after the first, and scores them
in a worker thread with one ``score`` call per distinct ``(k, exclude_seen, imputations)``
(in practice one). Each request's future gets its own result; an unexpected exception fails
the requests of that call only (500s), and the worker carries on. Up to ``concurrency``
batches are scored at the same time (one per scoring thread), so a second batch gathers while
the first is scored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: ``score(histories, k, exclude_seen, imputations) -> one result per history``
ScoreFn = Callable[[list[Sequence[Any]], int, bool, bool], list[Any]]
#: runs a blocking function in a worker thread: ``await run(fn, *args)``
RunFn = Callable[..., Awaitable[Any]]

Key = tuple[int, bool, bool]  # (k, exclude_seen, imputations): requests one call can serve


@dataclass
class _Job:
    history: Sequence[Any]
    key: Key
    future: asyncio.Future


@dataclass
class BatchStats:
    """Counters for tests and logs: requests scored, batches taken, ``score`` calls (one
    scoring pass each, plus one imputation pass where asked), failed calls."""

    requests: int = 0
    batches: int = 0
    calls: int = 0
    failures: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many batches


class Coalescer:
    """Queues validated requests and scores them in batches (see the module docstring)."""

    def __init__(
        self,
        score: ScoreFn,
        run: RunFn,
        max_batch: int = 64,
        max_wait_ms: float = 2.0,
        concurrency: int = 1,
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0 or concurrency < 1:
            raise ValueError(
                f"max_batch >= 1, max_wait_ms >= 0 and concurrency >= 1 are needed, got "
                f"{max_batch}, {max_wait_ms}, {concurrency}"
            )
        self.score = score
        self.run = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.stats = BatchStats()
        self._slots = asyncio.Semaphore(concurrency)
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker (in the running event loop: the service's lifespan)."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="coalescer")

    async def stop(self) -> None:
        """Stop the worker; batches being scored finish, queued requests are cancelled."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        while not self._queue.empty():
            self._queue.get_nowait().future.cancel()

    # ------------------------------------------------------------------ requests
    async def submit(self, history: Sequence[Any], k: int, exclude_seen: bool,
                     imputations: bool) -> Any:  # fmt: skip
        """The result for one (already validated) history, scored with its batch-mates."""
        if self._worker is None or self._worker.done():
            raise RuntimeError("the batching worker is not running")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(history, (k, exclude_seen, imputations), future))
        self._arrived.set()
        return await future

    # ------------------------------------------------------------------ the worker
    async def _work(self) -> None:
        while True:
            await self._slots.acquire()  # a scoring thread is free: gather the next batch
            try:
                jobs = await self._gather()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.get_running_loop().create_task(self._score(jobs))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _gather(self) -> list[_Job]:
        """The first queued request, then whatever arrives until ``max_batch`` or
        ``max_wait`` after the first."""
        jobs = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while len(jobs) < self.max_batch:
            while len(jobs) < self.max_batch and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            remaining = deadline - asyncio.get_running_loop().time()
            if len(jobs) >= self.max_batch or remaining <= 0:
                break
            self._arrived.clear()
            # an Event, not queue.get: a timed-out wait can lose no request
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return [j for j in jobs if not j.future.done()]  # a client that left is not scored

    async def _score(self, jobs: list[_Job]) -> None:
        try:
            if not jobs:
                return
            groups: dict[Key, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            outcomes = await self.run(self._score_groups, groups)
            for key, outcome in outcomes.items():
                self._resolve(groups[key], outcome)
            self._count(jobs, len(groups))
        except BaseException as exc:  # the run itself failed (cancelled at shutdown...)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc if isinstance(exc, Exception) else
                                             RuntimeError("the batch was cancelled"))  # fmt: skip
            if not isinstance(exc, Exception):
                raise
        finally:
            self._slots.release()

    def _score_groups(self, groups: dict[Key, list[_Job]]) -> dict[Key, list[Any] | Exception]:
        """In a worker thread: one ``score`` call per key; an exception is kept as the
        outcome of its group, the other groups are still scored."""
        out: dict[Key, list[Any] | Exception] = {}
        for key, jobs in groups.items():
            k, exclude_seen, imputations = key
            try:
                results = self.score([j.history for j in jobs], k, exclude_seen, imputations)
                if len(results) != len(jobs):
                    raise RuntimeError(f"{len(results)} results for {len(jobs)} histories")
                out[key] = results
            except Exception as exc:  # handed to the requests of this group
                out[key] = exc
        return out

    def _resolve(self, jobs: list[_Job], outcome: list[Any] | Exception) -> None:
        if isinstance(outcome, Exception):
            self.stats.failures += 1
            log.error("a batch of %d requests failed: %r", len(jobs), outcome)
        for n, job in enumerate(jobs):
            if job.future.done():  # the client went away meanwhile
                continue
            if isinstance(outcome, Exception):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome[n])

    def _count(self, jobs: list[_Job], calls: int) -> None:
        s = self.stats
        s.requests += len(jobs)
        s.batches += 1
        s.calls += calls
        s.largest = max(s.largest, len(jobs))
        s.sizes[len(jobs)] = s.sizes.get(len(jobs), 0) + 1
