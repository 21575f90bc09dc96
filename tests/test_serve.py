"""The HTTP service (:mod:`miir.serve`), spoken to over real HTTP: a uvicorn server on a free
loopback port in a background thread, a run trained in seconds on the planted data of
``test_recommender`` (its fixtures), and httpx. Each endpoint against the facade's answers,
each validation error with its status and a message naming the problem, the body limit,
cut histories, concurrent requests, and a server that survives malformed and failing requests.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from pydantic import BaseModel
from typer.testing import CliRunner

from helpers import small_model
from miir.cli import app as cli
from miir.errors import ConfigError
from miir.recommender import Recommender
from miir.serve import (
    BatchOut,
    ImputationOut,
    RecommendationOut,
    ServeConfig,
    Service,
    create_app,
)
from miir.training.checkpoint import save_checkpoint
from test_recommender import (  # noqa: F401  (fixtures: the planted artifact and its run)
    colour,
    colour_text,
    miir_run,
    text_artifact,
    walk,
)

LIMIT = 64 * 1024  # the body limit the test server runs with
MAX_BATCH = 8


class ServerThread:
    """uvicorn serving ``app`` on a free loopback port, in a daemon thread."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, args=([self.sock],), daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive(), "the server did not start (see the log above)"
            assert time.monotonic() < deadline, "the server did not start in 30 s"
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def rec(miir_run: Path) -> Recommender:  # noqa: F811
    """The facade the answers are checked against (its own copy of the model)."""
    return Recommender.load(miir_run, text_encoder=colour_text)


@pytest.fixture(scope="module")
def server(miir_run: Path) -> Iterator[ServerThread]:  # noqa: F811
    config = ServeConfig(max_body_bytes=LIMIT, max_batch=MAX_BATCH, worker_threads=4)
    app = create_app(lambda: Recommender.load(miir_run, text_encoder=colour_text), config)
    with ServerThread(app) as s:
        yield s


@pytest.fixture(scope="module")
def http(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def scores(items: list[dict[str, Any]]) -> list[float]:
    return [i["score"] for i in items]


def typed(res: httpx.Response, model: type[BaseModel]) -> dict[str, Any]:
    """The answer's JSON, checked to be exactly what its response model gives: the service
    serialises its result dataclasses directly, so a field the model lacks (or a missing
    one, or another type) must fail here, not drift from the documented schema."""
    assert res.status_code == 200, res.text
    body = res.json()
    assert model.model_validate_json(res.content).model_dump(mode="json") == body
    return body


# ---------------------------------------------------------------------- happy paths


def test_recommend_and_batch_answer_what_the_facade_answers(
    http: httpx.Client, rec: Recommender
) -> None:
    history = ["i001", "i005", {"title": "colour 1 new thing", "tags": ["t1"], "size": 0.2}]
    res = http.post("/recommend", json={"history": history, "k": 5})
    body = typed(res, RecommendationOut)
    expected = rec.recommend(history, k=5).to_dict()
    assert [i["item"] for i in body["items"]] == [i["item"] for i in expected["items"]]
    assert scores(body["items"]) == pytest.approx(scores(expected["items"]), rel=1e-5)
    assert [colour(i["item"]) for i in body["items"]] == [1] * 5  # the planted group
    assert [i["fields"] for i in body["items"]] == [i["fields"] for i in expected["items"]]
    assert body["next_item"]["fields"]["color"]["predicted"] == ["c1"]
    assert body["cut"] == 0 and body["warnings"] == []
    lean = http.post("/recommend", json={"history": history, "k": 5, "imputations": False})
    # without imputations the scores come from the scoring pass alone: the same items, scores
    # equal to float rounding (the pass with imputations also holds the query item's tokens)
    assert [i["item"] for i in lean.json()["items"]] == [i["item"] for i in body["items"]]
    assert scores(lean.json()["items"]) == pytest.approx(scores(body["items"]), rel=1e-5)
    assert lean.json()["next_item"] is None
    kept = http.post("/recommend", json={"history": ["i001"], "k": 40, "exclude_seen": False})
    assert "i001" in {i["item"] for i in kept.json()["items"]} and len(kept.json()["items"]) == 40

    histories = [walk(g, g, 3 + g) for g in range(4)]
    batch = http.post("/recommend/batch", json={"histories": histories, "k": 3})
    results = typed(batch, BatchOut)["results"]
    for got, want in zip(results, rec.recommend_batch(histories, k=3), strict=True):
        assert [i["item"] for i in got["items"]] == [i.item for i in want.items]
        assert got["imputed"] is None  # imputations only on request in a batch
    with_imputed = http.post(
        "/recommend/batch", json={"histories": histories[:1], "k": 3, "imputations": True}
    )
    assert typed(with_imputed, BatchOut)["results"][0]["next_item"]["fields"]["color"]["predicted"]


def test_impute_items_health_metadata_and_docs(
    http: httpx.Client,
    rec: Recommender,
    miir_run: Path,  # noqa: F811
) -> None:
    history = [f"i{i:03d}" for i in range(0, 28, 4)]
    res = http.post("/impute", json={"history": history, "vectors": True})
    body = typed(res, ImputationOut)
    assert body == json.loads(json.dumps(rec.impute(history, vectors=True).to_dict()))

    item = http.get("/items/i003").json()
    assert item == {
        "item": "i003",
        "fields": rec.codebook_.display(rec.tables_, rec.codebook_.item_index["i003"]),
    }
    assert set(item["fields"]) <= {"color", "tags", "size"} and item["fields"]
    missing = http.get("/items/nope")
    assert missing.status_code == 404 and "'nope'" in missing.json()["error"]

    assert http.get("/health").json() == {"status": "ok", "model": "MIIR", "n_items": 40}
    meta = http.get("/metadata").json()
    assert (meta["model"], meta["variant"], meta["dataset"]) == ("miir", "MIIR", "planted-text")
    assert {f["name"]: f["kind"] for f in meta["fields"]} == {
        "color": "categorical",
        "tags": "multi_categorical",
        "size": "numeric",
        "title": "text",
    }
    assert meta["history_len"] == rec.model_.history_len and meta["imputes"]
    recorded = json.loads((miir_run / "results.json").read_text())
    got = {(e["stage"], e["protocol"]): e["metrics"] for e in meta["evaluation"]}
    assert got and all(e["source"] == "results.json" for e in meta["evaluation"])
    for (stage, protocol), metrics in got.items():
        assert metrics == pytest.approx(recorded[stage][protocol])
    assert meta["miir_version"]

    assert http.get("/docs").status_code == 200
    schemas = http.get("/openapi.json").json()["components"]["schemas"]
    assert {"RecommendRequest", "RecommendationOut", "MetadataOut", "ErrorOut"} <= set(schemas)
    assert schemas["RecommendRequest"]["properties"]["k"]["maximum"] == 1000


def test_a_long_history_is_cut_to_the_most_recent_items(
    http: httpx.Client, rec: Recommender
) -> None:
    history = walk(3, 0, 12)
    body = http.post("/recommend", json={"history": history, "k": 5}).json()
    cut = len(history) - rec.model_.history_len
    assert body["cut"] == cut > 0 and any(f"oldest {cut}" in w for w in body["warnings"])
    recent = rec.recommend(history[-rec.model_.history_len :], k=5, exclude_seen=False)
    kept = http.post("/recommend", json={"history": history, "k": 5, "exclude_seen": False})
    assert [i["item"] for i in kept.json()["items"]] == [i.item for i in recent.items]


# ---------------------------------------------------------------------- bad requests


BAD = [
    ({"history": ["i000", "nope", "gone"]}, "unknown item id(s): 'nope', 'gone'"),
    ({"history": []}, "body.history: List should have at least 1 item"),
    ({"history": ["i000"], "k": 0}, "body.k: Input should be greater than or equal to 1"),
    ({"history": ["i000"], "k": 41}, "k must be between 1 and 40"),
    ({"history": ["i000"], "k": 1001}, "less than or equal to 1000"),
    ({"history": ["i000"], "k": "5"}, "body.k: Input should be a valid integer"),
    ({"history": ["i000", 4]}, "body.history.1: expected an item id (string) or a record"),
    ({"history": ["i000", {"size": "big"}]}, "item 1: field 'size' (numeric) expects a number"),
    ({"history": [{"tags": 3}]}, "field 'tags' (multi_categorical) expects a list of strings"),
    ({"history": ["i0", {"colour": "c0"}]}, "unknown field 'colour'"),
    ({"history": ["i000"], "kk": 3}, "body.kk: Extra inputs are not permitted"),
    ({"k": 3}, "body.history: Field required"),
]


@pytest.mark.parametrize(("payload", "message"), BAD, ids=[m[:30] for _, m in BAD])
def test_bad_recommend_requests_are_422_naming_the_problem(
    http: httpx.Client, payload: dict, message: str
) -> None:
    res = http.post("/recommend", json=payload)
    assert res.status_code == 422, res.text
    assert message in res.json()["error"], res.json()["error"]


def test_bad_batches_and_bodies(http: httpx.Client) -> None:
    unknown = http.post("/recommend", json={"history": ["i000", "nope"]}).json()
    assert unknown["unknown_items"] == ["nope"]
    too_many = http.post("/recommend/batch", json={"histories": [["i000"]] * (MAX_BATCH + 1)})
    assert too_many.status_code == 422 and f"at most {MAX_BATCH} histories" in too_many.text
    empty = http.post("/recommend/batch", json={"histories": [["i000"], []]})
    assert empty.status_code == 422 and "body.histories.1" in empty.json()["error"]
    typed = http.post("/recommend/batch", json={"histories": [["i000"], ["i1", {"size": True}]]})
    assert "history 1, item 1: field 'size'" in typed.json()["error"]
    bad_json = http.post("/recommend", content=b'{"history": [', headers=_JSON)
    assert bad_json.status_code == 422 and "JSON decode error" in bad_json.json()["error"]
    wrong_kind = http.post("/impute", json={"history": ["i000", {"title": 7}]})
    assert wrong_kind.status_code == 422 and "'title' (text) expects a string" in wrong_kind.text


_JSON = {"content-type": "application/json"}


def test_an_oversized_body_is_413_declared_or_streamed(http: httpx.Client) -> None:
    big = json.dumps({"history": ["i000"] * (LIMIT // 5)}).encode()  # > LIMIT bytes
    assert len(big) > LIMIT
    declared = http.post("/recommend", content=big, headers=_JSON)
    assert declared.status_code == 413, declared.text
    assert f"{len(big):,} bytes" in declared.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the size is known only as it streams
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    streamed = http.post("/recommend", content=chunks(), headers=_JSON)
    assert streamed.status_code == 413 and "the limit is 65,536 bytes" in streamed.text
    assert http.get("/health").status_code == 200


# ---------------------------------------------------------------------- load and failures


def test_concurrent_requests_match_the_facade(server: ServerThread, rec: Recommender) -> None:
    histories = [walk(n % 4, n, 2 + n % 9) for n in range(32)]

    def ask(history: list[str]) -> dict:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            res = client.post("/recommend", json={"history": history, "k": 5})
            assert res.status_code == 200, res.text
            return res.json()

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, histories))
    for history, got in zip(histories, answers, strict=True):
        want = rec.recommend(history, k=5)
        assert [i["item"] for i in got["items"]] == [i.item for i in want.items]
        assert scores(got["items"]) == pytest.approx([i.score for i in want.items], rel=1e-4)


def test_the_server_survives_malformed_and_failing_requests(
    http: httpx.Client, server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    burst = [
        b"\x00\xff garbage",
        b"[1, 2, 3]",
        b'{"history": null}',
        b'{"history": [{"size": {"nested": 1}}]}',
        b'{"history": ["i000"], "k": 1e400}',
        b'{"histories": "i000"}',
    ]
    for n in range(60):
        path = ("/recommend", "/impute", "/recommend/batch")[n % 3]
        res = http.post(path, content=burst[n % len(burst)], headers=_JSON)
        assert res.status_code == 422 and res.json()["error"].startswith("invalid request")
    assert http.get("/recommend").status_code == 405
    assert http.get("/nowhere").status_code == 404

    # an unexpected failure inside the model is a JSON 500, and the next request is served
    service = server.server.config.app.state.service  # type: ignore[attr-defined]

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr(service.rec, "recommend", broken)  # the direct path
    monkeypatch.setattr(service.rec, "recommend_batch", broken)  # the micro-batched path
    failed = http.post("/recommend", json={"history": ["i000"]})
    assert failed.status_code == 500
    assert failed.json() == {"error": "internal error: RuntimeError: the disk is on fire"}
    monkeypatch.undo()
    assert http.post("/recommend", json={"history": ["i000"]}).status_code == 200
    assert http.get("/health").json()["status"] == "ok"


def test_a_model_without_side_inputs_refuses_records_and_imputation(tmp_path: Path) -> None:
    save_checkpoint(small_model("sasrec", max_len=6), tmp_path / "sasrec")
    with (
        ServerThread(create_app(tmp_path / "sasrec", ServeConfig(torch_threads=None))) as s,
        httpx.Client(base_url=s.url) as http,
    ):
        ok = http.post("/recommend", json={"history": ["item3", "item7"], "k": 3})
        assert ok.status_code == 200 and ok.json()["next_item"] is None
        inline = http.post("/recommend", json={"history": ["item3", {"brand": "b1"}]})
        assert inline.status_code == 422 and "item 1 is an inline record" in inline.text
        # ill-typed or unknown ids in records are named (422), for a model without records too
        typed = http.post("/recommend", json={"history": ["item3", {"item_id": ["item7"]}]})
        assert typed.status_code == 422 and "item_id must be a string" in typed.text
        typo = http.post("/recommend", json={"history": ["item3", {"item_id": "item_x"}]})
        assert typo.status_code == 422 and "'item_x'" in typo.text
        impute = http.post("/impute", json={"history": ["item3"]})
        assert impute.status_code == 400 and "'sasrec' does not impute" in impute.text
        meta = http.get("/metadata").json()
        assert meta["evaluation"] == [] and meta["dataset"] is None


def test_cli_serve_names_a_wrong_run_folder(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["serve", "--run", str(tmp_path / "nothing")])
    assert res.exit_code != 0 and "nothing" in res.output and "best/model.json" in res.output


def test_serve_settings_out_of_range_are_refused_before_anything_starts(tmp_path: Path) -> None:
    """No worker thread would hold every request forever; no torch thread fails inside the
    server's start-up: both are refused up front, by the CLI and by ServeConfig."""
    for option in ("--workers-threads", "--torch-threads", "--max-batch"):
        res = CliRunner().invoke(cli, ["serve", "--run", str(tmp_path), option, "0"])
        assert res.exit_code == 2 and option in res.output
    for bad in ({"worker_threads": 0}, {"torch_threads": 0}, {"max_wait_ms": -1.0}):
        with pytest.raises(ConfigError, match="out of range"):
            ServeConfig(**bad)
    assert ServeConfig(torch_threads=None).worker_threads == 2


def test_cli_serve_with_two_worker_processes(miir_run: Path, rec: Recommender) -> None:  # noqa: F811
    """``miir serve --workers 2``: two processes share the port (each loads the run from the
    environment :func:`~miir.serve.serve` sets), and each answers what the facade answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "miir.cli", "serve", "--run", str(miir_run), "--port",
           str(port), "--workers", "2", "--no-access-log"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []  # read beside the test: waiting on /health alone saw one worker only
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # two processes each import torch: slow on a busy box
        while sum("Application startup complete" in line for line in lines) < 2:
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "two workers did not start in 180 s:\n" + "".join(
                lines
            )
            time.sleep(0.2)
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        history = walk(1, 0, 5)
        want = rec.recommend(history, k=5)
        for _ in range(6):  # fresh connections: the kernel hands them to either process
            with httpx.Client(base_url=url, timeout=30) as client:
                res = client.post("/recommend", json={"history": history, "k": 5})
            assert res.status_code == 200, res.text
            got = res.json()
            assert [i["item"] for i in got["items"]] == [i.item for i in want.items]
            assert scores(got["items"]) == pytest.approx([i.score for i in want.items], abs=1e-5)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    out = "".join(lines)
    assert out.count("Application startup complete") == 2, out


def test_freed_memory_is_trimmed_at_most_once_per_period(rec: Recommender) -> None:
    """``trim_seconds``: glibc's malloc_trim after a scoring call once the period has passed
    since the last (each call's result unchanged), never with 0."""
    service = Service(rec, ServeConfig(trim_seconds=1.0))
    assert sys.platform != "linux" or service._trim is not None  # glibc here
    clock = iter([100.5, 101.2, 101.3, 101.9, 103.0])
    service._clock, service._trimmed = lambda: next(clock), 100.0
    trims: list[int] = []
    service._trim = trims.append
    answers = [anyio.run(service.run, lambda n=n: n * 10) for n in range(5)]
    assert answers == [0, 10, 20, 30, 40]
    assert len(trims) == 2  # at 101.2 and at 103.0
    assert Service(rec, ServeConfig(trim_seconds=0))._trim is None


def test_a_taken_port_is_named_before_any_worker_starts(miir_run: Path) -> None:  # noqa: F811
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = CliRunner().invoke(
            cli, ["serve", "--run", str(miir_run), "--port", str(port), "--workers", "2"]
        )
    assert res.exit_code != 0 and f"127.0.0.1:{port}" in res.output, res.output
