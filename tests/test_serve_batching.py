"""Micro-batching in the HTTP service (:mod:`miir.batching`, :mod:`miir.serve`): the
:class:`Coalescer` on its own (batch sizes, the wait, one failing group, cancelled clients,
shutdown), then a real uvicorn server with batching on, spoken to by 32 concurrent clients:
answers equal to the facade's per-request ones (items, scores, cut, imputations), a malformed
request in a burst is its own 4xx, the requests really share passes, and an injected failure
is a 500 for its batch alone while the worker carries on.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from miir.batching import Coalescer
from miir.recommender import Recommender
from miir.serve import ServeConfig, Service, create_app
from test_recommender import (  # noqa: F401  (fixtures: the planted artifact and its run)
    colour_text,
    miir_run,
    text_artifact,
    walk,
)
from test_serve import ServerThread

N_CLIENTS = 32


# ---------------------------------------------------------------------- the coalescer alone


async def _inline(fn: Any, *args: Any) -> Any:
    """A ``run`` that calls in the event loop's thread (the unit tests need no threads)."""
    await asyncio.sleep(0)
    return fn(*args)


def _doubler(calls: list[tuple[int, int]]) -> Any:
    def score(histories: list[Any], k: int, exclude_seen: bool, imputations: bool) -> list[Any]:
        calls.append((len(histories), k))
        if k == 13:
            raise RuntimeError("thirteen is unlucky")
        return [(h, k, exclude_seen, imputations) for h in histories]

    return score


def test_the_coalescer_batches_up_to_max_batch_and_answers_each_request() -> None:
    async def main() -> None:
        calls: list[tuple[int, int]] = []
        co = Coalescer(_doubler(calls), _inline, max_batch=8, max_wait_ms=50, concurrency=1)
        co.start()
        results = await asyncio.gather(*(co.submit(n, 5, True, False) for n in range(20)))
        assert results == [(n, 5, True, False) for n in range(20)]  # each its own answer
        assert sorted(c[0] for c in calls) == [4, 8, 8]  # 20 requests, batches of at most 8
        assert (co.stats.requests, co.stats.calls, co.stats.largest) == (20, 3, 8)

        # requests that differ in k (or exclude_seen, imputations) share a batch, not a call
        calls.clear()
        mixed = await asyncio.gather(*(co.submit(n, 5 + n % 2, n < 3, True) for n in range(6)))
        assert mixed == [(n, 5 + n % 2, n < 3, True) for n in range(6)]
        assert sorted(calls) == [(1, 5), (1, 6), (2, 5), (2, 6)] and co.stats.batches == 4
        await co.stop()

    asyncio.run(main())


def test_one_failing_call_fails_its_requests_only_and_the_worker_carries_on() -> None:
    async def main() -> None:
        calls: list[tuple[int, int]] = []
        co = Coalescer(_doubler(calls), _inline, max_batch=16, max_wait_ms=50)
        co.start()
        answers = await asyncio.gather(
            *(co.submit(n, 13 if n % 3 == 0 else 5, True, False) for n in range(9)),
            return_exceptions=True,
        )
        for n, answer in enumerate(answers):
            if n % 3 == 0:
                assert isinstance(answer, RuntimeError) and "unlucky" in str(answer)
            else:
                assert answer == (n, 5, True, False)
        assert co.stats.failures == 1 and len(calls) == 2  # one batch, two calls
        assert await co.submit("again", 5, False, False) == ("again", 5, False, False)
        await co.stop()

    asyncio.run(main())


def test_the_wait_is_bounded_and_a_client_that_left_is_not_scored() -> None:
    async def main() -> None:
        calls: list[tuple[int, int]] = []
        co = Coalescer(_doubler(calls), _inline, max_batch=64, max_wait_ms=30)
        co.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await co.submit("alone", 1, True, False) == ("alone", 1, True, False)
        assert 0.02 < loop.time() - t0 < 2.0  # waited for batch-mates, then went alone
        gone = asyncio.ensure_future(co.submit("gone", 2, True, False))
        stays = asyncio.ensure_future(co.submit("stays", 2, True, False))
        await asyncio.sleep(0.005)
        gone.cancel()  # the client disconnected while its request waited
        assert await stays == ("stays", 2, True, False)
        assert calls[-1] == (1, 2)  # "gone" was left out of the pass
        await co.stop()
        with pytest.raises(RuntimeError, match="not running"):
            await co.submit("late", 1, True, False)
        with pytest.raises(ValueError, match="max_batch >= 1"):
            Coalescer(_doubler(calls), _inline, max_batch=0)

    asyncio.run(main())


# ---------------------------------------------------------------------- the service, over HTTP


@pytest.fixture(scope="module")
def rec(miir_run: Path) -> Recommender:  # noqa: F811
    return Recommender.load(miir_run, text_encoder=colour_text)


@pytest.fixture(scope="module")
def server(miir_run: Path) -> Iterator[ServerThread]:  # noqa: F811
    # a long wait: the 32 concurrent requests of a burst surely meet in batches, even on a
    # loaded two-core machine
    config = ServeConfig(worker_threads=2, micro_batch=16, max_wait_ms=150, batch_threads=2)
    app = create_app(lambda: Recommender.load(miir_run, text_encoder=colour_text), config)
    with ServerThread(app) as s:
        yield s


def _service(server: ServerThread) -> Service:
    return server.server.config.app.state.service  # type: ignore[attr-defined]


def _burst(server: ServerThread, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """POST /recommend each body from its own client, all at the same time: every client
    first opens its connection (GET /health), then all wait at a barrier and send together,
    so that a slow machine's thread start-up does not spread the burst over many waits."""
    ready = threading.Barrier(len(bodies))

    def ask(body: dict[str, Any]) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert client.get("/health").status_code == 200
            ready.wait(timeout=60)
            return client.post("/recommend", json=body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(ask, bodies))


def _assert_same(got: Any, want: dict[str, Any], where: str = "") -> None:
    """``got`` (an HTTP answer) is ``want`` (a facade result's ``to_dict()``) as JSON."""
    _assert_close(got, json.loads(json.dumps(want)), where)


def _assert_close(got: Any, want: Any, where: str) -> None:
    """Equal JSON, floats to 1e-5."""
    if isinstance(want, float) or isinstance(got, float):
        assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-5), f"{where}: {got} != {want}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{where}: {got} != {want}"
        for key in want:
            _assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got} != {want}"
        for n, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_close(g, w, f"{where}[{n}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def _bodies() -> list[dict[str, Any]]:
    """Planted histories of 1..11 items (some longer than the model reads: cut), a few k and
    exclude_seen values, half with imputations."""
    return [
        {
            "history": walk(n % 4, n, 1 + n % 11),
            "k": (5, 8)[n % 2],
            "exclude_seen": n % 5 != 0,
            "imputations": n % 4 < 2,
        }
        for n in range(N_CLIENTS)
    ]


def test_batched_answers_equal_the_facade_per_request(
    server: ServerThread, rec: Recommender
) -> None:
    stats = _service(server).coalescer.stats  # type: ignore[union-attr]
    before = (stats.requests, stats.batches, stats.calls)
    bodies = _bodies()
    answers = _burst(server, bodies)
    for n, (body, res) in enumerate(zip(bodies, answers, strict=True)):
        assert res.status_code == 200, res.text
        history, k, seen = body["history"], body["k"], body["exclude_seen"]
        if body["imputations"]:
            want = rec.recommend(history, k, seen).to_dict()
        else:
            want = rec.recommend_batch([history], k, seen, imputations=False)[0].to_dict()
        _assert_same(res.json(), want, f"request {n}")
    assert any(r.json()["cut"] > 0 for r in answers)  # the cut path was exercised
    assert any(r.json()["next_item"] for r in answers)  # and the imputations
    requests, batches = stats.requests - before[0], stats.batches - before[1]
    calls = stats.calls - before[2]
    assert requests == N_CLIENTS  # every request went through the coalescer...
    assert batches < N_CLIENTS / 4, stats  # ...in a few batches...
    # ...of one model call per (k, exclude_seen, imputations): 8 kinds of request here
    assert batches <= calls <= 8 * batches and calls < N_CLIENTS, stats
    assert stats.largest > 1


def test_a_malformed_request_in_a_burst_is_its_own_4xx(
    server: ServerThread, rec: Recommender
) -> None:
    bodies: list[dict[str, Any]] = [
        {"history": walk(n % 4, n, 3 + n % 5), "k": 5} for n in range(N_CLIENTS)
    ]
    bad = {
        3: ({"history": ["i000", "nope"], "k": 5}, "unknown item id(s): 'nope'"),
        10: ({"history": ["i000"], "k": 41}, "k must be between 1 and 40"),
        17: ({"history": ["i001", {"size": "big"}]}, "field 'size' (numeric) expects a number"),
        24: ({"history": [], "k": 5}, "body.history: List should have at least 1 item"),
    }
    for n, (body, _) in bad.items():
        bodies[n] = body
    # an inline record (valid) takes the direct path, beside the batched requests
    bodies[30] = {"history": ["i002", {"color": "c2", "size": -1.5}, "i006"], "k": 5}
    stats = _service(server).coalescer.stats  # type: ignore[union-attr]
    before = (stats.requests, stats.calls)
    answers = _burst(server, bodies)
    # the bad requests never reached the queue, the inline one went alone; the rest (all
    # alike) shared a few passes
    assert stats.requests - before[0] == N_CLIENTS - len(bad) - 1
    assert stats.calls - before[1] < (N_CLIENTS - len(bad) - 1) / 4, stats
    for n, (body, res) in enumerate(zip(bodies, answers, strict=True)):
        if n in bad:
            assert res.status_code == 422, res.text
            assert bad[n][1] in res.json()["error"]
        else:
            assert res.status_code == 200, res.text
            _assert_same(res.json(), rec.recommend(body["history"], 5).to_dict(), f"request {n}")


def test_an_injected_failure_is_a_500_for_its_batch_and_the_worker_survives(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _service(server)
    real = service.rec.recommend_batch

    def flaky(histories: list[Any], k: int = 10, *args: Any, **kwargs: Any) -> Any:
        if k == 7:
            raise RuntimeError("the disk is on fire")
        return real(histories, k, *args, **kwargs)

    monkeypatch.setattr(service.rec, "recommend_batch", flaky)
    failures = service.coalescer.stats.failures  # type: ignore[union-attr]
    bodies = [{"history": walk(n % 4, n, 4), "k": 7 if n % 4 == 0 else 5} for n in range(16)]
    for body, res in zip(bodies, _burst(server, bodies), strict=True):
        if body["k"] == 7:
            assert res.status_code == 500
            assert res.json() == {"error": "internal error: RuntimeError: the disk is on fire"}
        else:
            assert res.status_code == 200 and len(res.json()["items"]) == 5
    assert service.coalescer.stats.failures > failures  # type: ignore[union-attr]
    monkeypatch.undo()
    again = _burst(server, [{"history": ["i000"], "k": 7}] * 4)
    assert [r.status_code for r in again] == [200] * 4
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/health").json()["status"] == "ok"


def test_batching_off_scores_each_request_alone(miir_run: Path, rec: Recommender) -> None:  # noqa: F811
    config = ServeConfig(batching=False)
    app = create_app(lambda: Recommender.load(miir_run, text_encoder=colour_text), config)
    with ServerThread(app) as s:
        assert _service(s).coalescer is None
        bodies = _bodies()[:8]
        for body, res in zip(bodies, _burst(s, bodies), strict=True):
            assert res.status_code == 200, res.text
            h, k, seen = body["history"], body["k"], body["exclude_seen"]
            want = rec.recommend_batch([h], k, seen, imputations=body["imputations"])[0]
            _assert_same(res.json(), want.to_dict())
