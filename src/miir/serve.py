"""The HTTP service (``miir serve``): a FastAPI app over the :class:`~miir.recommender.Recommender`
facade, served by uvicorn. It parses and checks requests and calls the facade, nothing more::

    miir serve --run runs/beauty --port 8000          # OpenAPI docs at http://127.0.0.1:8000/docs
    curl -s localhost:8000/recommend -H 'content-type: application/json' \\
         -d '{"history": ["B0001", {"brand": "Acme", "title": "Rose lip balm"}], "k": 5}'

Endpoints: ``POST /recommend``, ``POST /impute``, ``POST /recommend/batch``,
``GET /items/{item_id}``, ``GET /health``, ``GET /metadata``.

Why it is built this way:

- the model is loaded once, in the lifespan (before the first request is accepted), and shared;
  scoring is CPU-bound, so it runs in worker threads (``anyio.to_thread`` with a
  :class:`~anyio.CapacityLimiter` of ``worker_threads``) under ``torch.inference_mode`` and
  never blocks the event loop: /health answers while a batch is being scored. The facade's
  lazy parts (text encoder, text tables) are built under its lock.
- a bad request is a 4xx naming what is wrong (an unknown item id, an empty history, ``k`` out
  of ``1..min(1000, n_items)``, a field of the wrong type or an unknown field, a body over
  ``max_body_bytes``: 413), never a crash; anything unexpected is a 500 with a JSON error and
  the server carries on. Every error body is ``{"error": message, ...}``.
- concurrent ``/recommend`` requests of catalogue ids are micro-batched
  (:mod:`miir.batching`, on unless ``batching=False``): validated one by one first (a bad one
  is its own 4xx), then scored together, up to ``micro_batch`` at a time, waiting at most
  ``max_wait_ms`` for batch-mates; a pass over a batch costs far less than a pass per
  request (bench/results/serve.md: server CPU per request x0.41), and the results are the
  facade's per-request ones. One batch is scored at a time (``batch_threads``): what queues
  meanwhile makes the next batch. Histories with inline records take the direct path (their
  texts are encoded per request).
- a history longer than the model reads is cut to its most recent items by the facade; the
  response says how many were dropped (``cut``) and why (``warnings``).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
import torch
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StrictInt,
    TypeAdapter,
)
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from miir import __version__, runtime
from miir.batching import Coalescer
from miir.data.schema import FieldKind
from miir.errors import ConfigError, DataError, MiirError
from miir.inference import InlineItemsNotSupported, UnknownItemError
from miir.models.base import Imputer
from miir.recommender import Recommender

log = logging.getLogger(__name__)

MAX_K = 1000  # the most items one request may ask for (also bounded by the catalogue)
T = TypeVar("T")


@dataclass(frozen=True)
class ServeConfig:
    """Limits and threads of the service (``miir serve`` options)."""

    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    max_batch: int = 256  # histories per /recommend/batch request
    worker_threads: int = 2  # requests scored at the same time
    torch_threads: int | None = 1  # torch's intra-op threads (None: leave torch's setting)
    batching: bool = True  # coalesce concurrent /recommend requests into one model pass
    micro_batch: int = 64  # requests per coalesced pass, at most
    max_wait_ms: float = 2.0  # how long the first request of a batch waits for batch-mates
    # coalesced batches scored at the same time: one leaves a core to the event loop (which
    # parses, validates and answers every request) and lets the next batch gather meanwhile
    batch_threads: int = 1
    # hand freed memory back to the OS (glibc's malloc_trim) at most once per this many
    # seconds, after a scoring call; 0: never. glibc keeps what the varying tensor sizes of
    # each batch freed: over 400 batches of 1-64 histories a process grew 329 -> 568 MiB and
    # was still growing. Trimming after every 16th call held it near 400 MiB but cost 5-22%
    # of throughput under load (bench/results/serve_runs/README.md); once a second is cheap.
    trim_seconds: float = 1.0

    def __post_init__(self) -> None:
        counts = {
            "max_body_bytes": self.max_body_bytes,
            "max_batch": self.max_batch,
            "worker_threads": self.worker_threads,  # 0 would hold every request forever
            "micro_batch": self.micro_batch,
            "batch_threads": self.batch_threads,
        }
        if self.torch_threads is not None:
            counts["torch_threads"] = self.torch_threads
        bad = [f"{name} {value}" for name, value in counts.items() if value < 1]
        if self.max_wait_ms < 0 or self.trim_seconds < 0:
            bad.append(f"max_wait_ms {self.max_wait_ms}, trim_seconds {self.trim_seconds}")
        if bad:
            raise ConfigError(f"serve settings out of range (counts >= 1, times >= 0): {bad}")


# ---------------------------------------------------------------------- request and response models

FieldValue = str | int | float | bool | list[str] | None
HistoryItem = Annotated[
    str | dict[str, FieldValue],
    Field(
        description="A catalogue item id, or an inline record {field: value} of a new item "
        "(MIIR only; `item_id` naming a catalogue item makes it that item)."
    ),
]
History = Annotated[list[HistoryItem], Field(min_length=1, description="Oldest item first.")]
K = Annotated[StrictInt, Field(ge=1, le=MAX_K, description="Items to return (<= n_items).")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(_Strict):
    history: History
    k: K = 10
    exclude_seen: StrictBool = Field(True, description="Leave out the history's items.")
    imputations: StrictBool = Field(
        True, description="(MIIR) add the imputed fields; false skips that second model pass."
    )


class ImputeRequest(_Strict):
    history: History
    vectors: StrictBool = Field(False, description="Add the imputed text vectors.")


class BatchRequest(_Strict):
    histories: list[History] = Field(min_length=1, description="At most max_batch histories.")
    k: K = 10
    exclude_seen: StrictBool = True
    imputations: StrictBool = Field(False, description="Add the imputed fields (a second pass).")


class ValueProbOut(BaseModel):
    value: JsonValue
    probability: float


class NearestItemOut(BaseModel):
    item: str
    similarity: float


class FieldImputationOut(BaseModel):
    field: str
    kind: str
    predicted: list[JsonValue]
    candidates: list[ValueProbOut] = []
    nearest: list[NearestItemOut] = []
    vector: list[float] | None = None


class ItemImputationOut(BaseModel):
    position: int
    item: str | None
    fields: dict[str, FieldImputationOut]


class ScoredItemOut(BaseModel):
    item: str
    score: float
    fields: dict[str, JsonValue] = Field(description="Display fields (text is not kept).")


class RecommendationOut(BaseModel):
    items: list[ScoredItemOut]
    cut: int = Field(description="Oldest history items dropped: the model reads fewer.")
    warnings: list[str]
    imputed: list[ItemImputationOut] | None = None
    next_item: ItemImputationOut | None = None


class BatchOut(BaseModel):
    results: list[RecommendationOut]


class ImputationOut(BaseModel):
    history: list[ItemImputationOut]
    next_item: ItemImputationOut
    cut: int
    warnings: list[str]


class ItemOut(BaseModel):
    item: str
    fields: dict[str, JsonValue]


class HealthOut(BaseModel):
    status: str
    model: str
    n_items: int


class FieldOut(BaseModel):
    name: str
    kind: str


class EvaluationOut(BaseModel):
    source: str = Field(description="The run folder's file: results.json or evaluation.json.")
    stage: str
    protocol: str
    metrics: dict[str, float]


class MetadataOut(BaseModel):
    model: str
    variant: str
    dataset: str | None
    fields: list[FieldOut]
    history_len: int
    n_items: int
    accepts_records: bool
    imputes: bool
    evaluation: list[EvaluationOut]
    miir_version: str


class ErrorOut(BaseModel):
    error: str
    unknown_items: list[str] | None = None
    detail: list[dict[str, JsonValue]] | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 404, 413, 422, 500)
}


# ---------------------------------------------------------------------- the loaded model


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None where the C library has none: musl, macOS, Windows)."""
    return getattr(runtime.libc(), "malloc_trim", None)


@functools.cache
def _adapter(kind: type) -> TypeAdapter:
    return TypeAdapter(kind)


def encode(result: Any) -> bytes:
    """The JSON body of a result dataclass (:class:`~miir.inference.Recommendation`,
    :class:`~miir.inference.Imputation`), serialised as it is. The dataclasses mirror the
    response models field for field (the tests check that every answer is exactly what its
    response model gives), so nothing is validated on the way out. FastAPI would dump a
    returned model, validate it again and encode it, on the event loop; validating the
    dataclasses into the model and dumping it alone took 0.10 ms per recommendation (with
    imputations), this 0.02 ms, in the worker thread."""
    return _adapter(type(result)).dump_json(result)


class JSONBytes(Response):
    """An already encoded JSON body (see :func:`encode`)."""

    media_type = "application/json"


class Service:
    """The loaded recommender and what the endpoints need of it, built once at startup."""

    def __init__(self, rec: Recommender, config: ServeConfig) -> None:
        self.rec = rec
        self.config = config
        self.limiter = anyio.CapacityLimiter(config.worker_threads)
        self.n_items = len(rec.item_ids)
        self.kinds = {name: info.kind for name, info in rec.codebook_.fields.items()}
        self.imputes = isinstance(rec.model_, Imputer)
        self.accepts_records = rec.accepts_records
        self.metadata = self._metadata()
        self._clock = time.monotonic
        self._trimmed = self._clock()
        self._trim = malloc_trim() if config.trim_seconds > 0 else None
        self.coalescer: Coalescer | None = None
        if config.batching:
            self.coalescer = Coalescer(
                self._score_batch,
                self.run,
                max_batch=config.micro_batch,
                max_wait_ms=config.max_wait_ms,
                concurrency=config.batch_threads,
            )

    def _score_batch(
        self, histories: list[Any], k: int, exclude_seen: bool, imputations: bool
    ) -> list[bytes]:
        """One pass over a coalesced batch (already in a worker thread, inference mode):
        ``recommend_batch`` gives each history what ``recommend`` would; each answer's JSON
        body is encoded here too, off the event loop."""
        results = self.rec.recommend_batch(histories, k, exclude_seen, imputations=imputations)
        return [encode(r) for r in results]

    def recommend_one(
        self, history: list[Any], k: int, exclude_seen: bool, imputations: bool
    ) -> bytes:
        """One history alone (inline items, or no batching): the JSON body of the answer."""
        if imputations:
            result = self.rec.recommend(history, k, exclude_seen)
        else:  # the same items and scores, one model pass
            result = self.rec.recommend_batch([history], k, exclude_seen, imputations=False)[0]
        return encode(result)

    def batchable(self, history: list[Any]) -> bool:
        """Whether ``history`` may be coalesced: it resolves (an unknown id or a malformed
        item raises here, for this request alone) and holds catalogue items only."""
        rec = self.rec
        resolved = rec.codebook_.resolve(history, rec.model_.history_len, self.accepts_records)
        return not resolved.records

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread, under inference mode, at most ``worker_threads``
        at a time."""

        def call() -> T:
            with torch.inference_mode():
                out = fn(*args)
            if self._trim is not None:
                now = self._clock()
                if now - self._trimmed >= self.config.trim_seconds:
                    self._trimmed = now  # racing threads may both trim: harmless
                    self._trim(0)
            return out

        return await anyio.to_thread.run_sync(call, limiter=self.limiter)

    def check_k(self, k: int) -> None:
        top = min(MAX_K, self.n_items)
        if k > top:
            raise ConfigError(f"k must be between 1 and {top} (min(1000, n_items)), got {k}")

    def check_history(self, history: list[Any], where: str = "") -> None:
        """Inline records: known field names, values of their field's kind (the facade would
        treat a wrongly typed value as missing with a warning; the service says no). A model
        that takes catalogue ids only is left to the facade, which refuses records as such."""
        if not self.accepts_records:
            return
        for pos, entry in enumerate(history):
            if not isinstance(entry, dict):
                continue
            for name, value in entry.items():
                problem = self._value_problem(name, value)
                if problem:
                    raise DataError(f"{where}item {pos}: {problem}")

    def _value_problem(self, name: str, value: Any) -> str | None:
        if name == "item_id":
            return None if isinstance(value, str) else f"item_id must be a string, got {value!r}"
        kind = self.kinds.get(name)
        if kind is None:
            known = sorted(self.kinds)
            return f"unknown field {name!r}; this model's fields are {known} (and item_id)"
        number = isinstance(value, int | float) and not isinstance(value, bool)
        ok = {
            FieldKind.CATEGORICAL: isinstance(value, str) or number,
            FieldKind.MULTI_CATEGORICAL: isinstance(value, str | list),
            FieldKind.NUMERIC: number,
            FieldKind.TEXT: isinstance(value, str),
        }.get(kind, True)
        if value is None or ok:
            return None
        expected = {
            FieldKind.CATEGORICAL: "a value (string)",
            FieldKind.MULTI_CATEGORICAL: "a list of strings",
            FieldKind.NUMERIC: "a number",
            FieldKind.TEXT: "a string",
        }[kind]
        return f"field {name!r} ({kind.value}) expects {expected}, got {json.dumps(value)}"

    def item(self, item_id: str) -> ItemOut:
        index = self.rec.codebook_.item_index.get(item_id)
        if index is None:
            raise HTTPException(404, f"unknown item id {item_id!r} (not in the model's catalogue)")
        return ItemOut(item=item_id, fields=self.rec.display(index))

    def _metadata(self) -> MetadataOut:
        rec, meta = self.rec, self.rec.meta_
        run = rec.run_dir_
        recorded = _read_json(run / "results.json") if run is not None else {}
        variant = recorded.get("variant") or meta.get("display_name") or meta["model"]
        return MetadataOut(
            model=meta["model"],
            variant=str(variant),
            dataset=(meta.get("artifact") or {}).get("name"),
            fields=[FieldOut(name=n, kind=k.value) for n, k in self.kinds.items()],
            history_len=rec.model_.history_len,
            n_items=self.n_items,
            accepts_records=self.accepts_records,
            imputes=self.imputes,
            evaluation=_evaluations(run),
            miir_version=__version__,
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _evaluations(run: Path | None) -> list[EvaluationOut]:
    """The run's recorded metrics, per file, stage and protocol: ``results.json`` (written by
    training) and ``evaluation.json`` (``miir evaluate``), where present."""
    out: list[EvaluationOut] = []
    if run is None:
        return out
    for source in ("results.json", "evaluation.json"):
        data = _read_json(run / source)
        for stage in ("valid", "test"):
            for protocol, metrics in (data.get(stage) or {}).items():
                if isinstance(metrics, dict):
                    numbers = {
                        m: float(v)
                        for m, v in metrics.items()
                        if isinstance(v, int | float) and not isinstance(v, bool)
                    }
                    out.append(EvaluationOut(source=source, stage=stage, protocol=protocol,
                                             metrics=numbers))  # fmt: skip
    return out


# ---------------------------------------------------------------------- body size limit


class BodyLimit:
    """413 for a request body over ``max_bytes``: at once where Content-Length says so, and
    while the body streams in otherwise (chunked uploads, or a lying Content-Length)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            bad = not declared.isdigit()
            message = "invalid Content-Length" if bad else self._too_large(int(declared))
            await JSONResponse({"error": message}, 400 if bad else 413)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI passes an HTTPException raised while reading the body through
                    raise HTTPException(413, self._too_large(received, streamed=True))
            return message

        await self.app(scope, limited, send)

    def _too_large(self, size: int, streamed: bool = False) -> str:
        what = f"more than {size:,} bytes so far" if streamed else f"{size:,} bytes"
        return f"request body too large: {what}; the limit is {self.max_bytes:,} bytes"


class CatchAll:
    """A 500 naming the error for any unexpected exception, its traceback logged, and the
    connection kept. (Starlette's handler for ``Exception`` answers and then re-raises, and
    uvicorn closes the connection of a request that raised after its answer began: a
    keep-alive client's next request met a reset socket.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:  # half an answer is out: it cannot become a 500
                raise
            await _error(500, f"internal error: {type(exc).__name__}: {exc}")(scope, receive, send)


# ---------------------------------------------------------------------- errors


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _is_union_tag(part: Any) -> bool:
    """A loc part pydantic adds for the union member that failed (``str``, ``dict[...]``)."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    """One line naming each bad place; the failures of one union (an item neither a string
    nor an object) become one message with the value that was given."""
    by_loc: dict[str, list[dict[str, Any]]] = {}
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if not _is_union_tag(p))
        by_loc.setdefault(loc, []).append(e)
    parts = []
    for loc, errs in by_loc.items():
        types = {e.get("type") for e in errs}
        if types <= {"string_type", "dict_type"} and len(errs) == 2:
            given = json.dumps(jsonable_encoder(errs[0].get("input")))[:80]
            parts.append(f"{loc}: expected an item id (string) or a record (object), got {given}")
        else:
            parts.append(f"{loc}: " + " or ".join(dict.fromkeys(str(e.get("msg")) for e in errs)))
    more = f" (and {len(parts) - 5} more)" if len(parts) > 5 else ""
    return "invalid request: " + "; ".join(parts[:5]) + more


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        detail = [{k: v for k, v in e.items() if k not in ("input", "url")} for e in errors]
        return _error(422, _validation_message(errors), detail=jsonable_encoder(detail))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(UnknownItemError)
    async def unknown(_: Request, exc: UnknownItemError) -> JSONResponse:
        return _error(422, str(exc), unknown_items=exc.items)

    @app.exception_handler(DataError)
    @app.exception_handler(ConfigError)
    @app.exception_handler(InlineItemsNotSupported)
    async def bad_input(_: Request, exc: MiirError) -> JSONResponse:
        return _error(422, str(exc))


# ---------------------------------------------------------------------- the app


def create_app(
    source: str | Path | Recommender | Callable[[], Recommender],
    config: ServeConfig | None = None,
) -> FastAPI:
    """The service for a run folder (or a saved model), a loaded recommender, or a function
    that loads one; loading happens in the lifespan, once, before requests are accepted."""
    config = config or ServeConfig()

    def load() -> Recommender:
        if isinstance(source, Recommender):
            return source
        if callable(source):
            return source()
        return Recommender.load(source)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if config.torch_threads is not None:
            torch.set_num_threads(config.torch_threads)
        service = Service(await anyio.to_thread.run_sync(load), config)
        first = service.rec.item_ids[:1]
        await service.run(service.rec.recommend, first, 1)  # warm-up: first request is not slow
        # the loaded model, catalogue and libraries are millions of long-lived objects: a full
        # collection walked them every second or two under load and stalled a whole micro-
        # batch for ~190 ms (one process, 32 clients: p99 244 ms -> 88 ms with them frozen)
        gc.collect()
        gc.freeze()
        app.state.service = service
        log.info("serving %s (%d items)", service.metadata.variant, service.n_items)
        if service.coalescer is not None:
            service.coalescer.start()
        try:
            yield
        finally:
            if service.coalescer is not None:
                await service.coalescer.stop()
                log.info("micro-batching: %s", service.coalescer.stats)

    app = FastAPI(
        title="miir",
        version=__version__,
        summary="Sequential recommendation and side-field imputation (MIIR).",
        lifespan=lifespan,
        responses=ERRORS,
    )
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(CatchAll)  # outside BodyLimit: last added is outermost
    _install_error_handlers(app)
    _add_routes(app)
    return app


def _service(request: Request) -> Service:
    return request.app.state.service


def _add_routes(app: FastAPI) -> None:
    @app.post("/recommend", response_model=RecommendationOut)
    async def recommend(body: RecommendRequest, request: Request) -> Response:
        """The top-k next items for one history, and (MIIR) the imputed missing fields."""
        s = _service(request)
        s.check_k(body.k)
        s.check_history(body.history)
        args = (body.history, body.k, body.exclude_seen, body.imputations)
        if s.coalescer is not None and s.batchable(body.history):
            answer = await s.coalescer.submit(*args)
        else:
            answer = await s.run(s.recommend_one, *args)
        return JSONBytes(answer)

    @app.post("/recommend/batch", response_model=BatchOut)
    async def recommend_batch(body: BatchRequest, request: Request) -> Response:
        """Top-k items for many histories in one model pass (at most ``max_batch``)."""
        s = _service(request)
        if len(body.histories) > s.config.max_batch:
            raise ConfigError(
                f"at most {s.config.max_batch} histories per batch, got {len(body.histories)}"
            )
        s.check_k(body.k)
        for i, history in enumerate(body.histories):
            s.check_history(history, where=f"history {i}, ")

        def call() -> bytes:
            results = s.rec.recommend_batch(
                body.histories, body.k, body.exclude_seen, imputations=body.imputations
            )
            return b'{"results":[' + b",".join(encode(r) for r in results) + b"]}"

        return JSONBytes(await s.run(call))

    @app.post("/impute", response_model=ImputationOut)
    async def impute(body: ImputeRequest, request: Request) -> Response:
        """The imputed missing fields of each history item and every field of the next item."""
        s = _service(request)
        if not s.imputes:
            raise HTTPException(400, f"model {s.metadata.model!r} does not impute side fields")
        s.check_history(body.history)

        def call() -> bytes:
            return encode(s.rec.impute(body.history, body.vectors))

        return JSONBytes(await s.run(call))

    @app.get("/items/{item_id:path}", response_model=ItemOut)
    async def item(item_id: str, request: Request) -> ItemOut:
        """A catalogue item's display fields (404 for an unknown id)."""
        return _service(request).item(item_id)

    @app.get("/health", response_model=HealthOut)
    async def health(request: Request) -> HealthOut:
        s = _service(request)
        return HealthOut(status="ok", model=s.metadata.variant, n_items=s.n_items)

    @app.get("/metadata", response_model=MetadataOut)
    async def metadata(request: Request) -> MetadataOut:
        """The model, its data set and fields, and the run's recorded evaluation."""
        return _service(request).metadata


def _listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening: uvicorn listens on it);
    ``reuse_port``: SO_REUSEPORT, so that several processes bind the same port and the
    kernel spreads the incoming connections over them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def _worker(run: str, host: str, port: int, config: dict[str, Any], access_log: bool) -> None:
    """One server process of ``miir serve --workers N``: its own socket on the shared port
    (SO_REUSEPORT), its own model, event loop and micro-batcher."""
    import uvicorn

    sock = _listening_socket(host, port, reuse_port=True)
    app = create_app(run, ServeConfig(**config))
    server = uvicorn.Server(uvicorn.Config(app, access_log=access_log, log_level="info"))
    server.run(sockets=[sock])


def serve(
    run: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ServeConfig | None = None,
    access_log: bool = True,
    workers: int = 1,
) -> None:
    """Serve ``run`` with uvicorn until interrupted (``miir serve``).

    ``workers`` > 1: that many server processes, each with its own copy of the model, event
    loop and micro-batcher, and its own socket on the port (SO_REUSEPORT: the kernel spreads
    the connections over them by their addresses). One process parses, validates and answers
    in Python on about one core (the GIL). uvicorn's own ``--workers`` share one socket, and
    whichever process woke first took the connections: of 32 keep-alive connections, one
    process held all 32 in two of three tries. The supervisor stops every worker on SIGINT or
    SIGTERM, and all of them when one exits."""
    import uvicorn

    from miir.training.checkpoint import checkpoint_dir

    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    checkpoint_dir(run)  # a wrong path fails here, with its message, before uvicorn starts
    if workers == 1:
        app = create_app(run, config)
        uvicorn.run(app, host=host, port=port, access_log=access_log, log_level="info")
        return
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("--workers > 1 needs SO_REUSEPORT (Linux); run one process per port")
    # bound, never listening, until the end: a taken port fails here, before any worker
    # starts, port 0 becomes a real one, and the port stays ours while the workers start
    # (a socket that does not listen gets no connections)
    probe = _listening_socket(host, port, reuse_port=True)
    port = probe.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    settings = dataclasses.asdict(config or ServeConfig())
    procs = [
        ctx.Process(target=_worker, args=(str(run), host, port, settings, access_log))
        for _ in range(workers)
    ]
    stopping = False

    def stop(signum: int, _: Any) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for p in procs:
            p.start()
        log.info("serving on http://%s:%d with %d worker processes", host, port, workers)
        multiprocessing.connection.wait([p.sentinel for p in procs])  # one exits, or a signal
        if not stopping:
            stop(signal.SIGTERM, None)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        probe.close()
    failed = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if failed and not stopping:
        raise MiirError(f"a server worker exited with code {failed[0]}; all were stopped")
