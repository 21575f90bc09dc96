"""Benchmark MIIR training and evaluation speed on a prepared artifact (amazon-beauty).

    python bench/bench_train.py --data artifacts/beauty [--steps 40 --rounds 3]

Measures, at the paper's hyper-parameters (e = 64, 4 heads, 3 layers, dropout 0.5, p = 0.5,
batch 128, max length 20) with the fields ID, categories, brand and title:

- seconds per training step of three formulations, timed in interleaved rounds in one process
  on the same batches (the machine is shared and noisy, so the comparison is a ratio measured
  side by side): ``naive`` (a straightforward formulation kept here for this purpose: a plain
  ``nn.TransformerEncoder``, ``F.dropout``, item logits at every position, every batch padded
  to the full width), ``ours-fp32`` (:class:`miir.models.miir.MIIR` as ``miir train`` runs it:
  a batch's windows packed into shared rows, logits only where a field is masked, fused QKV,
  the fast dropout) and ``ours-bf16`` (the same under bfloat16 autocast); plus
  ``ours-fp32-buckets`` (batches of similar lengths, shared padding cut),
  ``ours-fp32-padded`` (uniformly random batches, shared padding cut: almost none) and
  ``ours-torch-dropout`` (ours with ``F.dropout``) to isolate those effects;
- that the naive and our formulation compute the same loss (dropout off, same batch and mask),
  on a packed batch and on a batch whose padding ours cuts;
- FLOPs of one training step (``torch.utils.flop_counter``) and the achieved fraction of this
  machine's measured float32 / bfloat16 matrix-multiply rate;
- the effect of keeping freed memory in glibc malloc (:mod:`miir.runtime`, on everywhere else
  in this script and in ``miir train``): child processes with and without it, alternated;
- one real epoch through the Lightning trainer with ``miir train``'s data loader and module
  (packed in fp32 and bf16, buckets and padded in fp32), sequences per second;
- evaluation time of the validation split under every protocol (sampled, full, full_masked;
  users in order of history length, as ``evaluate_scores`` does, and in row order);
- peak resident memory of the process; the machine (:func:`miir.runtime.machine_info`: the CPU
  flags that decide whether bf16 is native), the commit and the command.

Writes ``bench/results/train.json`` and ``bench/results/train.md`` (atomically). ``--quick``
runs every part briefly into a temporary folder (a smoke test; its numbers are not results).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import miir.models.layers as layers
from miir.data.artifact import Artifact
from miir.data.schema import FIRST_VALUE_ID, FieldKind
from miir.evaluation.evaluate import PROTOCOLS, ProtocolRanks, evaluate_scores
from miir.models import model_config
from miir.models.batch import pack_windows, trim_left_padding
from miir.models.fields import ID_FIELD
from miir.models.masking import Masked, mii_mask
from miir.models.miir import MIIR
from miir.provenance import header_line, run_record, write_result
from miir.runtime import keep_freed_memory
from miir.training.data import LengthBuckets, eval_rows, row_lengths, training_windows
from miir.training.module import SequenceModule
from miir.training.train import TrainConfig, build_model, quiet_lightning, training_loader

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("categories", "brand", "title")


class NaiveMIIR(nn.Module):
    """The straightforward formulation: same embeddings and heads (shared with ``model``),
    ``nn.TransformerEncoder`` with weights copied from ``model``, every head at every position;
    the loss weighs and averages as ``model``'s config says (``field_weights``, ``loss_mean``)."""

    def __init__(self, model: MIIR) -> None:
        super().__init__()
        self.m = model
        cfg = model.config
        e = cfg.embedding_size
        layer = nn.TransformerEncoderLayer(
            e,
            cfg.n_heads,
            4 * e,
            cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=False,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        with torch.no_grad():
            for ours, theirs in zip(model.blocks, self.encoder.layers, strict=True):
                theirs.self_attn.in_proj_weight.copy_(ours.qkv.weight)
                theirs.self_attn.in_proj_bias.copy_(ours.qkv.bias)
                theirs.self_attn.out_proj.weight.copy_(ours.proj.weight)
                theirs.self_attn.out_proj.bias.copy_(ours.proj.bias)
                for a, b in (
                    ("linear1", "ff1"),
                    ("linear2", "ff2"),
                    ("norm1", "ln1"),
                    ("norm2", "ln2"),
                ):
                    getattr(theirs, a).load_state_dict(getattr(ours, b).state_dict())

    def loss(self, items: torch.Tensor, masked: Masked) -> torch.Tensor:
        m = self.m
        enc = m.encoder
        present = m.present(items)  # (B, n, F)
        x = F.dropout(m.embed(items, present & ~masked.hidden), m.config.dropout, self.training)
        B, n, Fn, e = x.shape
        pad = (items == 0)[..., None].expand(B, n, Fn).reshape(B, n * Fn)  # (B, T)
        out = self.encoder(x.reshape(B, n * Fn, e), src_key_padding_mask=pad).view(B, n, Fn, e)
        tgt = masked.targets.float()  # (B, n, F)
        names = [ID_FIELD, *(field.name for field in m.fields)]
        weight = [m.config.field_weights.get(name, 1.0) for name in names]
        logits = out[..., 0, :] @ m.item_emb.weight[FIRST_VALUE_ID:].T  # (B, n, N): every position
        ids = (items - FIRST_VALUE_ID).clamp(min=0)
        ce = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
        total = weight[0] * (ce * tgt[..., 0]).sum(-1)
        for j, f in enumerate(m.fields, start=1):
            h = out[..., j, :]  # (B, n, e)
            codec, vals = enc.codecs[f.name], enc.features.values(f.name, items)
            if f.kind == FieldKind.TEXT:
                per = ((codec.out(h) - vals) ** 2).sum(-1)
            elif f.kind == FieldKind.MULTI_CATEGORICAL:
                lg = h @ codec.table.weight[FIRST_VALUE_ID:].T  # (B, n, V)
                hot = codec.multi_hot(vals, lg)
                bce = F.binary_cross_entropy_with_logits(lg, hot, reduction="none")
                per = (  # Eq. 11's mean over the values, or per true value
                    bce.mean(-1) if codec.norm == "mean" else bce.sum(-1) / hot.sum(-1).clamp(min=1)
                )
            else:
                lg = h @ codec.table.weight[FIRST_VALUE_ID:].T  # (B, n, V)
                truth = (vals - FIRST_VALUE_ID).clamp(min=0)
                per = F.cross_entropy(lg.transpose(1, 2), truth, reduction="none")
            total = total + weight[j] * (per * tgt[..., j]).sum(-1)
        n_items = (items >= FIRST_VALUE_ID).sum(-1).clamp(min=1).float()
        if m.config.loss_mean == "item":  # the batch's sums over its number of items
            return total.sum() / n_items.sum()
        return (total / n_items).mean()  # Eq. 13: per sequence, then the mean


def miir_model(artifact: Artifact) -> MIIR:
    """MIIR's bidirectional MII formulation (the one the naive formulation reproduces, loss for
    loss) over ID, categories, brand, title; `bench/bench_default_cost.py` times the default's
    causal + next-item step beside it."""
    config = {"fields": FIELDS, "causal": False}
    return build_model(artifact, model_config("miir", config), "miir")


def matmul_rate(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def prepare(items: torch.Tensor, batching: str, max_len: int):
    """A batch as ``miir train`` feeds it to the model: packed, or with its shared padding cut."""
    if batching == "packed":
        return pack_windows(items, max_len)
    return trim_left_padding(items), None


def prepared_with_mask(items: torch.Tensor, masked: Masked, batching: str, max_len: int):
    """:func:`prepare`, with ``masked`` (drawn on the padded ``items``) moved along: the
    batch, its masks and its packing (None unless packed), as our formulation takes them."""
    ours, packing = prepare(items, batching, max_len)
    if packing is not None:
        return ours, Masked(packing.move(masked.hidden), packing.move(masked.targets)), packing
    cut = items.shape[1] - ours.shape[1]
    return ours, Masked(masked.hidden[:, cut:], masked.targets[:, cut:]), None


def make_step(kind: str, model: MIIR, naive: NaiveMIIR, windows: torch.Tensor, batching: str):
    """A training step of ``kind`` on a batch of row indices, prepared by ``batching``
    ('packed', 'buckets' or 'random', as in ``miir train``); the naive formulation always runs
    the padded batch at full width."""
    params = list(naive.parameters()) if kind == "naive" else list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def step(batch: torch.Tensor) -> float:
        items, packing = windows[batch], None
        if kind != "naive":
            items, packing = prepare(items, batching, model.config.max_len)
        masked = mii_mask(model.present(items), 0.5, generator=gen)
        if kind == "naive":
            loss = naive.loss(items, masked)
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind == "ours-bf16"):
                loss, _ = model.masked_loss(items, masked, packing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in params:
            if p.grad is not None:
                p.grad.clamp_(-5, 5)
        opt.step()
        return float(loss.detach())

    return step


def timed(step, batches: list[torch.Tensor]) -> list[float]:
    out = []
    for b in batches:
        t = time.perf_counter()
        step(b)
        out.append(time.perf_counter() - t)
    return out


class EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.t = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self.t)


def epoch_trainer(
    timer: EpochTimer, grad_clip: float, limit_batches: int | None, **options
) -> L.Trainer:
    """A Lightning trainer for one timed epoch on the CPU, clipping gradients as ``miir train``
    does, without validation, checkpoints, logger or progress bar (its first ``limit_batches``
    batches only, when given); ``options`` go to ``L.Trainer`` too."""
    return L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        gradient_clip_val=grad_clip,
        gradient_clip_algorithm="value",
        callbacks=[timer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        limit_train_batches=limit_batches,
        num_sanity_val_steps=0,
        **options,
    )


def lightning_epoch(
    artifact: Artifact, bf16: bool, batch: int, batching: str, limit_batches: int | None = None
) -> dict:
    """One epoch through the Lightning trainer with ``miir train``'s own data loader (its first
    ``limit_batches`` batches only, in a quick run)."""
    torch.manual_seed(0)
    model = miir_model(artifact)
    windows = training_windows(artifact, model.config.max_len)
    loader = training_loader(windows, TrainConfig(batch_size=batch, seed=0, batching=batching))
    timer = EpochTimer()
    trainer = epoch_trainer(timer, 5.0, limit_batches)
    module = SequenceModule(model, lr=1e-4, seed=0, bf16=bf16, batching=batching)
    trainer.fit(module, loader)
    steps = min(len(loader), limit_batches or len(loader))
    sequences = min(len(windows), steps * batch)
    return {
        "seconds": timer.seconds[0],
        "sequences": sequences,
        "sequences_per_second": sequences / timer.seconds[0],
        "steps": steps,
        "batching": batching,
    }


def child_steps(data: str, batch: int, steps: int) -> None:
    """Child process of the allocator comparison: time ours-fp32 and ours-bf16 steps in this
    process (malloc tuned or not, by MIIR_MALLOC_TUNING) and print one JSON line."""
    tuned = keep_freed_memory()
    artifact = Artifact(data)
    torch.manual_seed(0)
    model = miir_model(artifact)
    windows = training_windows(artifact, model.config.max_len)
    batches = list(
        torch.randperm(len(windows), generator=torch.Generator().manual_seed(0)).split(batch)
    )
    out: dict = {"tuned": tuned}
    for kind in ("ours-fp32", "ours-bf16"):
        step = make_step(kind, model, None, windows, "packed")  # type: ignore[arg-type]
        timed(step, batches[-5:])  # warm-up: glibc settles within a few steps
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t = timed(step, batches[:steps])
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        out[kind] = {
            "step_seconds_mean": statistics.fmean(t),
            "system_seconds_per_step": (r1.ru_stime - r0.ru_stime) / steps,
            "user_seconds_per_step": (r1.ru_utime - r0.ru_utime) / steps,
            "page_faults_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
        }
    print(json.dumps(out), flush=True)


def allocator_comparison(data: str, batch: int, steps: int, rounds: int) -> dict:
    """The effect of :func:`miir.runtime.keep_freed_memory`: child processes with and without
    it, alternated in ``rounds`` (malloc settings are per process)."""
    runs: dict[str, list[dict]] = {"tuned": [], "untuned": []}
    for r in range(rounds):
        for name, flag in (("tuned", "1"), ("untuned", "0")):
            proc = subprocess.run(
                [sys.executable, __file__, "--data", data, "--batch", str(batch),
                 "--child-steps", str(steps)],
                env={**os.environ, "MIIR_MALLOC_TUNING": flag, "PYTHONWARNINGS": "ignore"},
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"allocator round {r}: " + ", ".join(
            f"{n} {runs[n][-1]['ours-fp32']['step_seconds_mean']:.3f}s" for n in runs), flush=True)  # fmt: skip
    out: dict = {"rounds": rounds, "steps_per_child": steps, "runs": runs}
    for kind in ("ours-fp32", "ours-bf16"):
        keys = ("step_seconds_mean", "system_seconds_per_step", "page_faults_per_step")
        out[kind] = {
            n: {k: statistics.median(c[kind][k] for c in runs[n]) for k in keys} for n in runs
        }
        out[kind]["speedup_median_of_rounds"] = statistics.median(
            u[kind]["step_seconds_mean"] / t[kind]["step_seconds_mean"]
            for t, u in zip(runs["tuned"], runs["untuned"], strict=True)
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data",
        default=str(ROOT / "artifacts" / "beauty"),
        help="Artifact with categories, brand and title.",
    )
    ap.add_argument("--steps", type=int, default=40, help="Timed steps per variant and round.")
    ap.add_argument("--rounds", type=int, default=3, help="Interleaved rounds.")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--skip-epoch", action="store_true", help="Skip the real Lightning epochs.")
    ap.add_argument(
        "--out",
        help="Results folder (default: bench/results; with --quick: a new temporary folder).",
    )
    ap.add_argument(
        "--allocator-rounds", type=int, default=3, help="Rounds of the malloc comparison (0: skip)."
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="Smoke test of every part in a few minutes: 3 steps x 1 round, one allocator pair "
        "of 3 steps, Lightning epochs cut to 5 batches, one evaluation pass, a smaller matmul; "
        "writes to a temporary folder unless --out is given. Its numbers are not results.",
    )
    ap.add_argument("--child-steps", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_steps:
        child_steps(args.data, args.batch, args.child_steps)
        return
    if args.quick:
        args.steps, args.rounds, args.allocator_rounds = 3, 1, min(args.allocator_rounds, 1)
    out = Path(
        args.out
        or (tempfile.mkdtemp(prefix="bench-train-") if args.quick else ROOT / "bench" / "results")
    )
    epoch_batches = 5 if args.quick else None
    eval_repeats = 1 if args.quick else 3
    malloc_tuned = keep_freed_memory()
    quiet_lightning()

    artifact = Artifact(args.data)
    torch.manual_seed(0)
    model = miir_model(artifact)
    naive = NaiveMIIR(model)
    windows = training_windows(artifact, model.config.max_len)
    steps_per_epoch = -(-len(windows) // args.batch)
    # uniformly random batches (`miir train --batching packed` or `random`) and batches of
    # similar lengths (`--batching buckets`)
    shuffled = torch.randperm(len(windows), generator=torch.Generator().manual_seed(0))
    random_batches = list(shuffled.split(args.batch))
    bucketed = LengthBuckets(row_lengths(windows), args.batch, seed=0).batches()
    widths = [int(row_lengths(windows[b]).max()) for b in bucketed]
    packed_rows = [
        pack_windows(windows[b], model.config.max_len)[0].shape[0] for b in random_batches
    ]

    # same losses: dropout off, the same batch and mask; naive on the padded full-width batch,
    # ours on the batch as `miir train` prepares it (masks moved along)
    model.eval()
    naive.eval()
    same_loss = {}
    short = next(b for b, w in zip(bucketed, widths, strict=True) if w < model.config.max_len)
    for name, batch, batching in (
        ("random batch, packed", random_batches[0], "packed"),
        ("bucketed batch, padding cut", short, "buckets"),
    ):
        items = windows[batch]
        gen = torch.Generator().manual_seed(1)
        masked = mii_mask(model.present(items), 0.5, generator=gen)
        ours_items, ours_masked, packing = prepared_with_mask(
            items, masked, batching, model.config.max_len
        )
        with torch.no_grad():
            ours_loss = float(model.masked_loss(ours_items, ours_masked, packing)[0])
            naive_loss = float(naive.loss(items, masked))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16_loss = float(model.masked_loss(ours_items, ours_masked, packing)[0])
        same_loss[name] = {
            "shape": list(items.shape),
            "ours_shape": list(ours_items.shape),
            "naive": naive_loss,
            "ours": ours_loss,
            "abs_diff": abs(naive_loss - ours_loss),
            "ours_bf16": bf16_loss,
        }
        # the reference must compute our loss: otherwise the speed-ups compare different things
        assert abs(naive_loss - ours_loss) <= 1e-4 * max(1.0, abs(naive_loss)), same_loss[name]
    model.train()
    naive.train()

    rounds = [
        {"buckets": bucketed[r * args.steps : (r + 1) * args.steps],
         "random": random_batches[r * args.steps : (r + 1) * args.steps]}
        for r in range(args.rounds)
    ]  # fmt: skip
    if any(len(r["buckets"]) < args.steps for r in rounds):
        raise SystemExit(f"--steps x --rounds exceeds the {steps_per_epoch} batches of an epoch")

    # FLOPs of fp32 training steps, averaged over round 0's batches (their sizes vary)
    def count_flops(kind: str, batching: str, batches: list[torch.Tensor]) -> float:
        gen = torch.Generator().manual_seed(2)
        with FlopCounterMode(display=False) as fc:
            for b in batches:
                items, packing = windows[b], None
                if kind != "naive":
                    items, packing = prepare(items, batching, model.config.max_len)
                masked = mii_mask(model.present(items), 0.5, generator=gen)
                if kind == "naive":
                    naive.loss(items, masked).backward()
                else:
                    model.masked_loss(items, masked, packing)[0].backward()
        model.zero_grad(set_to_none=True)
        naive.zero_grad(set_to_none=True)
        return fc.get_total_flops() / len(batches)

    flops = {
        "packed": count_flops("ours", "packed", rounds[0]["random"]),
        "buckets": count_flops("ours", "buckets", rounds[0]["buckets"]),
        "random": count_flops("ours", "random", rounds[0]["random"][:3]),
        "naive": count_flops("naive", "random", rounds[0]["random"][:3]),
    }
    mm = 512 if args.quick else 2048
    rates = {
        "float32": matmul_rate(torch.float32, mm),
        "bfloat16": matmul_rate(torch.bfloat16, mm),
    }

    fast = layers._Dropout.apply

    def torch_dropout(x, p):
        return F.dropout(x, p, True)

    # variant -> (formulation, batching, batches); in a round, every variant on random batches
    # runs the same batches; `buckets` runs as many batches of similar lengths
    kinds = {
        "naive": ("naive", "random", "random"),
        "ours-fp32": ("ours-fp32", "packed", "random"),
        "ours-bf16": ("ours-bf16", "packed", "random"),
        "ours-fp32-buckets": ("ours-fp32", "buckets", "buckets"),
        "ours-fp32-padded": ("ours-fp32", "random", "random"),
        "ours-torch-dropout": ("ours-fp32", "packed", "random"),
    }
    steppers = {k: make_step(f, model, naive, windows, m) for k, (f, m, _) in kinds.items()}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    round_means: dict[str, list[float]] = {k: [] for k in kinds}
    ratios = []
    for r, batches in enumerate(rounds):
        means = {}
        for k, (_, _, order) in kinds.items():
            layers._Dropout.apply = torch_dropout if k == "ours-torch-dropout" else fast
            warm = bucketed[-3:-1] if order == "buckets" else random_batches[-3:-1]
            timed(steppers[k], warm)
            t = timed(steppers[k], batches[order])
            times[k] += t
            means[k] = statistics.fmean(t)
            round_means[k].append(means[k])
        layers._Dropout.apply = fast
        ratios.append({f"naive/{k}": means["naive"] / means[k] for k in kinds if k != "naive"})
        print(f"round {r}: " + ", ".join(f"{k} {v:.3f}s" for k, v in means.items()), flush=True)

    variants = {}
    for k, (_, batching, order) in kinds.items():
        mean = statistics.median(round_means[k])  # median over rounds of the mean step time
        rate = rates["bfloat16" if k == "ours-bf16" else "float32"]
        f = flops["naive" if k == "naive" else batching]
        variants[k] = {
            "batching": "padded, full width" if k == "naive" else batching,
            "batches": order,
            "step_seconds_mean": mean,
            "step_seconds_min": min(times[k]),
            "step_seconds_max": max(times[k]),
            "epoch_seconds_estimate": mean * steps_per_epoch,
            "sequences_per_second": args.batch / mean,
            "flops_per_step": f,
            "achieved_gflops": f / mean / 1e9,
            "fraction_of_matmul_rate": f / mean / rate,
        }
    ratio_summary = {key: statistics.median(r[key] for r in ratios) for key in ratios[0]}

    allocator = (
        allocator_comparison(args.data, args.batch, args.steps, args.allocator_rounds)
        if args.allocator_rounds
        else {}
    )

    epochs = {}
    if not args.skip_epoch:
        for name, bf16, batching in (
            ("ours-fp32", False, "packed"),
            ("ours-bf16", True, "packed"),
            ("ours-fp32-buckets", False, "buckets"),
            ("ours-fp32-padded", False, "random"),
        ):
            epochs[name] = lightning_epoch(artifact, bf16, args.batch, batching, epoch_batches)
            print(f"lightning epoch {name}: {epochs[name]['seconds']:.1f}s", flush=True)

    valid = eval_rows(artifact, "valid", model.config.max_len)
    if args.quick:  # the first 4,096 users only
        valid = dataclasses.replace(
            valid,
            **{
                k: getattr(valid, k)[:4096]
                for k in ("history", "target", "negatives", "users", "seen")
            },
        )
    model.eval()
    eval_times: dict[str, list[float]] = {"by length": [], "row order": []}
    for _ in range(eval_repeats):
        t = time.perf_counter()
        _metrics, _ = evaluate_scores(
            model.score, valid.history, valid.target, valid.negatives, valid.seen
        )
        eval_times["by length"].append(time.perf_counter() - t)
        # the same scoring in row order (mixed lengths, so little padding to cut), for the effect
        t = time.perf_counter()
        acc = ProtocolRanks()
        with torch.no_grad():
            for start in range(0, len(valid), 512):
                sl = slice(start, start + 512)
                acc.update(
                    model.score(valid.history[sl]),
                    valid.target[sl],
                    valid.negatives[sl],
                    valid.seen[sl],
                )
        eval_times["row order"].append(time.perf_counter() - t)

    result = run_record(
        benchmark="train",
        setup={
            "artifact": artifact.name,
            "fields": ["item_id", *FIELDS],
            "batch": args.batch,
            "windows": len(windows),
            "steps_per_epoch": steps_per_epoch,
            "config": model.config.model_dump(mode="json"),
            "steps_timed_per_variant": args.steps * args.rounds,
            "mean_bucketed_batch_width": statistics.fmean(widths),
            "mean_packed_rows_per_batch": statistics.fmean(packed_rows),
            "malloc_tuning": malloc_tuned,
            "quick": args.quick,
            "lightning_epoch_batches": epoch_batches or steps_per_epoch,
        },
        same_loss=same_loss,
        flops_per_step=flops,
        matmul_rate_gflops={k: v / 1e9 for k, v in rates.items()},
        variants=variants,
        speedup_median_of_rounds=ratio_summary,
        allocator=allocator,
        lightning_epoch=epochs,
        evaluation={
            "users": len(valid),
            "seconds_median": statistics.median(eval_times["by length"]),
            "seconds_median_row_order": statistics.median(eval_times["row order"]),
            "protocols": list(PROTOCOLS),
        },
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        targets={"epoch_seconds": 30, "speedup_vs_naive": 4.5},
    )
    md = [
        "# Training speed (amazon-beauty, ID + categories + brand + title, paper hyper-parameters)",
        "",
        *(
            ["**Quick smoke run (`--quick`): too few steps to be a measurement.**", ""]
            if args.quick
            else []
        ),
        f"{header_line(result)}.",
        f"{len(windows):,} training windows, {steps_per_epoch} steps of {args.batch} per epoch. "
        f"Each of {args.rounds} interleaved rounds times every variant on {args.steps} batches of an epoch: "
        "the same uniformly random batches for all but `ours-fp32-buckets`, which runs as many batches of "
        f"similar lengths (mean width {statistics.fmean(widths):.1f} of {model.config.max_len} items). "
        "Batching as in `miir train --batching`: `packed` (the default) packs a batch's windows into "
        f"shared rows ({statistics.fmean(packed_rows):.1f} rows of {model.config.max_len} per batch of "
        f"{args.batch} on average), `buckets` and `random` cut the padding a batch shares; the naive "
        "formulation runs the padded batch at full width. s/step is the median over rounds of the mean "
        "step time, the speed-up the median over rounds of the ratio.",
        "",
        "| variant | batching | s/step | epoch (est.) | seq/s | GFLOP/step | GFLOP/s | of matmul peak | speed-up vs naive |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, v in variants.items():
        sp = "1.00" if k == "naive" else f"{ratio_summary[f'naive/{k}']:.2f}"
        md.append(
            f"| {k} | {v['batching']} | {v['step_seconds_mean']:.3f} | {v['epoch_seconds_estimate']:.1f} s | {v['sequences_per_second']:.0f} | "
            f"{v['flops_per_step'] / 1e9:.2f} | {v['achieved_gflops']:.1f} | {v['fraction_of_matmul_rate']:.1%} | {sp}x |"
        )
    md += [
        "",
        f"Measured matmul rate ({mm}^3): fp32 {rates['float32'] / 1e9:.0f} GFLOP/s, bf16 {rates['bfloat16'] / 1e9:.0f} GFLOP/s.",
    ]
    for name, v in same_loss.items():
        md.append(
            f"Same loss (dropout off, same batch and mask), {name}: naive on {tuple(v['shape'])}, ours on "
            f"{tuple(v['ours_shape'])}: naive {v['naive']:.5f}, ours {v['ours']:.5f} "
            f"(|diff| {v['abs_diff']:.2e}); ours under bf16 autocast {v['ours_bf16']:.5f}."
        )
    if allocator:
        for kind in ("ours-fp32", "ours-bf16"):
            a = allocator[kind]
            md.append(
                f"glibc malloc kept freed memory (`miir.runtime.keep_freed_memory`, on in every row "
                f"above: {malloc_tuned}), {kind}: {a['untuned']['step_seconds_mean']:.3f} s/step "
                f"without, {a['tuned']['step_seconds_mean']:.3f} s with "
                f"(median of per-pair ratios {a['speedup_median_of_rounds']:.2f}x over {allocator['rounds']} alternated "
                f"process pairs; mean step time over the same packed random batches); system time {1e3 * a['untuned']['system_seconds_per_step']:.0f} -> "
                f"{1e3 * a['tuned']['system_seconds_per_step']:.0f} ms/step, page faults "
                f"{a['untuned']['page_faults_per_step']:.0f} -> {a['tuned']['page_faults_per_step']:.0f} per step."
            )
    for k, v in epochs.items():
        md.append(
            f"Real Lightning epoch, {k}: {v['seconds']:.1f} s ({v['sequences_per_second']:.0f} sequences/s"
            + (f"; first {v['steps']} batches only)." if v["steps"] < steps_per_epoch else ").")
        )
    md.append(
        f"Evaluation of {len(valid):,} validation users, all three protocols: {result['evaluation']['seconds_median']:.1f} s "
        f"(users scored in order of history length; {result['evaluation']['seconds_median_row_order']:.1f} s in row order). "
        f"Peak RSS {result['peak_rss_mib']:.0f} MiB. Targets: <= 30 s/epoch, >= 4.5x vs naive."
    )
    write_result(out, "train", result, md)


if __name__ == "__main__":
    main()
