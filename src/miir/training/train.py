"""Train and evaluate a model on an artifact. Lightning runs the loop: progress bar, CSV log,
early stopping, gradient clipping, resuming, and multi-device DDP.

A run folder holds:

- ``run.json``: the model and training configs, the artifact's path and manifest checksum;
- ``best/``: the best checkpoint (safetensors + JSON, see :mod:`miir.training.checkpoint`);
- ``lightning/last.ckpt``: Lightning's resume state (loaded with ``weights_only=True``);
- ``logs/``: the CSV log of losses (per field) and validation metrics per epoch;
- ``results.json``: validation and test metrics of the best checkpoint under both protocols,
  and ``ranks_<stage>.npz`` with each user's rank (for paired significance tests).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor
from torch.utils.data import DataLoader

from miir.atomic import atomic_json
from miir.data.artifact import Artifact
from miir.data.schema import FieldKind
from miir.errors import ConfigError
from miir.evaluation.compare import cases_checksum
from miir.evaluation.evaluate import evaluate_scores
from miir.models.miir import MIIR, FieldInfo, MIIRConfig
from miir.runtime import keep_freed_memory
from miir.training.checkpoint import load_checkpoint, save_checkpoint
from miir.training.data import (
    LengthBuckets,
    TensorRows,
    collate_rows,
    eval_rows,
    item_tables,
    row_lengths,
    training_windows,
)
from miir.training.module import MIIRModule


class TrainConfig(BaseModel):
    """How a model is trained (paper defaults). Unknown keys and wrong types are errors."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(128, ge=1, description="Training sequences per batch.")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate.")
    max_epochs: int = Field(100, ge=1, description="Upper bound on epochs (per stage for MIIR-F).")
    min_epochs: int = Field(
        20,
        ge=0,
        description="Early stopping cannot stop before this epoch: MII training sits at the popularity level for "
        "several epochs before it improves (8 on amazon-beauty at lr 1e-3; patience 4 stopped it there).",
    )
    patience: int = Field(
        10, ge=1, description="Early stopping: epochs without improvement of the monitored metric."
    )
    monitor: str = Field(
        "valid/full/NDCG@10",
        description="Validation metric for early stopping and the best checkpoint.",
    )
    grad_clip: float = Field(5.0, gt=0, description="Gradient clipping by value, range [-c, c].")
    seed: int = Field(42, description="Seed of initialisation, shuffling and masking.")
    window_stride: int | None = Field(
        None,
        ge=1,
        description="Training windows step back this many items (default max_len: non-overlapping).",
    )
    batching: Literal["packed", "buckets", "random"] = Field(
        "packed",
        description="Training batches: 'packed' (uniformly random windows packed into shared "
        "rows, see miir.models.miir.pack_windows), 'buckets' (windows of similar length, their "
        "shared padding cut: fastest, but batches are not uniform draws) or 'random' (uniformly "
        "random windows, padded).",
    )
    eval_batch_size: int = Field(512, ge=1, description="Users per evaluation batch.")
    precision: str = Field("32-true", description="'32-true' or 'bf16' (autocast to bfloat16).")
    accelerator: str = Field("auto", description="cpu, gpu or auto.")
    devices: int | str = Field(1, description="Devices per node (an int, or 'auto').")
    num_nodes: int = Field(1, ge=1, description="Nodes for multi-node DDP.")
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp, ddp_spawn, ...")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    limit_train_batches: int | float | None = Field(
        None, description="Train on only this many batches per epoch (tests, smoke runs)."
    )
    limit_val_batches: int | float | None = Field(
        None, description="Validate on only this many batches."
    )
    progress: bool = Field(True, description="Show a progress bar.")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads (default: torch's choice)."
    )


def field_infos(artifact: Artifact, names: list[str]) -> list[FieldInfo]:
    infos = []
    for name in names:
        if name not in artifact.fields:
            raise ConfigError(
                f"field {name!r} is not in the artifact; fields are {list(artifact.fields)}"
            )
        fd = artifact.fields[name]
        if fd.kind == FieldKind.TEXT:
            infos.append(FieldInfo(name, fd.kind, dim=int(fd.values.shape[1])))
        elif fd.kind == FieldKind.MULTI_CATEGORICAL:
            infos.append(
                FieldInfo(name, fd.kind, cardinality=fd.cardinality, width=int(fd.values.shape[1]))
            )
        else:
            infos.append(FieldInfo(name, fd.kind, cardinality=fd.cardinality))
    return infos


def build_model(artifact: Artifact, config: MIIRConfig) -> MIIR:
    """A freshly initialised MIIR over the artifact's fields, with its item tables loaded."""
    names = list(config.fields) if config.fields is not None else artifact.schema.names
    model = MIIR(config, field_infos(artifact, names), artifact.n_items)
    present, values = item_tables(artifact, names)
    model.set_item_tables(present, values)
    return model


def training_loader(windows: Tensor, cfg: TrainConfig) -> DataLoader:
    """The training batches of an epoch: windows of similar length (``cfg.batching ==
    'buckets'``) or uniformly random windows; seeded by ``cfg.seed`` (and the epoch)."""
    if cfg.batching == "buckets":
        order: dict[str, Any] = {
            "sampler": LengthBuckets(row_lengths(windows), cfg.batch_size, cfg.seed)
        }
    else:
        order = {"shuffle": True, "generator": torch.Generator().manual_seed(cfg.seed)}
    return DataLoader(
        TensorRows(windows),
        batch_size=cfg.batch_size,
        collate_fn=collate_rows,
        num_workers=cfg.num_workers,
        drop_last=False,
        **order,
    )


class BestSafetensors(Callback):
    """Writes the best model so far (by ``monitor``, higher is better) as a safetensors checkpoint."""

    def __init__(self, path: Path, monitor: str, extra: dict[str, Any]) -> None:
        self.path = path
        self.monitor = monitor
        self.extra = extra
        self.best = -math.inf
        self.best_epoch = -1

    def on_validation_end(self, trainer: L.Trainer, pl_module: MIIRModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if value > self.best:
            self.best, self.best_epoch = value, trainer.current_epoch
            if trainer.is_global_zero:
                metrics = {
                    k: float(v)
                    for k, v in trainer.callback_metrics.items()
                    if k.startswith("valid/")
                }
                save_checkpoint(
                    pl_module.model,
                    self.path,
                    extra={**self.extra, "epoch": trainer.current_epoch, "valid": metrics},
                )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]


class ConfiguredEarlyStopping(EarlyStopping):
    """Early stopping whose patience is the run's configuration, also on ``--resume``
    (Lightning restores the patience saved in the checkpoint, so a run first trained with
    patience 4 and resumed with ``--patience 10`` would silently keep 4). The counters (best
    score, epochs without improvement) are restored as usual."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience


def _is_rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _log_version(out: Path, stage: str, resume: bool) -> str:
    """The CSV log folder of a stage; a resumed run logs to a new folder (Lightning's CSV logger
    would otherwise rewrite the earlier epochs' file)."""
    if not resume or not (out / "logs" / stage).exists():
        return stage
    k = 1
    while (out / "logs" / f"{stage}-resumed{k}").exists():
        k += 1
    return f"{stage}-resumed{k}"


def _fit_stage(
    model: MIIR,
    artifact: Artifact,
    cfg: TrainConfig,
    out: Path,
    *,
    objective: str,
    stage: str,
    extra: dict[str, Any],
    resume: bool,
) -> BestSafetensors:
    max_len = model.config.max_len
    windows = training_windows(artifact, max_len, cfg.window_stride)
    valid = eval_rows(artifact, "valid", max_len)
    train_loader = training_loader(windows, cfg)
    # validation metrics are means over users: score them in order of history length, so that
    # each batch's shared padding is cut (see MIIR.query_states)
    by_length = torch.argsort(row_lengths(valid.history), stable=True)
    val_loader = DataLoader(
        TensorRows(valid.history[by_length], valid.target[by_length], valid.negatives[by_length]),
        batch_size=cfg.eval_batch_size,
        shuffle=False,
        collate_fn=collate_rows,
        num_workers=cfg.num_workers,
    )
    best_dir = out / ("best" if stage == "main" else f"best_{stage}")
    ckpt_dir = out / "lightning" / stage
    best = BestSafetensors(best_dir, cfg.monitor, {**extra, "stage": stage, "objective": objective})
    callbacks = [
        best,
        ConfiguredEarlyStopping(monitor=cfg.monitor, mode="max", patience=cfg.patience),
        # the latest state after every epoch, for --resume (save_last with save_top_k=0 saves
        # only when training ends, so a killed run would lose every epoch since it started)
        ModelCheckpoint(
            dirpath=ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False
        ),
    ]
    trainer = L.Trainer(
        default_root_dir=out,
        max_epochs=cfg.max_epochs,
        min_epochs=min(cfg.min_epochs, cfg.max_epochs),
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        gradient_clip_val=cfg.grad_clip,
        gradient_clip_algorithm="value",
        callbacks=callbacks,
        logger=CSVLogger(out, name="logs", version=_log_version(out, stage, resume)),
        enable_progress_bar=cfg.progress,
        num_sanity_val_steps=0,
        limit_train_batches=cfg.limit_train_batches,
        limit_val_batches=cfg.limit_val_batches,
        deterministic=True,
        enable_model_summary=False,
    )
    module = MIIRModule(
        model,
        lr=cfg.lr,
        seed=cfg.seed,
        objective=objective,
        bf16=cfg.precision == "bf16",
        pack=cfg.batching == "packed",
    )
    last = ckpt_dir / "last.ckpt"
    ckpt_path = str(last) if resume and last.exists() else None
    trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=True)
    return best


def train(
    artifact_path: str | Path,
    out: str | Path,
    model_config: MIIRConfig,
    train_config: TrainConfig | None = None,
    *,
    resume: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Train ``model_config`` on the artifact into the run folder ``out``; evaluate the best
    checkpoint on validation and test under both protocols; return the results."""
    cfg = train_config or TrainConfig()
    keep_freed_memory()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    artifact = Artifact(artifact_path)
    manifest_sha = hashlib.sha256((Path(artifact_path) / "manifest.json").read_bytes()).hexdigest()
    run_info = {
        "model": "miir",
        "variant": model_config.variant_name(),
        "model_config": model_config.model_dump(mode="json"),
        "train_config": cfg.model_dump(mode="json"),
        "command": command,
        "artifact": {
            "path": str(Path(artifact_path).resolve()),
            "name": artifact.name,
            "manifest_sha256": manifest_sha,
            "cases_sha256": cases_checksum(artifact.manifest),
        },
    }
    previous = out / "run.json"
    if resume and previous.is_file():
        # a resumed run keeps what ran before it: the earlier commands and their settings
        old = json.loads(previous.read_text(encoding="utf-8"))
        earlier = {k: old.get(k) for k in ("command", "model_config", "train_config")}
        run_info["earlier"] = [*old.get("earlier", []), earlier]
    if _is_rank_zero():
        atomic_json(out / "run.json", run_info)
    extra = {
        "artifact": run_info["artifact"],
        "item_names": artifact.item_names,
        "train_config": run_info["train_config"],
    }
    model = build_model(artifact, model_config)
    started = time.perf_counter()
    best = _fit_stage(
        model,
        artifact,
        cfg,
        out,
        objective=model_config.objective,
        stage="main" if not model_config.finetune else "pretrain",
        extra=extra,
        resume=resume,
    )
    stages = {
        "main" if not model_config.finetune else "pretrain": {
            "best": best.best,
            "epoch": best.best_epoch,
        }
    }
    if model_config.finetune:
        # MIIR-F: continue from the best MII model with the recommendation loss (Eq. 14).
        pre, _ = load_checkpoint(out / "best_pretrain")
        model.load_state_dict(pre.state_dict())
        best = _fit_stage(
            model, artifact, cfg, out, objective="rec", stage="main", extra=extra, resume=resume
        )
        stages["finetune"] = {"best": best.best, "epoch": best.best_epoch}
    seconds = time.perf_counter() - started
    results = {"run": run_info, "stages": stages, "train_seconds": seconds}
    if _is_rank_zero():
        results.update(evaluate_run(out, artifact=artifact, eval_batch_size=cfg.eval_batch_size))
        atomic_json(out / "results.json", results)
    return results


def evaluate_run(
    run: str | Path,
    *,
    artifact: Artifact | None = None,
    stages: tuple[str, ...] = ("valid", "test"),
    eval_batch_size: int = 512,
    device: str = "cpu",
) -> dict[str, Any]:
    """Evaluate the best checkpoint of ``run`` on ``stages`` under both protocols; save the
    per-user ranks next to it."""
    run = Path(run)
    keep_freed_memory()
    model, meta = load_checkpoint(run / "best", map_location=device)
    if artifact is None:
        artifact = Artifact(meta["artifact"]["path"])
    if artifact.n_items != meta["n_items"]:
        raise ConfigError(
            f"the artifact has {artifact.n_items} items, the checkpoint {meta['n_items']}"
        )
    out: dict[str, Any] = {
        "checkpoint_epoch": meta.get("epoch"),
        "variant": model.config.variant_name(),
    }
    for stage in stages:
        rows = eval_rows(artifact, stage, model.config.max_len)
        metrics, ranks = evaluate_scores(
            model.score,
            rows.history,
            rows.target,
            rows.negatives,
            batch_size=eval_batch_size,
            device=device,
        )
        out[stage] = metrics
        tmp = run / f".ranks_{stage}.tmp-{os.getpid()}.npz"
        np.savez(tmp, sampled=ranks["sampled"].numpy(), full=ranks["full"].numpy())
        os.replace(tmp, run / f"ranks_{stage}.npz")
    return out
