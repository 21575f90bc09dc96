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

import gc
import hashlib
import json
import logging
import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor
from torch.utils.data import DataLoader

from miir.atomic import atomic_json, atomic_npz
from miir.data.artifact import Artifact
from miir.errors import ConfigError
from miir.evaluation.compare import cases_checksum, identity_checksum
from miir.evaluation.evaluate import PROTOCOLS, evaluate_scores
from miir.models import build_model as build_registered
from miir.models import describe_validation_error, model_config
from miir.models.base import ModelConfig, SequenceModel
from miir.models.fields import ItemCatalogue
from miir.runtime import keep_freed_memory, resolve_precision
from miir.training.checkpoint import load_checkpoint, save_checkpoint
from miir.training.data import (
    LengthBuckets,
    TensorRows,
    collate_rows,
    eval_rows,
    row_lengths,
    training_windows,
)
from miir.training.module import SequenceModule


class TrainConfig(BaseModel):
    """How a model is trained. Unknown keys and wrong types are errors. Defaults are the
    measured recipe (lr 1e-3: at the paper's 1e-4 MII training sits at the popularity level
    for many epochs); ``--preset paper`` gives the paper's (:mod:`miir.presets`)."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(128, ge=1, description="Training sequences per batch.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate (the paper: 1e-4).")
    max_epochs: int = Field(100, ge=1, description="Upper bound on epochs (per stage for MIIR-F).")
    min_epochs: int = Field(
        20,
        ge=0,
        description="Early stopping cannot stop before this epoch: MII training sits at the popularity level for "
        "several epochs before it improves (8 on amazon-beauty at lr 1e-3; patience 4 stopped it there). "
        "First stage only: a later stage (MIIR-F's fine-tuning) starts from a trained model.",
    )
    patience: int = Field(
        10, ge=1, description="Early stopping: epochs without improvement of the monitored metric."
    )
    monitor: str = Field(
        "valid/full/NDCG@10",
        description="Validation metric for early stopping and the best checkpoint.",
    )
    weight_decay: float = Field(
        0.0, ge=0.0, description="Decoupled weight decay (AdamW); 0 is the paper's Adam."
    )
    warmup_epochs: float = Field(
        0.0, ge=0.0, description="Linear learning-rate warm-up from 0 over this many epochs."
    )
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant",
        description="After warm-up: keep the learning rate, or decay it to 0 at max_epochs "
        "(linearly or by a cosine).",
    )
    copies: int = Field(
        1,
        ge=1,
        description="Each training window appears this many times per epoch, masked anew each "
        "time (BERT4Rec's dupe factor).",
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
    precision: Literal["auto", "32-true", "bf16"] = Field(
        "auto",
        description="'auto' (bf16 where the device runs it natively, else float32), '32-true' "
        "or 'bf16' (autocast to bfloat16; on a CPU without avx512_bf16/amx_bf16 it is many "
        "times slower than float32).",
    )
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


def train_config(values: dict[str, Any], where: str = "train config") -> TrainConfig:
    """A validated :class:`TrainConfig`; errors name the key, the allowed keys and range."""
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, TrainConfig, where)) from None


def build_model(artifact: Artifact, config: ModelConfig, name: str = "miir") -> SequenceModel:
    """A freshly initialised model ``name`` over the artifact's items (and side fields, for a
    model that reads them), with its item tables loaded."""
    names = getattr(config, "fields", None)
    catalogue = ItemCatalogue.from_artifact(artifact, list(names) if names is not None else None)
    return build_registered(name, config, catalogue)


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
        self.world_size = 1

    def on_fit_start(self, trainer: L.Trainer, pl_module: SequenceModule) -> None:
        self.world_size = trainer.world_size

    def on_validation_end(self, trainer: L.Trainer, pl_module: SequenceModule) -> None:
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


def validation_loader(artifact: Artifact, max_len: int, cfg: TrainConfig) -> DataLoader:
    """The validation rows of every epoch, in order of history length (validation metrics are
    means over users, and a batch of similar lengths has its shared padding cut). Only the
    reordered copy outlives this call: the rows in user order were held beside it through the
    whole fit before (55 MiB on amazon-beauty as int64; issue 9: memory)."""
    valid = eval_rows(artifact, "valid", max_len)
    by_length = torch.argsort(row_lengths(valid.history), stable=True)
    rows = TensorRows(
        valid.history[by_length],
        valid.target[by_length],
        valid.negatives[by_length],
        valid.seen[by_length],
    )
    return DataLoader(
        rows,
        batch_size=cfg.eval_batch_size,
        shuffle=False,
        collate_fn=collate_rows,
        num_workers=cfg.num_workers,
    )


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


def quiet_lightning() -> None:
    """Keep Lightning's banners, tips and advice off the terminal: a user sees our messages,
    not our dependencies' noise (the CSV log and progress bar stay)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    warnings.filterwarnings("ignore", category=PossibleUserWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
    warnings.filterwarnings("ignore", message=".*isinstance.*treespec.*LeafSpec.*")


def _fit_stage(
    model: SequenceModel,
    artifact: Artifact,
    cfg: TrainConfig,
    out: Path,
    *,
    stage: str,
    first: bool,
    final: bool,
    extra: dict[str, Any],
    resume: bool,
) -> dict[str, Any]:
    model.set_stage(stage)
    max_len = model.config.max_len
    windows = training_windows(artifact, max_len, cfg.window_stride)
    if cfg.copies > 1:
        windows = windows.repeat(cfg.copies, 1)
    train_loader = training_loader(windows, cfg)
    val_loader = validation_loader(artifact, max_len, cfg)
    best_dir = out / ("best" if final else f"best_{stage}")
    ckpt_dir = out / "lightning" / stage
    best = BestSafetensors(best_dir, cfg.monitor, {**extra, "stage": stage})
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
        # the floor is for a model trained from scratch (MII's plateau at the popularity
        # level); MIIR-F's fine-tuning starts from the best MII model and declined from its
        # first epochs on Sports, so the floor made it run 20 epochs for a best epoch of 1 or 2
        min_epochs=min(cfg.min_epochs, cfg.max_epochs) if first else 0,
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
    # deterministic=True turns on torch.use_deterministic_algorithms, which also fills every
    # new tensor with NaN (a check for reads of uninitialised memory, not needed for the same
    # results): a trained default MIIR's step took 1.056x the time with the fill, 1.013x
    # without it, against no deterministic mode (2 threads, side by side, fortieth session;
    # one thread: 1.03x with the fill, bench/results/trained_step.md)
    torch.utils.deterministic.fill_uninitialized_memory = False
    device_type = "cuda" if trainer.accelerator.__class__.__name__ == "CUDAAccelerator" else "cpu"
    module = SequenceModule(
        model,
        lr=cfg.lr,
        seed=cfg.seed,
        weight_decay=cfg.weight_decay,
        warmup_steps=round(cfg.warmup_epochs * len(train_loader)),
        schedule=cfg.lr_schedule,
        bf16=resolve_precision(cfg.precision, device_type) == "bf16",
        batching=cfg.batching,
    )
    last = ckpt_dir / "last.ckpt"
    ckpt_path = str(last) if resume and last.exists() else None
    trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=True)
    # only the numbers leave: Lightning gives every callback the module's bound ``log``
    # methods, so a callback kept past the stage keeps the whole trainer alive (the module,
    # the optimizer's state, the validation loader and its rows: about 90 MiB of heap on
    # amazon-beauty held through the final evaluation; issue 9, bench/results/memory.md)
    return {"best": best.best, "epoch": best.best_epoch, "world_size": best.world_size}


def _prepare_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to train over an existing run unless ``resume`` or ``overwrite`` says so."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not resume:
        if not overwrite:
            raise ConfigError(
                f"{out}: the folder is not empty (an earlier run?); pass --resume to continue "
                "it or --overwrite to replace it"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def train(
    artifact_path: str | Path,
    out: str | Path,
    model: str = "miir",
    config: ModelConfig | dict[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    command: str | None = None,
    stages: tuple[str, ...] = ("valid", "test"),
) -> dict[str, Any]:
    """Train the registered model ``model`` (with ``config``: its config, or overrides of its
    preset) on the artifact into the run folder ``out``; evaluate the best checkpoint on
    ``stages`` (validation and test) under every protocol; return the results. Recipe
    screening passes ``stages=("valid",)``: it selects on validation without touching test."""
    cfg = train_config or TrainConfig()
    if not isinstance(config, ModelConfig):
        config = model_config(model, config or {})
    keep_freed_memory()
    quiet_lightning()
    out = Path(out)
    if _is_rank_zero():
        _prepare_out(out, resume=resume, overwrite=overwrite)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    artifact = Artifact(artifact_path)
    manifest_sha = hashlib.sha256((Path(artifact_path) / "manifest.json").read_bytes()).hexdigest()
    net = build_model(artifact, config, model)
    artifact.release_fields()  # the model's buffers hold what it reads of them
    run_info = {
        "model": net.registry_name,
        "variant": net.display_name(),
        "model_config": config.model_dump(mode="json"),
        "train_config": cfg.model_dump(mode="json"),
        "precision": resolve_precision(cfg.precision),
        "command": command,
        "artifact": {
            "path": str(Path(artifact_path).resolve()),
            "name": artifact.name,
            "manifest_sha256": manifest_sha,
            "cases_sha256": cases_checksum(artifact.manifest),
            "identity_sha256": identity_checksum(artifact.manifest),
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
    extra = {"artifact": run_info["artifact"], "train_config": run_info["train_config"]}
    started = time.perf_counter()
    fitted: dict[str, Any] = {}
    names = net.stages()
    for k, stage in enumerate(names):
        if k > 0:
            # the next stage starts from the best model of the one before (MIIR-F: fine-tuning
            # with Eq. 14 continues from the best MII model)
            pre, _ = load_checkpoint(out / f"best_{names[k - 1]}")
            net.load_state_dict(pre.state_dict())
        fitted[stage] = _fit_stage(
            net,
            artifact,
            cfg,
            out,
            stage=stage,
            first=k == 0,
            final=k == len(names) - 1,
            extra=extra,
            resume=resume,
        )
        # the finished trainer, its optimizer state and its loops form reference cycles that
        # only the cycle collector frees: collect them now, before the next stage or the
        # final evaluation (which reloads the best checkpoint) allocates on top of them
        # (about 90 MiB on amazon-beauty; issue 9, bench/results/memory.md)
        gc.collect()
    del net
    seconds = time.perf_counter() - started
    results = {"run": run_info, "stages": fitted, "train_seconds": seconds}
    if _is_rank_zero():
        results.update(
            evaluate_run(out, artifact=artifact, stages=stages, eval_batch_size=cfg.eval_batch_size)
        )
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
    """Evaluate the best checkpoint of ``run`` on ``stages`` under every protocol; save the
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
        "model": meta.get("model"),
        "variant": model.display_name(),
    }
    for stage in stages:
        rows = eval_rows(artifact, stage, model.config.max_len)
        metrics, ranks = evaluate_scores(
            model.score,
            rows.history,
            rows.target,
            rows.negatives,
            rows.seen,
            batch_size=eval_batch_size,
            device=device,
        )
        out[stage] = metrics
        atomic_npz(run / f"ranks_{stage}.npz", {p: ranks[p].numpy() for p in PROTOCOLS})
        del rows  # before the next stage's rows are built beside them
    return out
