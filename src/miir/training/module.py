"""The Lightning module that trains any registered model: batch transform per step, a seeded
generator for the model's masks, the loss, and validation under every protocol."""

from __future__ import annotations

import math
from functools import partial

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor

from miir.evaluation.evaluate import ProtocolRanks, rank_in_chunks
from miir.models.base import SequenceModel
from miir.models.batch import BatchMode, make_batch
from miir.runtime import release_freed_memory


def step_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, epoch, batch, rank), stable across runs."""
    return int(
        np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1
    )


class SequenceModule(L.LightningModule):
    """Trains ``model`` (any :class:`~miir.models.base.SequenceModel`) in its current stage.

    ``batching``: 'packed' packs each batch's windows into shared rows where the model supports
    it (``model.batch_mode == 'packed'``); otherwise, and for 'buckets' and 'random', the
    padding that every row of the batch shares is cut. Either way the loss is the padded
    batch's."""

    def __init__(
        self,
        model: SequenceModel,
        *,
        lr: float,
        seed: int,
        bf16: bool = False,
        batching: str = "packed",
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        schedule: str = "constant",
    ) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.schedule = schedule
        self.seed = seed
        self.bf16 = bf16
        self.mode: BatchMode = (
            "packed" if batching == "packed" and model.batch_mode == "packed" else "trim"
        )
        self.ranks = ProtocolRanks()

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def generator(self, batch_idx: int) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(step_seed(self.seed, self.current_epoch, batch_idx, self.global_rank))
        return gen

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        (items,) = batch  # (B, n)
        rows = make_batch(items, self.mode, self.model.config.max_len)
        with self._autocast():
            loss, parts = self.model.loss(rows, self.generator(batch_idx))
        n_seqs = rows.n_seqs
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n_seqs)
        for name, value in parts.items():
            self.log(
                f"train/loss_{name}",
                value,
                on_step=False,
                on_epoch=True,
                batch_size=n_seqs,
                sync_dist=True,
            )
        return loss

    def on_validation_epoch_start(self) -> None:
        release_freed_memory()  # what training freed, so that evaluation starts from what is live
        self.ranks = ProtocolRanks(_validation_rows(self.trainer), self.device)

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        history, target, negatives, seen = batch  # (B, n - 1), (B,), (B, K), (B, S)
        rank_in_chunks(self.ranks, self._score, history, target, negatives, seen)

    def _score(self, history: Tensor) -> Tensor:
        """The model's scores (b, N + 2) of the histories (b, n), in float32 whatever the
        training precision: bf16 scores (8 bits of mantissa) tie many items with the target,
        and ties count against it, so a bf16 validation ranks lower and chooses the best epoch
        on other numbers than the float32 test evaluation reads."""
        return self.model.score(history)  # rank_in_chunks takes it to float32 as it is

    def on_validation_epoch_end(self) -> None:
        release_freed_memory()
        if not len(self.ranks.full):
            return
        for protocol, metrics in self.ranks.compute().items():
            for name, value in metrics.items():
                self.log(
                    f"valid/{protocol}/{name}",
                    value,
                    prog_bar=(protocol == "full" and name == "NDCG@10"),
                    sync_dist=True,
                )

    def configure_optimizers(self):
        """Adam (AdamW with ``weight_decay``; LayerNorms and biases are not decayed), with an
        optional linear warm-up and a linear or cosine decay to 0 at the last epoch."""
        if self.weight_decay > 0:
            decay = [p for p in self.model.parameters() if p.dim() >= 2]
            rest = [p for p in self.model.parameters() if p.dim() < 2]
            opt = torch.optim.AdamW(
                [
                    {"params": decay, "weight_decay": self.weight_decay},
                    {"params": rest, "weight_decay": 0.0},
                ],
                lr=self.lr,
            )
        else:
            opt = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        if self.warmup_steps == 0 and self.schedule == "constant":
            return opt
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, partial(lr_factor, warmup=self.warmup_steps, total=total, schedule=self.schedule)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _validation_rows(trainer: L.Trainer) -> int:
    """How many validation rows this process can see at most (the rank buffers' size; 0 if
    the loaders have no sized dataset)."""
    loaders = trainer.val_dataloaders
    if loaders is None:
        return 0
    loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
    try:
        return sum(len(loader.dataset) for loader in loaders)
    except (AttributeError, TypeError):
        return 0


def lr_factor(step: int, *, warmup: int, total: int, schedule: str) -> float:
    """The learning-rate multiplier at optimiser step ``step``: linear warm-up over ``warmup``
    steps, then constant or a linear/cosine decay that reaches 0 at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    done = min((step - warmup) / max(total - warmup, 1), 1.0)
    if schedule == "linear":
        return 1.0 - done
    return 0.5 * (1.0 + math.cos(math.pi * done))
