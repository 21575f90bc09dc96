"""Named settings presets: what ``miir train --preset NAME`` (and a grid's ``preset:``) puts
under a run's own options.

- ``default``: nothing; the class defaults of every config are the measured best recipe
  (``bench/results/recipe.md``), so a first-time user gets the best measured model.
- ``paper``: the MIIR paper's Section 4.3 settings: Adam at lr 1e-4, batch 128, 100 epochs
  (no early stop before), Xavier initialisation, and for MIIR and its variants dropout 0.5,
  mask probability 0.5, no whole-item or last-item masking, bidirectional DFSA scored
  from the appended query item (no causal attention, no next-item loss), the loss averaged
  per sequence (Eq. 13), a multi-valued field's cross-entropy averaged over its values
  (Eq. 11). Baselines keep their own model options (the paper sets them "following the
  suggestions from the original papers").

The order is: preset, then a config file's tables, then command-line options.
"""

from __future__ import annotations

from typing import Any

from miir.errors import ConfigError

_PAPER_MIIR: dict[str, Any] = {
    "dropout": 0.5,
    "mask_prob": 0.5,
    "item_mask_prob": 0.0,
    "last_item_prob": 0.0,
    "embedding_init": "xavier",
    "field_weights": {},
    "norm_first": False,
    "causal": False,
    "next_item_weight": 0.0,
    "loss_mean": "sequence",
    "multi_loss": "mean",
    "embedding_size": 64,
    "n_heads": 4,
    "n_layers": 3,
    "max_len": 20,
}
_PAPER_TRAIN: dict[str, Any] = {
    "lr": 1e-4,
    "batch_size": 128,
    "max_epochs": 100,
    "min_epochs": 100,
    "grad_clip": 5.0,
    "weight_decay": 0.0,
    "warmup_epochs": 0.0,
    "lr_schedule": "constant",
    "copies": 1,
    "window_stride": None,
}

PRESETS: dict[str, str] = {
    "default": "the measured best recipe (the class defaults)",
    "paper": "the MIIR paper's settings (Section 4.3): lr 1e-4, dropout 0.5, 100 epochs",
}


def preset_overrides(preset: str, model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model options, train options) of ``preset`` for the registered model ``model``."""
    from miir.models import get_entry
    from miir.models.miir import MIIR

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    if preset == "default":
        return {}, {}
    entry = get_entry(model)
    return (dict(_PAPER_MIIR) if entry.cls is MIIR else {}), dict(_PAPER_TRAIN)
