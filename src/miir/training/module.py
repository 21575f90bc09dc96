"""The Lightning module that trains any registered model: batch transform per step, a seeded
generator for the model's masks, the loss, and validation under every protocol."""

from __future__ import annotations

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor

from miir.evaluation.evaluate import ProtocolRanks
from miir.models.base import SequenceModel
from miir.models.batch import BatchMode, make_batch


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
    ) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
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
        self.ranks = ProtocolRanks()

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        history, target, negatives, seen = batch  # (B, n - 1), (B,), (B, K), (B, S)
        with self._autocast():
            scores = self.model.score(history)  # (B, N + 2)
        self.ranks.update(scores.float(), target, negatives, seen)

    def on_validation_epoch_end(self) -> None:
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

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)
