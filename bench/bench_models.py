"""Training speed of every registered model on amazon-beauty: our batches against padded ones.

    python bench/bench_models.py [--models miir sasrec ...] [--steps 20 --rounds 3] [--epoch]
    python bench/bench_models.py --quick --epoch        # smoke test, into a temporary folder

Each model (default: ``miir``, ``miir-r`` and every other registered model that is not a MIIR
variant, i.e. the baselines; ``--models all``: every registered name) runs at its default
config except e = 64, with the fields categories, brand and title where it reads side fields,
batch 128, in a child process of its own (so that its peak RSS is its own and a failing model
does not stop the others). Measured per model:

- seconds per training step of two formulations of the same model object, timed in
  interleaved rounds (their order alternating) on the same uniformly random batches:
  ``ours``, the step as ``miir train`` runs it (the batch transform of
  :class:`~miir.training.module.SequenceModule` for ``--batching packed``: windows packed into
  shared rows where the model's ``batch_mode`` is 'packed', else the padding a batch shares
  cut; the fast dropout of :mod:`miir.models.layers`), and ``padded``, a straightforward
  formulation (every batch at full width, ``make_batch(items, 'none')``, and
  ``torch.nn.functional.dropout`` in place of the fast dropout: ``layers._Dropout.apply`` is
  swapped, which every caller of ``layers.dropout`` goes through however it imported it).
  Both run under the precision ``miir train --precision auto`` picks on this machine (or
  ``--precision``), with Adam at ``TrainConfig``'s learning rate and its gradient clipping.
  s/step is the median over rounds of the mean step time; the speed-up the median over rounds
  of padded / ours;
- with ``--epoch``: one real epoch of ours through the Lightning trainer (``miir train``'s data
  loader, ``SequenceModule``, packed batching): seconds and sequences per second;
- the peak resident memory of the model's process.

Records the command, the commit, the date and :func:`miir.runtime.machine_info`; writes
``bench/results/models.json`` and ``bench/results/models.md`` atomically (``--quick``: into a
temporary folder unless ``--out`` is given; its numbers are not results).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import miir.models.layers as layers
from miir.data.artifact import Artifact
from miir.errors import MiirError
from miir.models import REGISTRY, get_entry, model_config
from miir.models.batch import make_batch
from miir.models.miir import MIIR
from miir.runtime import keep_freed_memory, resolve_precision
from miir.training.data import training_windows
from miir.training.module import SequenceModule
from miir.training.train import TrainConfig, build_model, quiet_lightning, training_loader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import EpochTimer, epoch_trainer  # noqa: E402
from miir.provenance import header_line, run_record, write_result  # noqa: E402

FIELDS = ("categories", "brand", "title")
EMBEDDING_SIZE = 64


def default_models() -> list[str]:
    """``miir``, ``miir-r`` and every registered model that is not a MIIR variant."""
    return [n for n, e in REGISTRY.items() if e.cls is not MIIR or n in ("miir", "miir-r")]


def bench_config(name: str):
    """The model's default config (its preset included) with e = 64 and, for a model that reads
    side fields, the fields categories, brand and title."""
    overrides: dict[str, Any] = {"embedding_size": EMBEDDING_SIZE}
    if "fields" in get_entry(name).cls.Config.model_fields:
        overrides["fields"] = FIELDS
    return model_config(name, overrides)


@contextlib.contextmanager
def torch_dropout(enabled: bool):
    """Within the block, the fast dropout of :mod:`miir.models.layers` is ``F.dropout``."""
    if not enabled:
        yield
        return
    fast = layers._Dropout.apply
    layers._Dropout.apply = lambda x, p: F.dropout(x, p, True)
    try:
        yield
    finally:
        layers._Dropout.apply = fast


def make_step(model, mode: str, bf16: bool, cfg: TrainConfig, padded: bool):
    """A training step of ``model`` on (B, max_len) windows: batch transform ``mode``, masks
    drawn by the model from a seeded generator, Adam, gradient clipping by value."""
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    gen = torch.Generator().manual_seed(1)
    max_len = model.config.max_len

    def step(items: torch.Tensor) -> tuple[float, int]:
        rows = make_batch(items, mode, max_len)  # type: ignore[arg-type]
        with torch_dropout(padded):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, _ = model.loss(rows, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_value_(params, cfg.grad_clip)
        opt.step()
        return float(loss.detach()), rows.items.numel()

    return step


def timed(step, batches: list[torch.Tensor]) -> tuple[list[float], list[int]]:
    seconds, tokens = [], []
    for b in batches:
        t = time.perf_counter()
        _, n = step(b)
        seconds.append(time.perf_counter() - t)
        tokens.append(n)
    return seconds, tokens


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def lightning_epoch(
    artifact: Artifact, name: str, windows: torch.Tensor, cfg: TrainConfig, bf16: bool, limit
) -> dict:
    """One epoch of a fresh model through the Lightning trainer as ``miir train`` sets it up
    (its first ``limit`` batches only, in a quick run)."""
    torch.manual_seed(cfg.seed)
    model = build_model(artifact, bench_config(name), name)
    loader = training_loader(windows, cfg)
    timer = EpochTimer()
    trainer = epoch_trainer(timer, cfg.grad_clip, limit, deterministic=True)
    module = SequenceModule(model, lr=cfg.lr, seed=cfg.seed, bf16=bf16, batching=cfg.batching)
    trainer.fit(module, loader)
    steps = min(len(loader), limit or len(loader))
    sequences = min(len(windows), steps * cfg.batch_size)
    return {
        "seconds": timer.seconds[0],
        "steps": steps,
        "full_epoch": steps == len(loader),
        "sequences": sequences,
        "sequences_per_second": sequences / timer.seconds[0],
        "batching": cfg.batching,
        "batch_mode": module.mode,
    }


def bench_model(args: argparse.Namespace) -> dict:
    """The measurements of one model (run in its own process)."""
    keep_freed_memory()
    quiet_lightning()
    name = args.child
    bf16 = resolve_precision(args.precision, "cpu") == "bf16"
    cfg = TrainConfig(batch_size=args.batch, seed=0, batching="packed")
    artifact = Artifact(args.data)
    config = bench_config(name)
    torch.manual_seed(cfg.seed)
    model = build_model(artifact, config, name)
    model.train()
    # the batch transform `miir train --batching packed` applies to this model
    mode = SequenceModule(model, lr=cfg.lr, seed=cfg.seed, batching=cfg.batching).mode
    windows = training_windows(artifact, config.max_len)
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(0))
    batches = [windows[b] for b in order.split(args.batch)]
    batches = [b for b in batches if len(b) == args.batch]  # full batches only
    need = args.steps * args.rounds + 2
    if need > len(batches):
        raise SystemExit(f"--steps x --rounds + 2 warm-up exceeds the {len(batches)} batches")
    warm = batches[-2:]
    rounds = [batches[r * args.steps : (r + 1) * args.steps] for r in range(args.rounds)]
    forms = {"ours": (mode, False), "padded": ("none", True)}
    steppers = {k: make_step(model, m, bf16, cfg, padded) for k, (m, padded) in forms.items()}
    for k in forms:
        timed(steppers[k], warm)
    means: dict[str, list[float]] = {k: [] for k in forms}
    tokens: dict[str, list[int]] = {k: [] for k in forms}
    for r, batch_list in enumerate(rounds):
        for k in forms if r % 2 == 0 else reversed(forms):
            t, n = timed(steppers[k], batch_list)
            means[k].append(statistics.fmean(t))
            tokens[k] += n
        print(
            f"{name} round {r}: ours {means['ours'][-1]:.3f} s, padded {means['padded'][-1]:.3f} s",
            file=sys.stderr,
            flush=True,
        )
    rss_steps = peak_rss_mib()
    out: dict[str, Any] = {
        "model": name,
        "class": type(model).__name__,
        "display_name": model.display_name(),
        "stage": model.stage,
        "batch_mode": mode,
        "uses_side_info": type(model).uses_side_info,
        "config": config.model_dump(mode="json"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "windows": len(windows),
        "steps_per_epoch": -(-len(windows) // args.batch),
        "precision": "bf16" if bf16 else "32-true",
    }
    for k, (m, padded) in forms.items():
        s = statistics.median(means[k])
        out[k] = {
            "batch": m,
            "dropout": "F.dropout" if padded else "fast",
            "step_seconds": s,
            "step_seconds_per_round": means[k],
            "sequences_per_second": args.batch / s,
            "tokens_per_batch": statistics.fmean(tokens[k]),
        }
    out["speedup"] = statistics.median(
        p / o for p, o in zip(means["padded"], means["ours"], strict=True)
    )
    out["peak_rss_mib_steps"] = rss_steps
    if args.epoch:
        limit = 3 if args.quick else None
        out["lightning_epoch"] = lightning_epoch(artifact, name, windows, cfg, bf16, limit)
        print(f"{name} epoch: {out['lightning_epoch']['seconds']:.1f} s", file=sys.stderr)
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def run_child(name: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, __file__, "--child", name, "--data", args.data, "--batch", str(args.batch),
        "--steps", str(args.steps), "--rounds", str(args.rounds), "--precision", args.precision,
        *(["--epoch"] if args.epoch else []), *(["--quick"] if args.quick else []),
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    sys.stderr.write(proc.stderr[-4000:] if proc.returncode else "")
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        return {"model": name, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    result = json.loads(lines[-1])
    result["process_seconds"] = time.perf_counter() - started
    return result


def markdown(result: dict) -> list[str]:
    s = result["setup"]
    md = [
        "# Training speed of every model (amazon-beauty, batch 128, e = 64)",
        "",
        *(["**Quick smoke run (`--quick`): too few steps to be a measurement.**", ""]
          if s["quick"] else []),
        f"{header_line(result)}.",
        f"Each model at its default config except e = {EMBEDDING_SIZE}; side-information models "
        f"read {', '.join(FIELDS)} (besides the item ID). Precision {s['precision']} "
        f"(`--precision {s['precision_option']}`). Each of {s['rounds']} interleaved rounds "
        f"times both formulations of the same model object on the same {s['steps']} uniformly "
        f"random batches of {s['batch']}: **ours** as `miir train` runs it (packed rows where the "
        "model's batch mode is `packed`, else the shared padding cut; the fast dropout) and "
        "**padded** (full-width padded batches, `F.dropout`). s/step is the median over rounds "
        "of the mean step time, the speed-up the median over rounds of padded / ours; tokens "
        "are item slots per batch (rows x width).",
        "",
        "| model | class | batch mode | ours s/step | padded s/step | speed-up | ours seq/s | "
        "tokens ours / padded | epoch s | epoch seq/s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, r in result["models"].items():
        if "error" in r:
            error = r["error"].replace("|", "/")
            md.append(f"| {name} | failed: {error} |" + " |" * 9)
            continue
        ep = r.get("lightning_epoch")
        epoch = (
            (f"{ep['seconds']:.1f}" + ("" if ep["full_epoch"] else f" ({ep['steps']} batches)"),
             f"{ep['sequences_per_second']:.0f}")
            if ep else ("-", "-")
        )  # fmt: skip
        o, p = r["ours"], r["padded"]
        md.append(
            f"| {name} | {r['display_name']} | {r['batch_mode']} | {o['step_seconds']:.3f} | "
            f"{p['step_seconds']:.3f} | {r['speedup']:.2f}x | {o['sequences_per_second']:.0f} | "
            f"{o['tokens_per_batch']:.0f} / {p['tokens_per_batch']:.0f} | {epoch[0]} | "
            f"{epoch[1]} | {r['peak_rss_mib']:.0f} |"
        )
    md += [
        "",
        "Epoch: one real epoch of ours through the Lightning trainer with `miir train`'s data "
        "loader and module (`--epoch`; '-' when not run). Peak RSS: the model's own process "
        "(timing and epoch).",
    ]
    return md


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(ROOT / "artifacts" / "beauty"))
    ap.add_argument(
        "--models",
        nargs="+",
        help="Registered names, or 'all' (default: miir, miir-r and the baselines).",
    )
    ap.add_argument("--steps", type=int, default=20, help="Timed steps per formulation and round.")
    ap.add_argument("--rounds", type=int, default=3, help="Interleaved rounds.")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "32-true", "bf16"],
        help="As `miir train --precision` (auto: bf16 where the CPU runs it natively).",
    )
    ap.add_argument("--epoch", action="store_true", help="Also one real Lightning epoch each.")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="Smoke test: 2 steps x 1 round, epochs cut to 3 batches, into a temporary folder "
        "unless --out is given.",
    )
    ap.add_argument(
        "--out", help="Results folder (default: bench/results; with --quick: a temporary one)."
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rounds = 2, 1
    if args.child:
        print(json.dumps(bench_model(args)), flush=True)
        return
    try:
        if not args.models:
            names = default_models()
        elif args.models == ["all"]:
            names = list(REGISTRY)
        else:
            names = [get_entry(n).name for n in args.models]
    except MiirError as exc:
        raise SystemExit(str(exc)) from None
    out = Path(
        args.out
        or (tempfile.mkdtemp(prefix="bench-models-") if args.quick else ROOT / "bench" / "results")
    )
    models: dict[str, dict] = {}
    for name in names:
        print(f"== {name}", flush=True)
        models[name] = run_child(name, args)
        r = models[name]
        if "error" in r:
            print(f"{name}: FAILED: {r['error']}", flush=True)
        else:
            print(
                f"{name}: ours {r['ours']['step_seconds']:.3f} s/step, padded "
                f"{r['padded']['step_seconds']:.3f} s/step, {r['speedup']:.2f}x, "
                f"peak RSS {r['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
    result = run_record(
        benchmark="models",
        setup={
            "artifact": Path(args.data).name,
            "fields": list(FIELDS),
            "embedding_size": EMBEDDING_SIZE,
            "batch": args.batch,
            "steps": args.steps,
            "rounds": args.rounds,
            "precision_option": args.precision,
            "precision": resolve_precision(args.precision, "cpu"),
            "epoch": args.epoch,
            "quick": args.quick,
            "registered": list(REGISTRY),
        },
        models=models,
    )
    write_result(out, "models", result, markdown(result))
    print(f"wrote {out / 'models.json'} and {out / 'models.md'}")
    if any("error" in r for r in models.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
