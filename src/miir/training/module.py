"""The Lightning module that trains MIIR: masking per step (pure, seeded), losses, validation
under both protocols."""

from __future__ import annotations

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor

from miir.evaluation.evaluate import TwoProtocolRanks
from miir.models.miir import MIIR, mii_mask, pack_windows, rec_mask, trim_left_padding


def step_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, epoch, batch, rank), stable across runs."""
    return int(
        np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1
    )


class MIIRModule(L.LightningModule):
    """Trains ``model`` with ``objective`` ('mii': Eq. 13, 'rec': Eq. 14)."""

    def __init__(
        self,
        model: MIIR,
        *,
        lr: float,
        seed: int,
        objective: str,
        bf16: bool = False,
        pack: bool = False,
    ) -> None:
        super().__init__()
        if objective not in ("mii", "rec"):
            raise ValueError(f"objective must be 'mii' or 'rec', got {objective!r}")
        self.model = model
        self.lr = lr
        self.seed = seed
        self.objective = objective
        self.bf16 = bf16
        self.pack = pack
        self.ranks = TwoProtocolRanks()

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def mask(self, items: Tensor, batch_idx: int):
        gen = torch.Generator(device=items.device)
        gen.manual_seed(step_seed(self.seed, self.current_epoch, batch_idx, self.global_rank))
        present = self.model.present(items)  # (B, n, F)
        cfg = self.model.config
        if self.objective == "rec":
            return rec_mask(present, cfg.mask_prob, generator=gen)
        return mii_mask(present, cfg.mask_prob, cfg.item_mask_prob, generator=gen)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        (items,) = batch  # (B, n)
        # the same loss on fewer tokens: windows packed into shared rows, or shared padding cut
        if self.pack:
            items, packing = pack_windows(items, self.model.config.max_len)  # (R, n)
        else:
            items, packing = trim_left_padding(items), None  # (B, m)
        masked = self.mask(items, batch_idx)
        with self._autocast():
            loss, parts = self.model.loss(items, masked, packing)
        n_seqs = len(items) if packing is None else packing.n_windows
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
        self.ranks = TwoProtocolRanks()

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        history, target, negatives = batch  # (B, n - 1), (B,), (B, K)
        with self._autocast():
            scores = self.model.score(history)  # (B, N + 2)
        self.ranks.update(scores.float(), target, negatives)

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
