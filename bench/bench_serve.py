"""Load benchmark of the HTTP service (``miir serve``): latency, throughput, errors and memory.

    python bench/bench_serve.py runs/recipe/recipe-s1-full                 # 10,000 requests
    python bench/bench_serve.py RUN --smoke --note "training in the background"   # 2,000
    python bench/bench_serve.py RUN --batching both     # micro-batching on vs off, alternating

The server runs on the given run folder (read only) in a subprocess (``miir serve``, access
log off). An asyncio client (``--client``: a lean HTTP/1.1 one by default, or httpx)
then keeps ``--concurrency`` requests in flight:

1. ``single``: ``--requests`` POST /recommend (k=10) over random catalogue histories of
   1..history_len+5 items (some are cut), one in ten malformed (an unknown id, an empty
   history, an item of the wrong type, a field of the wrong type, an unknown field, k out of
   range): each must be a 4xx, each valid one a 200;
2. ``batch64``: ``--batches`` POST /recommend/batch of 64 such (valid) histories, with
   ``--batch-concurrency`` in flight.

With ``--batching both``, two servers run (micro-batching on, and ``--no-batching``) and the
single requests are sent to them in ``--rounds`` alternating rounds (on off, off on, on
off, ...: a change in the machine's load touches both alike); each configuration gets the same
``--requests`` bodies, and the report gives each one's numbers and their ratio. The batch
phase runs on the batching server only (it is unchanged by batching).

Each phase stops early at ``--time-limit`` seconds. Recorded: throughput (requests/s over the
phase), p50/p95/p99/max latency of the 200s, the 5xx count (target 0), the 4xx count and any
answer of the wrong class, and the server's resident memory (VmRSS) after warm-up, after each
phase, and its peak (VmHWM); per configuration, the CPU seconds the server process and the
client spent per single request (steadier than latency where other work shares the
machine). Targets reported against, not asserted: p99 < 50 ms for single recommendations at
32 concurrent clients on 2 CPU cores, zero 5xx, memory flat.

Writes ``serve.json`` and ``serve.md`` atomically into ``--out`` (default bench/results),
with the command, commit, date and machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from miir.provenance import header_line, machine, run_record, write_result

ROOT = Path(__file__).resolve().parents[1]
P99_TARGET_MS = 50.0


# ---------------------------------------------------------------------- record keeping


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (/proc/<pid>/task/*/children): with ``--workers N`` the
    server is a supervisor and N worker processes."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def memory_mib(pid: int) -> dict[str, float | None]:
    """Resident (VmRSS) and peak resident (VmHWM) memory of ``pid`` and its descendants,
    summed (/proc/<pid>/status; None elsewhere)."""
    out: dict[str, float | None] = {"rss_mib": None, "peak_mib": None}
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    name = "rss_mib" if key == "VmRSS" else "peak_mib"
                    out[name] = (out[name] or 0.0) + int(value.split()[0]) / 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants so far (/proc/<pid>/stat;
    NaN elsewhere): on a loaded machine, the CPU a request costs is steadier than its
    latency."""
    total = 0.0
    for p in tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            if p == pid:
                return float("nan")
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


# ---------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    args: argparse.Namespace, log: Path, batching: bool
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "miir.cli", "serve", "--run", str(args.run), "--port", str(port),
        "--workers-threads", str(args.workers_threads), "--torch-threads", str(args.torch_threads),
        "--micro-batch", str(args.micro_batch), "--max-wait-ms", str(args.max_wait_ms),
        "--batch-threads", str(args.batch_threads), "--workers", str(args.workers),
        "--trim-seconds", str(args.trim_seconds),
        "--batching" if batching else "--no-batching", "--no-access-log",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        # every worker process up: connections made while one is still loading its model
        # all go to the others, and stay there (keep-alive)
        ready = log.read_text().count("Application startup complete") >= args.workers
        with contextlib.suppress(httpx.HTTPError):
            if ready and httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"the server did not answer /health in {args.start_timeout} s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------- requests


class Requests:
    """Seeded request bodies over the catalogue: valid histories and malformed ones."""

    def __init__(self, items: list[str], meta: dict[str, Any], seed: int) -> None:
        self.items = items
        self.rng = random.Random(seed)
        self.max_len = meta["history_len"] + 5
        self.field = next((f for f in meta["fields"] if f["kind"] == "numeric"), None) or next(
            iter(meta["fields"]), None
        )

    def history(self) -> list[str]:
        return self.rng.choices(self.items, k=self.rng.randint(1, self.max_len))

    def valid(self, imputations: bool = True) -> dict[str, Any]:
        return {"history": self.history(), "k": 10, "imputations": imputations}

    def malformed(self) -> dict[str, Any]:
        h = self.history()
        kind = self.rng.randrange(6)
        if kind == 0:
            return {"history": [*h, "no-such-item-id"], "k": 10}
        if kind == 1:
            return {"history": [], "k": 10}
        if kind == 2:
            return {"history": [*h, 12345], "k": 10}
        if kind == 3:
            return {"history": h, "k": 0}
        if kind == 4:
            return {"history": [*h, {"no_such_field": "x"}], "k": 10}
        if self.field is None:  # an ID-only model: a record is refused as such
            return {"history": [*h, {"brand": "x"}], "k": 10}
        wrong = "not-a-number" if self.field["kind"] == "numeric" else {"nested": 1}
        return {"history": [*h, {self.field["name"]: wrong}], "k": 10}

    def batch(self, size: int) -> dict[str, Any]:
        return {"histories": [self.history() for _ in range(size)], "k": 10}


Round = tuple[list[float], dict[str, int], float, int]  # latencies, counts, seconds, planned


class RawConnection:
    """A lean HTTP/1.1 client of one keep-alive connection (asyncio streams): the load
    generator shares the server's two cores, and httpx spent 1.3 ms of CPU per request
    (more than half the server's), which the server's latency then paid for. It sends a
    pre-encoded JSON body and reads a ``Content-Length`` answer (every answer of the service
    has one); a closed connection is reopened on the next request."""

    def __init__(self, url: str) -> None:
        parts = httpx.URL(url)
        self.host, self.port = parts.host, parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        """POST ``body`` to ``path``: the status code (the answer's body is read, not kept)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        try:
            self.writer.write(head + body)
            raw = await self.reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = dict(
                (k.strip().lower(), v.strip()) for k, _, v in (x.partition(":") for x in lines[1:])
            )
            if "content-length" not in headers:
                raise OSError(f"an answer without Content-Length: {lines[0]}")
            await self.reader.readexactly(int(headers["content-length"]))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            await self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def run_phase(
    url: str,
    path: str,
    bodies: list[tuple[dict[str, Any], bool]],
    concurrency: int,
    time_limit: float,
    client: str = "raw",
) -> Round:
    """Send ``bodies`` (body, is_valid) with ``concurrency`` in flight: the latencies of the
    200s, the counts per status class, the seconds taken and the requests planned. The
    bodies are encoded before the clock starts; ``client``: ``raw`` (:class:`RawConnection`)
    or ``httpx``."""
    if client == "raw":
        return await _run_raw(url, path, bodies, concurrency, time_limit)
    latencies: list[float] = []
    counts = {"2xx": 0, "4xx": 0, "5xx": 0, "other": 0, "transport_errors": 0, "wrong_class": 0}
    encoded = [(json.dumps(body).encode(), valid) for body, valid in bodies]
    queue = iter(encoded)
    # one client of one connection per worker: a shared pool of 32 connections costs the
    # client more CPU per request (it scans its connections on every event) than the server;
    # plain HTTP on loopback: no certificates to load (verify=False)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    started = time.perf_counter()
    deadline = started + time_limit

    async def worker(client: httpx.AsyncClient) -> None:
        for body, valid in queue:
            if time.perf_counter() > deadline:
                return
            t0 = time.perf_counter()
            try:
                res = await client.post(
                    path, content=body, headers={"content-type": "application/json"}
                )
            except httpx.HTTPError:
                counts["transport_errors"] += 1
                continue
            ms = (time.perf_counter() - t0) * 1000
            cls = f"{res.status_code // 100}xx"
            counts[cls if cls in counts else "other"] += 1
            if res.status_code == 200:
                latencies.append(ms)
            if (res.status_code == 200) != valid or (not valid and cls != "4xx"):
                counts["wrong_class"] += 1

    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, timeout=60, limits=limits, verify=False)
            )
            for _ in range(concurrency)
        ]
        await asyncio.gather(*(worker(client) for client in clients))
    return latencies, counts, time.perf_counter() - started, len(bodies)


async def _run_raw(
    url: str,
    path: str,
    bodies: list[tuple[dict[str, Any], bool]],
    concurrency: int,
    time_limit: float,
) -> Round:
    """:func:`run_phase` with :class:`RawConnection` clients, one per worker."""
    latencies: list[float] = []
    counts = {"2xx": 0, "4xx": 0, "5xx": 0, "other": 0, "transport_errors": 0, "wrong_class": 0}
    queue = iter([(json.dumps(body).encode(), valid) for body, valid in bodies])
    started = time.perf_counter()
    deadline = started + time_limit

    async def worker(conn: RawConnection) -> None:
        for body, valid in queue:
            if time.perf_counter() > deadline:
                break
            t0 = time.perf_counter()
            try:
                status = await conn.post(path, body)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                counts["transport_errors"] += 1
                continue
            ms = (time.perf_counter() - t0) * 1000
            cls = f"{status // 100}xx"
            counts[cls if cls in counts else "other"] += 1
            if status == 200:
                latencies.append(ms)
            if (status == 200) != valid or (not valid and cls != "4xx"):
                counts["wrong_class"] += 1
        await conn.close()

    await asyncio.gather(*(worker(RawConnection(url)) for _ in range(concurrency)))
    return latencies, counts, time.perf_counter() - started, len(bodies)


def summary(rounds: list[Round], concurrency: int) -> dict[str, Any]:
    """Throughput and latency percentiles over one or more rounds of a phase (pooled: the
    latencies of all rounds, the requests over the seconds of all rounds)."""
    latencies = [ms for r in rounds for ms in r[0]]
    counts = {c: sum(r[1][c] for r in rounds) for c in rounds[0][1]}
    seconds = sum(r[2] for r in rounds)
    planned = sum(r[3] for r in rounds)
    done = sum(counts[c] for c in ("2xx", "4xx", "5xx", "other"))
    lat = np.asarray(latencies) if latencies else np.asarray([np.nan])
    return {
        "requests": done,
        "planned": planned,
        "rounds": len(rounds),
        "stopped_by_time_limit": done + counts["transport_errors"] < planned,
        "seconds": seconds,
        "throughput_rps": done / seconds,
        "concurrency": concurrency,
        "latency_ms": {
            "p50": float(np.percentile(lat, 50)),
            "p95": float(np.percentile(lat, 95)),
            "p99": float(np.percentile(lat, 99)),
            "max": float(lat.max()),
            "mean": float(lat.mean()),
        },
        "status": counts,
    }


# ---------------------------------------------------------------------- report


def _phase_order(item: tuple[str, Any]) -> tuple[bool, bool]:
    """Single requests first (batching on before off), then the batches: the JSON file
    keeps its keys sorted, the table does not."""
    return (not item[0].startswith("single"), item[0].endswith("off"))


def markdown(rec: dict[str, Any]) -> list[str]:
    m, s = rec["machine"], rec["server"]
    title = "# HTTP service load benchmark (`miir serve`)"
    if rec["smoke"]:
        title += ": SMOKE RUN (not a result)"
    batching = {True: "on", False: "off"}
    configs = ", ".join(f"batching {batching[b]}" for b in s["batching"])
    lines = [
        title,
        "",
        f"{header_line(rec)}; {m['ram_mib']} MiB; load average before the run "
        f"{m['load_avg']}, after {rec['load_avg_after']}.",
        f"Model: {rec['model']['variant']} on {rec['model']['dataset']}, "
        f"{rec['model']['n_items']:,} items, history {rec['model']['history_len']}; run "
        f"`{rec['run']}`. Server: {s.get('workers', 1)} process(es), "
        f"{s['workers_threads']} scoring thread(s), "
        f"{s['torch_threads']} torch thread(s) each; {configs} (micro-batches of at most "
        f"{s['micro_batch']} requests, waiting at most {s['max_wait_ms']} ms, "
        f"{s.get('batch_threads', 1)} batch(es) at a time); HTTP parser "
        f"{'httptools' if s['httptools'] else 'h11 (pure Python)'}, event loop "
        f"{'uvloop' if s['uvloop'] else 'asyncio'}; the client "
        f"({s.get('client', 'httpx')}) runs on the same machine.",
        "",
        "| phase | rounds | requests | concurrency | req/s | p50 ms | p95 ms | p99 ms | max ms | "
        "2xx | 4xx | 5xx | wrong class | CPU ms/request: server, client |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in sorted(rec["phases"].items(), key=_phase_order):
        lat, st = r["latency_ms"], r["status"]
        lines.append(
            f"| {name} | {r['rounds']} | {r['requests']:,} | {r['concurrency']} | "
            f"{r['throughput_rps']:.1f} | {lat['p50']:.1f} | {lat['p95']:.1f} | "
            f"{lat['p99']:.1f} | {lat['max']:.1f} | {st['2xx']:,} | {st['4xx']:,} | "
            f"{st['5xx']} | {st['wrong_class']} | "
            + (f"{r['server_cpu_ms_per_request']:.2f}, {r['client_cpu_ms_per_request']:.2f} |"
               if "server_cpu_ms_per_request" in r else "- |")
        )  # fmt: skip
    ratio = rec.get("batching_ratio")
    if ratio:
        lines += [
            "",
            "Batching on vs off (the same bodies, in alternating rounds of the same run): "
            f"throughput x{ratio['throughput']:.2f}; p50 latency /{ratio['p50']:.2f}, "
            f"p99 latency /{ratio['p99']:.2f} (off divided by on); server CPU per request "
            f"x{ratio['server_cpu']:.2f} (on divided by off).",
        ]
    lines += ["", "Server memory (MiB, VmRSS):"]
    stages = ("start", "after_single", "end")
    for label, mem in sorted(rec["memory"].items(), key=lambda kv: kv[0].endswith("off")):
        lines.append(
            f"- {label}: "
            + ", ".join(f"{k} {mem[k]['rss_mib']:.0f}" for k in stages if mem[k]["rss_mib"])
            + (f"; peak {mem['end']['peak_mib']:.0f}" if mem["end"].get("peak_mib") else "")
        )
    for name, r in sorted(rec["phases"].items(), key=_phase_order):
        if r.get("server_rss_mib_by_round"):
            rss = ", ".join(f"{v:.0f}" for v in r["server_rss_mib_by_round"] if v is not None)
            lines.append(f"- {name}, after each round: {rss}")
    t = rec["targets"]
    lines += [
        "",
        f"Targets (reported, not asserted; {t['config']}): single p99 < {P99_TARGET_MS:.0f} ms "
        f"at 32 concurrent clients on 2 cores: {t['p99_single_ms']:.1f} ms "
        f"({'met' if t['p99_met'] else 'NOT met'}); zero 5xx: {t['total_5xx']} "
        f"({'met' if t['total_5xx'] == 0 else 'NOT met'}); memory growth over the run: "
        f"{t['rss_growth_mib']:+.0f} MiB (start: after one warm-up request); over the last "
        "round of each phase: "
        + ", ".join(
            f"{name} {v:+.0f} MiB"
            for name, v in (t.get("rss_last_round_mib") or {}).items()
            if v is not None
        )
        + ".",
        "",
        "Single requests: POST /recommend, k=10"
        + (" with imputed fields (one model pass)" if s["imputations"] else ", no imputations")
        + ", random catalogue histories of 1 to "
        "history_len+5 items, one in ten malformed (each must be a 4xx). Batches: POST "
        "/recommend/batch of 64 valid histories. Latencies are of the 200 answers, measured "
        "by the client. " + (rec.get("note") or ""),
    ]
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, nargs="?", default=ROOT / "runs/recipe/recipe-s1-full")
    ap.add_argument("--requests", type=int, default=10_000, help="Single requests per config.")
    ap.add_argument("--batches", type=int, default=200, help="Batch-of-64 requests to send.")
    ap.add_argument("--concurrency", type=int, default=32, help="Single requests in flight.")
    ap.add_argument("--batch-concurrency", type=int, default=4, help="Batches in flight.")
    ap.add_argument("--time-limit", type=float, default=600, help="Seconds per phase, at most.")
    ap.add_argument("--workers-threads", type=int, default=2, help="Server scoring threads.")
    ap.add_argument("--workers", type=int, default=2, help="Server processes (one per core).")
    ap.add_argument(
        "--trim-seconds", type=float, default=1.0, help="Server's malloc_trim period (0: off)."
    )
    ap.add_argument("--torch-threads", type=int, default=1, help="torch threads per call.")
    ap.add_argument(
        "--batching",
        choices=("on", "off", "both"),
        default="on",
        help="Micro-batching of /recommend in the server; both: on vs off, alternating.",
    )
    ap.add_argument("--rounds", type=int, default=4, help="Alternating rounds per config.")
    ap.add_argument("--micro-batch", type=int, default=64, help="Requests per coalesced pass.")
    ap.add_argument("--max-wait-ms", type=float, default=2.0, help="Wait for batch-mates.")
    ap.add_argument("--batch-threads", type=int, default=1, help="Batches scored at once.")
    ap.add_argument("--start-timeout", type=float, default=180)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--imputations",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Single requests ask for MIIR's imputed fields (the default).",
    )
    ap.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="The load generator: a lean HTTP/1.1 keep-alive client (default) or httpx.",
    )
    ap.add_argument("--smoke", action="store_true", help="2,000 requests, 20 batches; labelled.")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--note", default="", help="A sentence for the Markdown (e.g. the load).")
    args = ap.parse_args(argv)
    if args.smoke:
        args.requests, args.batches = min(args.requests, 2000), min(args.batches, 20)
    if args.batching != "both":
        args.rounds = 1
    return args


def measure(
    args: argparse.Namespace, servers: dict[bool, tuple[subprocess.Popen, str]], items: list[str]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The phases on the running servers: the single requests in alternating rounds, then
    the batches (on the first server); the metadata, phases and memory readings."""
    first = next(iter(servers.values()))
    meta = httpx.get(f"{first[1]}/metadata", timeout=10).json()
    gen = Requests(items, meta, args.seed)
    singles = [
        (gen.malformed(), False) if n % 10 == 9 else (gen.valid(args.imputations), True)
        for n in range(args.requests)
    ]
    batches = [(gen.batch(64), True) for _ in range(args.batches)]
    label = {b: f"batching {'on' if b else 'off'}" for b in servers}
    memory = {label[b]: {"start": memory_mib(p.pid)} for b, (p, _) in servers.items()}
    rounds: dict[bool, list[Round]] = {b: [] for b in servers}
    cpu = dict.fromkeys(servers, 0.0)
    client_cpu = dict.fromkeys(servers, 0.0)
    rss_by_round: dict[bool, list[float | None]] = {b: [] for b in servers}
    size = math.ceil(len(singles) / args.rounds)
    for n, start in enumerate(range(0, len(singles), size)):
        order = list(servers.items())
        for b, (proc, url) in order[::-1] if n % 2 else order:  # the same bodies; ABBA order
            part = singles[start : start + size]
            limit = args.time_limit / args.rounds
            before, client_before = cpu_seconds(proc.pid), time.process_time()
            rounds[b].append(asyncio.run(run_phase(url, "/recommend", part, args.concurrency,
                                                   limit, args.client)))  # fmt: skip
            cpu[b] += cpu_seconds(proc.pid) - before
            client_cpu[b] += time.process_time() - client_before
            rss_by_round[b].append(memory_mib(proc.pid)["rss_mib"])
    phases = {}
    for b, r in rounds.items():
        phase = summary(r, args.concurrency)
        phase["server_cpu_ms_per_request"] = 1000 * cpu[b] / max(1, phase["requests"])
        phase["client_cpu_ms_per_request"] = 1000 * client_cpu[b] / max(1, phase["requests"])
        phase["server_rss_mib_by_round"] = rss_by_round[b]
        phases[f"single, {label[b]}" if len(servers) > 1 else "single"] = phase
    for b, (proc, _) in servers.items():
        memory[label[b]]["after_single"] = memory_mib(proc.pid)
    proc, url = first
    batch_rounds, batch_rss = [], []
    size = math.ceil(len(batches) / args.rounds)
    for start in range(0, len(batches), size):  # in rounds: is memory flat from one to the next?
        part = batches[start : start + size]
        limit = args.time_limit / args.rounds
        batch_rounds.append(asyncio.run(run_phase(url, "/recommend/batch", part,
                                                  args.batch_concurrency, limit, args.client)))  # fmt: skip
        batch_rss.append(memory_mib(proc.pid)["rss_mib"])
    phases["batch64"] = summary(batch_rounds, args.batch_concurrency)
    phases["batch64"]["server_rss_mib_by_round"] = batch_rss
    for b, (proc, _) in servers.items():
        memory[label[b]]["end"] = memory_mib(proc.pid)
    return meta, phases, memory


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    meta_ckpt = json.loads((args.run / "best" / "model.json").read_text())
    items = meta_ckpt["catalogue"]["item_names"][2:]  # after <pad> and <missing>
    host_machine = machine()  # before the server loads: the load average of the machine itself
    configs = {"on": [True], "off": [False], "both": [True, False]}[args.batching]

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        servers: dict[bool, tuple[subprocess.Popen, str]] = {}
        for b in configs:
            servers[b] = start_server(args, Path(tmp) / f"server-{b}.log", b)
            stack.callback(stop_server, servers[b][0])
        meta, phases, memory = measure(args, servers, items)
        alive = all(
            httpx.get(f"{url}/health", timeout=10).status_code == 200 for _, url in servers.values()
        )

    main_phase = "single, batching on" if args.batching == "both" else "single"
    p99 = phases[main_phase]["latency_ms"]["p99"]
    first = next(iter(memory.values()))
    rss = [v["rss_mib"] for v in first.values() if v["rss_mib"] is not None]
    ratio = None
    if args.batching == "both":
        on, off = phases["single, batching on"], phases["single, batching off"]
        ratio = {
            "throughput": on["throughput_rps"] / off["throughput_rps"],
            **{q: off["latency_ms"][q] / on["latency_ms"][q] for q in ("p50", "p95", "p99")},
            "server_cpu": on["server_cpu_ms_per_request"] / off["server_cpu_ms_per_request"],
        }
    rec = run_record(
        benchmark="serve",
        smoke=args.smoke,
        machine=host_machine,
        load_avg_after=machine()["load_avg"],
        run=str(args.run),
        model={k: meta[k] for k in ("model", "variant", "dataset", "n_items", "history_len")},
        server={
            "workers_threads": args.workers_threads,
            "torch_threads": args.torch_threads,
            "imputations": args.imputations,
            "batching": configs,
            "micro_batch": args.micro_batch,
            "max_wait_ms": args.max_wait_ms,
            "batch_threads": args.batch_threads,
            "workers": args.workers,
            "trim_seconds": args.trim_seconds,
            "client": args.client,
            **{m: importlib.util.find_spec(m) is not None for m in ("httptools", "uvloop")},
        },
        phases=phases,
        batching_ratio=ratio,
        memory=memory,
        alive_after=alive,
        targets={
            "config": main_phase,
            "p99_single_ms": p99,
            "p99_met": p99 < P99_TARGET_MS,
            "total_5xx": sum(p["status"]["5xx"] for p in phases.values()),
            "rss_growth_mib": (rss[-1] - rss[0]) if len(rss) > 1 else float("nan"),
            # flat once warm: the growth over the last round of each phase
            "rss_last_round_mib": {
                name: (r[-1] - r[-2]) if len(r) > 1 and None not in r[-2:] else None
                for name, p in phases.items()
                if (r := p.get("server_rss_mib_by_round"))
            },
        },
        note=args.note,
    )
    write_result(args.out, "serve", rec, markdown(rec))
    print(f"wrote {args.out / 'serve.json'} and {args.out / 'serve.md'}")


if __name__ == "__main__":
    main()
