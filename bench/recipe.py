"""MIIR's training recipe on amazon-beauty: levers measured as pairs of runs that differ in one
setting (issue 9). Every run is recorded at once in ``bench/results/recipe/<arm>-s<seed>.json``
(validation curve under every protocol, wall time, epochs; test metrics only for runs made
with ``--test``, which touches the test split once per recipe), so a later session continues
instead of retraining.

    python bench/recipe.py run ARM [ARM ...] [--seeds 1 2 3] [--epochs 15] [--test]
    python bench/recipe.py table          # bench/results/recipe.md from the records
    python bench/recipe.py list           # the arms and their settings

Screening runs (one seed, a fixed number of epochs, validation only) decide which levers earn
a three-seed comparison; three-seed runs to convergence (early stopping on validation full
NDCG@10) with ``--test`` are the claims. Arms are the ``base`` recipe plus overrides.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

from miir.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "bench" / "results" / "recipe"
RUNS = ROOT / "runs" / "recipe"

#: the starting point: the best measured MIIR before this issue (bench/grids/beauty.yaml)
BASE_MODEL: dict = {
    "fields": ["categories", "brand", "title"],
    "dropout": 0.1,
    "item_mask_prob": 0.2,
    "embedding_init": "xavier",
    "field_weights": {},
    "causal": False,  # the starting point was bidirectional (the default is causal since)
    "loss_mean": "sequence",  # Eq. 13, as every arm before `default-item-norm-40` ran
}
#: the model settings that make BASE_MODEL today's default of `miir train`
DEFAULT: dict = {
    "embedding_init": "normal",
    "field_weights": {"item_id": 3.0},
    "causal": True,
    "next_item_weight": 1.0,
}
BASE_TRAIN: dict = {
    "lr": 1e-3,
    "max_epochs": 100,
    "patience": 10,
    "batching": "packed",
    "threads": 2,
    "progress": False,
}

#: arm -> (model overrides, train overrides); each differs from ``base`` (or the arm named in
#: its comment) in one setting
ARMS: dict[str, tuple[dict, dict]] = {
    "base": ({}, {}),
    "init-normal": ({"embedding_init": "normal"}, {}),
    "last-1.0": ({"last_item_prob": 1.0}, {}),
    "last-0.5-clean": ({"last_item_prob": 0.5, "last_item_clean": True}, {}),
    "item-0.5": ({"item_mask_prob": 0.5}, {}),
    "idw-3": ({"field_weights": {"item_id": 3.0}}, {}),
    "lr-2e-3": ({}, {"lr": 2e-3}),
    "warmup-cosine": ({}, {"warmup_epochs": 2.0, "lr_schedule": "cosine"}),
    "wd-0.01": ({}, {"weight_decay": 0.01}),
    "copies-2": ({}, {"copies": 2}),
    "maxlen-50": ({"max_len": 50}, {}),
    # on top of init-normal (the first lever that measured a gain)
    "normal-warmup": ({"embedding_init": "normal"}, {"warmup_epochs": 2.0}),
    "normal-idw-3": ({"embedding_init": "normal", "field_weights": {"item_id": 3.0}}, {}),
    "normal-item-0.5": ({"embedding_init": "normal", "item_mask_prob": 0.5}, {}),
    # the candidate default: the two levers that measured a gain, trained to convergence
    "recipe": (
        {"embedding_init": "normal", "field_weights": {"item_id": 3.0}},
        {"max_epochs": 40, "patience": 8},
    ),
    # the paper's settings (--preset paper) for the fields above, and a faster learning rate
    "paper": ({"dropout": 0.5, "item_mask_prob": 0.0}, {"lr": 1e-4}),
    "recipe-lr-2e-3": (
        {"embedding_init": "normal", "field_weights": {"item_id": 3.0}},
        {"lr": 2e-3},
    ),
    # the fastest screened lever, to convergence under the default's budget
    "recipe-lr-2e-3-40": (
        {"embedding_init": "normal", "field_weights": {"item_id": 3.0}},
        {"lr": 2e-3, "max_epochs": 40, "patience": 8},
    ),
    "recipe-preln": (
        {"embedding_init": "normal", "field_weights": {"item_id": 3.0}, "norm_first": True},
        {},
    ),
    "recipe-dropout-0.3": (
        {"embedding_init": "normal", "field_weights": {"item_id": 3.0}, "dropout": 0.3},
        {},
    ),
    # causal DFSA (issue 9): a whole-item-masked position sees only its prefix, as the query
    # at inference; FDSA and SASRec (causal, every prefix) lead the full-ranking table
    "recipe-causal": (
        {"embedding_init": "normal", "field_weights": {"item_id": 3.0}, "causal": True},
        {},
    ),
    "recipe-causal-item-0.5": (
        {
            "embedding_init": "normal",
            "field_weights": {"item_id": 3.0},
            "causal": True,
            "item_mask_prob": 0.5,
        },
        {},
    ),
    # causal + every item predicts its successor (SASRec's every-prefix signal) beside MII
    "recipe-causal-next": (
        {
            "embedding_init": "normal",
            "field_weights": {"item_id": 3.0},
            "causal": True,
            "next_item_weight": 1.0,
        },
        {},
    ),
    # the best screen so far, to convergence under the default's budget
    "recipe-causal-next-40": (
        {
            "embedding_init": "normal",
            "field_weights": {"item_id": 3.0},
            "causal": True,
            "next_item_weight": 1.0,
        },
        {"max_epochs": 40, "patience": 8},
    ),
    # on top of the default (causal + next-item, scoring fixed): SASRec's heavier dropout
    # (our SASRec: 0.5), and the next-item head alone (no MII field losses: how much MII adds)
    "default-dropout-0.3": ({**DEFAULT, "dropout": 0.3}, {}),
    # to convergence within a session's budget (the default and the clean pass both plateau at
    # valid full NDCG@10 0.047 by epoch 20: more regularisation, as SASRec's and FDSA's 0.5)
    "default-dropout-0.3-60": ({**DEFAULT, "dropout": 0.3}, {"max_epochs": 60, "patience": 10}),
    "default-no-mii": (
        {
            **DEFAULT,
            "field_weights": {"item_id": 0.0, "categories": 0.0, "brand": 0.0, "title": 0.0},
        },
        {},
    ),
    # on top of causal + next-item: the next-item loss weighted up, and a lighter MII mask
    "recipe-causal-next-w3": ({**DEFAULT, "next_item_weight": 3.0}, {}),
    "recipe-causal-next-mask-0.3": ({**DEFAULT, "mask_prob": 0.3}, {}),
    # on top of the default: the next-item loss on an unmasked pass (at inference the history
    # is never masked; in the default's one pass, MII hides about half of its fields)
    "default-clean-next": ({**DEFAULT, "next_item_clean": True}, {}),
    "default-clean-next-40": (
        {**DEFAULT, "next_item_clean": True},
        {"max_epochs": 40, "patience": 8},
    ),
    # diagnostics (issue 9): where the gap to SASRec lies. The default with no side field
    # (DFSA over item IDs alone: SASRec's input with MIIR's layers, masks and losses), and the
    # default in SASRec's shape (2 layers, 2 heads, pre-LN, dropout 0.5), each to convergence
    "default-id-only-40": ({**DEFAULT, "fields": []}, {"max_epochs": 40, "patience": 8}),
    "default-sasrec-shape-60": (
        {**DEFAULT, "n_layers": 2, "n_heads": 2, "norm_first": True, "dropout": 0.5},
        {"max_epochs": 60, "patience": 10},
    ),
    # SASRec's objective alone on DFSA: the next-item loss on the unmasked pass, every MII
    # field loss weighted 0 (is MII what holds the curve, or the layers?)
    "default-clean-no-mii-40": (
        {
            **DEFAULT,
            "next_item_clean": True,
            "field_weights": {"item_id": 0.0, "categories": 0.0, "brand": 0.0, "title": 0.0},
        },
        {"max_epochs": 40, "patience": 8},
    ),
    # the same in FDSA's and SASRec's regularisation (2 layers, 2 heads, pre-LN, dropout 0.5):
    # the next-item-only DFSA overfits from epoch 8 at dropout 0.1; is DFSA (every field in
    # one attention) behind FDSA's two streams when both are trained and regularised alike?
    "default-clean-no-mii-sasrec-shape-60": (
        {
            **DEFAULT,
            "next_item_clean": True,
            "field_weights": {"item_id": 0.0, "categories": 0.0, "brand": 0.0, "title": 0.0},
            "n_layers": 2,
            "n_heads": 2,
            "norm_first": True,
            "dropout": 0.5,
        },
        {"max_epochs": 60, "patience": 10},
    ),
    # an ID-only causal stream beside DFSA, read by the next-item head with DFSA's state
    # (FDSA's item stream inside MIIR): DFSA trained as FDSA stays below attention over IDs
    # alone (default-clean-no-mii-sasrec-shape-60), and MII's masks lift it only so far
    "default-id-stream-40": ({**DEFAULT, "id_stream": True}, {"max_epochs": 40, "patience": 8}),
    # the MII losses kept for the side fields only (imputation), the item-ID cloze loss (a
    # second softmax over every item, weight 3 in the default) off; with the next-item loss on
    # the MII pass (one pass) or on a clean pass
    "default-side-mii-40": (
        {**DEFAULT, "field_weights": {"item_id": 0.0}},
        {"max_epochs": 40, "patience": 8},
    ),
    "default-clean-side-mii-40": (
        {**DEFAULT, "next_item_clean": True, "field_weights": {"item_id": 0.0}},
        {"max_epochs": 40, "patience": 8},
    ),
    # the candidates' side fields in their scoring embedding (ID embedding + a linear map of
    # the summed field embeddings): MIIR's deficit lies on rare targets (by_popularity)
    "default-side-output-40": (
        {**DEFAULT, "side_output": True},
        {"max_epochs": 40, "patience": 8},
    ),
    # the next-item head reads every field token of the item (concatenated, as FDSA
    # concatenates its item and feature streams), not the ID token alone
    "default-item-readout-40": (
        {**DEFAULT, "readout": "item"},
        {"max_epochs": 40, "patience": 8},
    ),
    # an item's fields averaged into one token before attention (FDSA's feature stream
    # fuses an item's features first): attention over items, not fields; the ID stream
    # beside DFSA (default-id-stream-40) did not carry FDSA's quality into MIIR
    "default-item-fusion-40": (
        {**DEFAULT, "fusion": "item"},
        {"max_epochs": 40, "patience": 8},
    ),
    # still rising at its cap of 40 epochs: the same run continued to 80 (resumed from the
    # 40-epoch run's last checkpoint: constant learning rate, so the same run as one of 80)
    "default-item-fusion-80": (
        {**DEFAULT, "fusion": "item"},
        {"max_epochs": 80, "patience": 10},
    ),
    # SASRec's layers (2 layers, 2 heads, pre-LN with a final LayerNorm) at MIIR's dropout
    # 0.1: SASRec in MIIR's layers lands at MIIR's level, SASRec at dropout 0.1 in its own
    # layers keeps most of its lead (the grid's SASRec diagnostics)
    "default-sasrec-layers-40": (
        {**DEFAULT, "n_layers": 2, "n_heads": 2, "norm_first": True},
        {"max_epochs": 40, "patience": 8},
    ),
    # every item of a batch weighs the same in the loss (SASRec's mean over predictions)
    # instead of every sequence (Eq. 13: a 2-item window weighs as much as a 20-item one)
    "default-item-norm-40": (
        {**DEFAULT, "loss_mean": "item"},
        {"max_epochs": 40, "patience": 8},
    ),
    # the learning rate decayed by a cosine to 0 at epoch 40 (the default keeps it constant
    # and flattens by epoch 20-25)
    "default-cosine-40": (
        dict(DEFAULT),
        {"max_epochs": 40, "patience": 8, "lr_schedule": "cosine"},
    ),
    # the item mean (the default since default-item-norm-40) in SASRec's layers (2 layers,
    # 2 heads, pre-LN with a final LayerNorm): of SASRec's lead over MIIR's layer recipe its
    # layers were worth +0.0044 full NDCG@10
    "item-norm-sasrec-layers-40": (
        {**DEFAULT, "loss_mean": "item", "n_layers": 2, "n_heads": 2, "norm_first": True},
        {"max_epochs": 40, "patience": 8},
    ),
    # the item mean with the window's earlier items left out of the next-item softmax (issue 9:
    # SASRec's lead with the history masked is a sharper top among unseen items; serving
    # excludes seen items too)
    "item-norm-exclude-history-40": (
        {**DEFAULT, "loss_mean": "item", "next_item_exclude_history": True},
        {"max_epochs": 40, "patience": 8},
    ),
    # the item mean for longer (seed 1 was best at epoch 33 of 40, still rising)
    "item-norm-60": (
        {**DEFAULT, "loss_mean": "item"},
        {"max_epochs": 60, "patience": 10},
    ),
    # one setting each against default-item-norm-40 (issue 9's levers, not yet measured on the
    # item mean): dropout 0.2 (SASRec's dropout 0.5 is worth +0.0077 masked to SASRec; 0.3 was
    # worse under the sequence mean)
    "item-norm-dropout-0.2-40": (
        {**DEFAULT, "loss_mean": "item", "dropout": 0.2},
        {"max_epochs": 40, "patience": 8},
    ),
    # windows of 50 items, histories of 49 scored (BERT4Rec's and SASRec's Beauty length)
    "item-norm-len-50-40": (
        {**DEFAULT, "loss_mean": "item", "max_len": 50},
        {"max_epochs": 40, "patience": 8},
    ),
    # twice the learning rate (the fastest screen under the sequence mean, never converged)
    "item-norm-lr-2e-3-40": (
        {**DEFAULT, "loss_mean": "item"},
        {"max_epochs": 40, "patience": 8, "lr": 2e-3},
    ),
    # MII masks 30% of the present fields instead of 50%: the next-item loss reads a less
    # corrupted history (BERT4Rec's Beauty ratio is 0.6, but it has no next-item head)
    "item-norm-mask-0.3-40": (
        {**DEFAULT, "loss_mean": "item", "mask_prob": 0.3},
        {"max_epochs": 40, "patience": 8},
    ),
    # the mask ratio further down (0.3 is the default since item-norm-mask-0.3-40)
    "item-norm-mask-0.2-40": (
        {**DEFAULT, "loss_mean": "item", "mask_prob": 0.2},
        {"max_epochs": 40, "patience": 8},
    ),
    "item-norm-mask-0.1-40": (
        {**DEFAULT, "loss_mean": "item", "mask_prob": 0.1},
        {"max_epochs": 40, "patience": 8},
    ),
    # on the mask-0.3 default: less whole-item masking (0.1 against 0.2), and a longer budget
    "item-norm-mask-0.3-whole-0.1-40": (
        {**DEFAULT, "loss_mean": "item", "mask_prob": 0.3, "item_mask_prob": 0.1},
        {"max_epochs": 40, "patience": 8},
    ),
    "item-norm-mask-0.3-60": (
        {**DEFAULT, "loss_mean": "item", "mask_prob": 0.3},
        {"max_epochs": 60, "patience": 10},
    ),
    # the default's validation curve is flat over its last ten epochs at the constant lr 1e-3:
    # a cosine decay to 0 at the budget's end (the "learning rate, warm-up and decay")
    "item-norm-mask-0.3-cosine-40": (
        {**DEFAULT, "loss_mean": "item", "mask_prob": 0.3},
        {"max_epochs": 40, "patience": 8, "lr_schedule": "cosine"},
    ),
    # capacity: every field embedding (and so DFSA's width) 128 instead of the paper's 64; the
    # head size goes from 16 to 32 with the 4 heads kept (DIF-SR's anchor runs wider than 64)
    "item-norm-mask-0.3-e128-40": (
        {**DEFAULT, "loss_mean": "item", "mask_prob": 0.3, "embedding_size": 128},
        {"max_epochs": 40, "patience": 8},
    ),
    # decoupled weight decay (AdamW; LayerNorms and biases not decayed), the lever
    "item-norm-mask-0.3-wd-0.1-40": (
        {**DEFAULT, "loss_mean": "item", "mask_prob": 0.3},
        {"max_epochs": 40, "patience": 8, "weight_decay": 0.1},
    ),
    # the next-item loss (SASRec's every-prefix signal, what full ranking rewards) weighted 2
    # against the MII field losses (item ID 3, side fields 1)
    "item-norm-mask-0.3-next-2-40": (
        {**DEFAULT, "loss_mean": "item", "mask_prob": 0.3, "next_item_weight": 2.0},
        {"max_epochs": 40, "patience": 8},
    ),
    # the next-item loss at half of the items per step (weighted 2): the catalogue-wide
    # softmaxes are about half of a step, the next-item rows two thirds of them (speed, issue 9)
    "item-norm-mask-0.3-next-frac-0.5-40": (
        {**DEFAULT, "loss_mean": "item", "mask_prob": 0.3, "next_item_fraction": 0.5},
        {"max_epochs": 40, "patience": 8},
    ),
    # the item-ID losses over the batch's items plus 1,024 items drawn per step (log-Q
    # corrected) instead of the whole catalogue (speed, issue 9)
    "item-norm-mask-0.3-neg-1024-40": (
        {**DEFAULT, "loss_mean": "item", "mask_prob": 0.3, "sampled_negatives": 1024},
        {"max_epochs": 40, "patience": 8},
    ),
    # BERT4Rec's masked copies: each window twice per epoch, masked anew each time
    "item-norm-mask-0.3-copies-2-40": (
        {**DEFAULT, "loss_mean": "item", "mask_prob": 0.3},
        {"max_epochs": 40, "patience": 8, "copies": 2},
    ),
    "normal-prefixes": (
        {"embedding_init": "normal", "last_item_prob": 1.0},
        {"window_stride": 1},
    ),
}


def arm_settings(arm: str) -> tuple[dict, dict]:
    if arm not in ARMS:
        raise SystemExit(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}")
    model, train = ARMS[arm]
    return {**BASE_MODEL, **model}, {**BASE_TRAIN, **train}


def _curve(run: Path) -> list[dict]:
    rows = []
    for log in sorted((run / "logs").glob("*/metrics.csv")):
        with log.open(encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                if r.get("valid/full/NDCG@10"):
                    rows.append(
                        {
                            "stage": log.parent.name,
                            "epoch": int(r["epoch"]),
                            **{
                                k.removeprefix("valid/"): round(float(v), 6)
                                for k, v in r.items()
                                if k.startswith("valid/")
                                and v
                                and k.split("/")[-1] in ("HR@10", "NDCG@10")
                            },
                        }
                    )
    return rows


def run_arm(
    arm: str, seed: int, epochs: int | None, test: bool, data: Path, threads: int = 2
) -> dict:
    from miir.provenance import git_commit, run_record
    from miir.training.train import TrainConfig, train

    model, tr = arm_settings(arm)
    tr = {**tr, "seed": seed, "threads": threads}
    if epochs is not None:
        tr.update(max_epochs=epochs, min_epochs=epochs)
    kind = "full" if epochs is None else f"screen{epochs}"
    name = f"{arm}-s{seed}-{kind}"
    record_path = RECORDS / f"{name}.json"
    if record_path.exists():
        print(f"{name}: recorded, skipped")
        return json.loads(record_path.read_text(encoding="utf-8"))
    out = RUNS / name
    # a run killed before it was recorded resumes from Lightning's last checkpoint
    resume = any(out.glob("lightning/*/last.ckpt"))
    if resume:
        print(f"{name}: resuming from {out}")
    logs_before = {p.parent.name for p in (out / "logs").glob("*/metrics.csv")}
    code = git_commit()  # the code that trains, read before a commit can land during the run
    started = time.perf_counter()
    results = train(
        data,
        out,
        "miir",
        model,
        TrainConfig(**tr),
        resume=resume,
        overwrite=not resume,
        command=" ".join(sys.argv),
        stages=("valid", "test") if test else ("valid",),
    )
    wall = time.perf_counter() - started
    curve = _curve(out)
    epochs_run = len(curve)
    # train_seconds covers this invocation only: a resumed run's speed is over its new epochs
    epochs_now = sum(1 for r in curve if r["stage"] not in logs_before)
    # the header every bench record has (command, commit, date, machine: its CPU and bf16 support)
    record = run_record(
        **code,
        arm=arm,
        seed=seed,
        kind=kind,
        model_overrides=ARMS[arm][0],
        train_overrides=ARMS[arm][1],
        model_config=results["run"]["model_config"],
        train_config=results["run"]["train_config"],
        train_seconds=round(results["train_seconds"], 1),
        wall_seconds=round(wall, 1),
        epochs_run=epochs_run,
        seconds_per_epoch=round(results["train_seconds"] / max(epochs_now, 1), 2),
        resumed=resume,
        best_epoch=results["checkpoint_epoch"],
        valid=results["valid"],
        test=results.get("test"),
        curve=curve,
    )
    RECORDS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record_path, json.dumps(record, indent=1))
    _keep_ranks(record_path, out)
    v = record["valid"]
    print(
        f"{name}: valid full NDCG@10 {v['full']['NDCG@10']:.4f} masked {v['full_masked']['NDCG@10']:.4f} "
        f"sampled {v['sampled']['NDCG@10']:.4f} · best epoch {record['best_epoch']} of {epochs_run} · "
        f"{record['seconds_per_epoch']} s/epoch",
        flush=True,
    )
    return record


#: the grid's records of the same data and split (bench/grids/beauty.yaml)
GRID_RECORDS = ROOT / "bench" / "results" / "runs"
DEFAULT_ARM = "item-norm-mask-0.3-40"  # the defaults of `miir train` (MIIRConfig), to convergence
#: the item-mean recipe with the paper's p = 0.5 (the default before the mask ratio was
#: measured): the base that the one-setting levers (LEVER_PREFIX) differ from
LEVER_BASE = "default-item-norm-40"
PREVIOUS_RECIPE_KEY = "2b00b6d933991f9e"  # MIIR before issue 9: Xavier, equal loss weights
#: the default before the item mean (Eq. 13's sequence mean, the scoring fix): the grid's
#: `MIIR (sequence mean)` runs on Beauty as given, seeds 1-3
SEQUENCE_MEAN_KEYS = ("1a4f3f086d14542b", "61c437d9f76a24d4", "5b40a97cec66ae7c")
#: published anchors on amazon-beauty (../shared/ANCHORS.md): protocol -> (HR@10, NDCG@10)
ANCHORS = {
    "sampled": ("S3-Rec, authors' repository re-run", 0.5687, 0.3816),
    "full": ("DIF-SR (SIGIR 2022)", 0.0908, 0.0446),
    "full_masked": ("BSARec (AAAI 2024)", 0.1008, 0.0611),
}
PROTOCOLS = ("sampled", "full", "full_masked")


def _keep_ranks(record_path: Path, run: Path) -> None:
    """Store a tested run's per-user test ranks next to its record (for paired t-tests)."""
    src = run / "ranks_test.npz"
    dst = record_path.with_suffix(".ranks.npz")
    if src.is_file() and not dst.exists():
        tmp = dst.with_suffix(".tmp")
        tmp.write_bytes(src.read_bytes())
        os.replace(tmp, dst)


def _ranks(path: Path) -> dict:
    import numpy as np
    import torch

    with np.load(path, allow_pickle=False) as data:
        return {p: torch.from_numpy(data[p].astype("int64")) for p in data.files}


def comparison() -> list[str]:
    """The default recipe against our SASRec (same seeds), the previous recipe and the
    anchors, as ratios; paired t-tests over users for seed 1."""
    from miir.evaluation.metrics import paired_significance

    records = _load()

    def arm(name: str) -> list[dict]:
        return [r for r in records if r["arm"] == name and r["kind"] == "full" and r.get("test")]

    recipe = arm(DEFAULT_ARM)
    grid = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(GRID_RECORDS.glob("*.json"))]

    def baseline(label: str) -> list[dict]:
        """The grid's row ``label`` on Beauty as given (not its diagnostic variants)."""
        rows = (g for g in grid if g["label"] == label and g["data"] == "beauty")
        return sorted((g for g in rows if g["setting"] == "given"), key=lambda g: g["seed"])

    previous = [g for g in grid if g["key"] == PREVIOUS_RECIPE_KEY]
    sequence_mean = sorted(
        (g for g in grid if g["key"] in SEQUENCE_MEAN_KEYS), key=lambda g: g["seed"]
    )
    if not recipe:
        return []
    rows = [
        ("MIIR, default recipe", recipe),
        ("our SASRec", baseline("SASRec")),
        ("our FDSA", baseline("FDSA")),
        ("MIIR, the default before the mask ratio 0.3 (item mean, p = 0.5)", arm(LEVER_BASE)),
        ("MIIR, the default before the item mean (the grid's sequence-mean runs)", sequence_mean),
        ("MIIR, the default before causal + next-item (arm 'recipe')", arm("recipe")),
        ("MIIR, previous recipe", previous),
    ]
    out = [
        "",
        "## The default recipe against our SASRec, the previous recipe and the anchors (test)",
        "",
        "| model | seeds | " + " | ".join(f"{p} HR@10 / NDCG@10" for p in PROTOCOLS) + " |",
        "|---|---|" + "---|" * len(PROTOCOLS),
    ]
    for label, rs in rows:
        cells = [
            f"{_mean_sd([r['test'][p]['HR@10'] for r in rs])} / {_mean_sd([r['test'][p]['NDCG@10'] for r in rs])}"
            for p in PROTOCOLS
        ]
        out.append(
            f"| {label} | {','.join(str(r['seed']) for r in rs)} | " + " | ".join(cells) + " |"
        )
    cells = [f"{ANCHORS[p][1]:.4f} / {ANCHORS[p][2]:.4f} ({ANCHORS[p][0]})" for p in PROTOCOLS]
    out.append("| published anchor | - | " + " | ".join(cells) + " |")
    out += [
        "",
        "Ratio of the default recipe's mean to each reference (NDCG@10; > 1: ours is higher):",
        "",
    ]
    mean = {p: statistics.mean(r["test"][p]["NDCG@10"] for r in recipe) for p in PROTOCOLS}
    for label, rs in rows[1:]:
        if rs:
            ref = {p: statistics.mean(r["test"][p]["NDCG@10"] for r in rs) for p in PROTOCOLS}
            out.append(f"- {label}: " + ", ".join(f"{p} {mean[p] / ref[p]:.2f}" for p in PROTOCOLS))
    out.append(
        "- published anchors: " + ", ".join(f"{p} {mean[p] / ANCHORS[p][2]:.2f}" for p in PROTOCOLS)
    )
    mine = next((r for r in recipe if r["seed"] == 1), None)
    mine_ranks = RECORDS / f"{mine['arm']}-s1-full.ranks.npz" if mine else None
    if mine_ranks is not None and mine_ranks.exists():
        a = _ranks(mine_ranks)
        out += ["", "Paired two-sided t-tests over users, seed 1 against seed 1 (NDCG@10):", ""]
        for label, rs in rows[1:]:
            ref = next((r for r in rs if r["seed"] == 1), None)
            if ref is None:
                continue
            path = (
                GRID_RECORDS / f"{ref['key']}.ranks.npz"
                if "key" in ref
                else RECORDS / f"{ref['arm']}-s1-full.ranks.npz"
            )
            if not path.exists():
                continue
            b = _ranks(path)
            tests = [paired_significance(a[p], b[p], "NDCG@10") for p in PROTOCOLS]
            out.append(
                f"- against {label}: "
                + ", ".join(
                    f"{p} {t['mean_a']:.4f} vs {t['mean_b']:.4f} (t = {t['t']:.2f}, p = {t['p']:.2g})"
                    for p, t in zip(PROTOCOLS, tests, strict=True)
                )
            )
    return out


def _load() -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(RECORDS.glob("*.json"))]


def _at(curve: list[dict], epoch: int, key: str = "full/NDCG@10") -> float | None:
    vals = [c[key] for c in curve if c["epoch"] == epoch]
    return vals[0] if vals else None


def _mean_sd(xs: list[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.4f}"
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"


#: a level both recipes reach (the previous recipe at epoch 27 of 66); our SASRec's best
#: validation full NDCG@10 (0.050) is reached by neither
THRESHOLD = 0.035


def _minutes_to(curve: list[dict], seconds_per_epoch: float, level: float = THRESHOLD) -> str:
    """Training minutes until validation full NDCG@10 first reaches ``level`` ('-': never)."""
    for c in curve:
        if c["full/NDCG@10"] >= level:
            return f"{(c['epoch'] + 1) * seconds_per_epoch / 60:.1f}"
    return "-"


def _test(rs: list[dict], protocol: str, metric: str) -> str:
    return _mean_sd([r["test"][protocol][metric] for r in rs if r.get("test")])


def table() -> str:
    for rec in RECORDS.glob("*.json"):
        _keep_ranks(rec, RUNS / rec.stem)
    recs = _load()
    lines = ["## Screening runs (seed 1, fixed epochs, validation only)", ""]
    screens = [r for r in recs if r["kind"].startswith("screen")]
    marks = (4, 9, 14, 19, 24, 29)
    lines.append(
        "| arm | overrides | s/epoch | "
        + " | ".join(f"full NDCG@10 ep {m + 1}" for m in marks)
        + " | best valid full / masked / sampled NDCG@10 |"
    )
    lines.append("|---|---|---|" + "---|" * len(marks) + "---|")
    prev = GRID_RECORDS / f"{PREVIOUS_RECIPE_KEY}.json"
    if prev.exists():
        g = json.loads(prev.read_text(encoding="utf-8"))
        curve = [
            {
                "epoch": c["epoch"],
                **{k.removeprefix("valid/"): v for k, v in c.items() if k.startswith("valid/")},
            }
            for c in g["curve"]
        ]
        best = max(curve, key=lambda c: c["full/NDCG@10"])
        cells = [_at(curve, m) for m in marks]
        lines.append(
            f"| base (the grid's run {PREVIOUS_RECIPE_KEY}: these settings and seed, constant lr, "
            f"so its first epochs are a screening run's; best of {len(curve)}) | {{}} "
            f"| {g['train_seconds'] / len(curve):.2f} | "
            + " | ".join("" if c is None else f"{c:.4f}" for c in cells)
            + f" | {best['full/NDCG@10']:.4f} / {best['full_masked/NDCG@10']:.4f} / {best['sampled/NDCG@10']:.4f} |"
        )
    for r in sorted(screens, key=lambda r: (r["kind"], r["arm"])):
        cells = [_at(r["curve"], m) for m in marks]
        v = r["valid"]
        lines.append(
            f"| {r['arm']} ({r['kind']}) | {json.dumps({**r['model_overrides'], **r['train_overrides']})} "
            f"| {r['seconds_per_epoch']} | "
            + " | ".join("" if c is None else f"{c:.4f}" for c in cells)
            + f" | {v['full']['NDCG@10']:.4f} / {v['full_masked']['NDCG@10']:.4f} / {v['sampled']['NDCG@10']:.4f} |"
        )
    full = [r for r in recs if r["kind"] == "full"]
    if full:
        lines += ["", "## Runs to convergence (early stopping on validation full NDCG@10)", ""]
        by_arm: dict[str, list[dict]] = {}
        for r in full:
            by_arm.setdefault(r["arm"], []).append(r)
        lines.append(
            "| arm | seeds | epochs (best) | train min | min to valid full NDCG@10 >= "
            f"{THRESHOLD} | valid full NDCG@10 | test sampled HR@10 / NDCG@10 "
            "| test full HR@10 / NDCG@10 | test masked HR@10 / NDCG@10 |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for arm, rs in by_arm.items():
            lines.append(
                f"| {arm} | {','.join(str(r['seed']) for r in rs)} "
                f"| {','.join(str(r['best_epoch']) for r in rs)} "
                f"| {statistics.mean(r['train_seconds'] for r in rs) / 60:.1f} "
                f"| {', '.join(_minutes_to(r['curve'], r['seconds_per_epoch']) for r in rs)} "
                f"| {_mean_sd([r['valid']['full']['NDCG@10'] for r in rs])} "
                f"| {_test(rs, 'sampled', 'HR@10')} / {_test(rs, 'sampled', 'NDCG@10')} "
                f"| {_test(rs, 'full', 'HR@10')} / {_test(rs, 'full', 'NDCG@10')} "
                f"| {_test(rs, 'full_masked', 'HR@10')} / {_test(rs, 'full_masked', 'NDCG@10')} |"
            )
    if prev.exists():
        lines.append(
            f"\nThe previous recipe (the grid's run {PREVIOUS_RECIPE_KEY}, seed 1, up to 100 epochs): "
            f"best epoch {g['best_epochs'].get('main')} of {len(curve)}, {g['train_seconds'] / 60:.1f} train minutes, "
            f"{_minutes_to(curve, g['train_seconds'] / len(curve))} minutes to validation full "
            f"NDCG@10 >= {THRESHOLD}."
        )
    lines += comparison()
    lines += levers()
    return "\n".join(lines) + "\n"


def _per_user_mean(ranks: list[dict], protocol: str):
    """Per-user test NDCG@10 under ``protocol``, averaged over runs' saved ranks (:func:`_ranks`)."""
    import numpy as np

    from miir.evaluation.metrics import per_user_metrics

    return np.mean([per_user_metrics(r[protocol], (10,))["NDCG@10"].numpy() for r in ranks], axis=0)


#: arms that differ from LEVER_BASE in one setting (their names start so)
LEVER_PREFIX = "item-norm-"


def levers() -> list[str]:
    """Each one-setting lever on the item mean against the default, seed for seed: the change
    of validation NDCG@10 (which decides), and of test NDCG@10 with the paired t-test over
    users (seeds pooled: each user's metric averaged over the seeds both sides share)."""
    from scipy import stats

    runs = [r for r in _load() if r["kind"] == "full" and r.get("test")]
    default = {r["seed"]: r for r in runs if r["arm"] == LEVER_BASE}
    arms = sorted({r["arm"] for r in runs if r["arm"].startswith(LEVER_PREFIX)})
    if not default or not arms:
        return []
    out = [
        "",
        f"## Levers against the item mean with p = 0.5 ({LEVER_BASE}), same seeds",
        "",
        "Each arm differs from it in one setting (`python bench/recipe.py list`). "
        "Δ: the arm minus that base, NDCG@10, mean over the seeds both have; p: paired "
        "two-sided t-test over the test users, each user's metric averaged over those seeds. "
        "Validation decides; a Δ inside 0.0021 (two runs of one recipe) is not an effect.",
        "",
        "| arm | setting | seeds | best epochs | "
        + " | ".join(f"valid {p} Δ" for p in PROTOCOLS)
        + " | "
        + " | ".join(f"test {p} Δ (p)" for p in PROTOCOLS)
        + " |",
        "|---|---|---|---|" + "---:|" * (2 * len(PROTOCOLS)),
    ]
    for arm in arms:
        rs = sorted(
            (r for r in runs if r["arm"] == arm and r["seed"] in default), key=lambda r: r["seed"]
        )
        if not rs:
            continue
        ds = [default[r["seed"]] for r in rs]

        def delta(split: str, p: str, rs=rs, ds=ds) -> float:
            return statistics.mean(
                a[split][p]["NDCG@10"] - b[split][p]["NDCG@10"] for a, b in zip(rs, ds, strict=True)
            )

        cells = [f"{delta('valid', p):+.4f}" for p in PROTOCOLS]
        paths = [
            (
                RECORDS / f"{r['arm']}-s{r['seed']}-full.ranks.npz",
                RECORDS / f"{d['arm']}-s{d['seed']}-full.ranks.npz",
            )
            for r, d in zip(rs, ds, strict=True)
        ]
        if all(a.exists() and b.exists() for a, b in paths):
            ranks_a = [_ranks(a) for a, _ in paths]  # each file read once, for every protocol
            ranks_b = [_ranks(b) for _, b in paths]
            for p in PROTOCOLS:
                ua = _per_user_mean(ranks_a, p)
                ub = _per_user_mean(ranks_b, p)
                t = stats.ttest_rel(ua, ub)
                cells.append(f"{ua.mean() - ub.mean():+.4f} ({t.pvalue:.2g})")
        else:
            cells += [f"{delta('test', p):+.4f} (-)" for p in PROTOCOLS]
        over = {**ARMS[arm][0], **ARMS[arm][1]}
        base = {**ARMS[LEVER_BASE][0], **ARMS[LEVER_BASE][1]}
        setting = ", ".join(f"{k}={v}" for k, v in over.items() if base.get(k) != v) or "-"
        out.append(
            f"| {arm} | {setting} | {','.join(str(r['seed']) for r in rs)} "
            f"| {','.join(str(r['best_epoch']) for r in rs)} | " + " | ".join(cells) + " |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("arms", nargs="+")
    r.add_argument("--seeds", type=int, nargs="+", default=[1])
    r.add_argument("--epochs", type=int, default=None, help="screening: exactly this many epochs")
    r.add_argument("--test", action="store_true", help="also evaluate the test split")
    r.add_argument("--data", type=Path, default=ROOT / "artifacts" / "beauty")
    r.add_argument(
        "--threads", type=int, default=2, help="torch threads (1 each for two runs side by side)"
    )
    sub.add_parser("table")
    sub.add_parser("list")
    args = ap.parse_args()
    if args.cmd == "list":
        for arm in ARMS:
            print(arm, *arm_settings(arm))
        return
    if args.cmd == "run":
        for arm in args.arms:
            arm_settings(arm)
        for arm in args.arms:
            for seed in args.seeds:
                run_arm(arm, seed, args.epochs, args.test, args.data, args.threads)
    text = table()
    header = (
        "# MIIR's training recipe on amazon-beauty (issue 9)\n\n"
        "Written by `python bench/recipe.py table` from the records in `bench/results/recipe/` "
        "(each names its command, commit, machine and date). Validation decides; test is "
        "evaluated once per recipe, for runs to convergence only; 2 threads per run, on the "
        "machine each record names.\n\n"
    )
    out = ROOT / "bench" / "results" / "recipe_runs.md"
    atomic_write_text(out, header + text)
    print(text)


if __name__ == "__main__":
    main()
