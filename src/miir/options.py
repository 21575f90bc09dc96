"""Options added after models were first trained and runs first recorded.

A saved config or a run record that lacks one of them predates it, and was trained with the
behaviour the option's neutral value below reproduces, whatever today's default is: loading a
checkpoint fills an absent option in at this value (a model saved before ``multi_loss``
existed was trained with Eq. 11's mean, not today's per-value default), and a run's key leaves
an option at this value out (:func:`miir.benchmark.keyed_config`), so that adding an option
never invalidates the runs recorded before it. Every option added from now on enters here.
"""

from __future__ import annotations

from typing import Any

NEUTRAL_OPTIONS: dict[str, Any] = {
    # model options (MIIR, issue 9)
    "last_item_prob": 0.0,
    "last_item_clean": False,
    "embedding_init": "xavier",
    "norm_first": False,  # MIIR only (SASRec and FDSA always record theirs)
    "causal": False,  # MIIR (issue 9)
    "next_item_weight": 0.0,  # MIIR (issue 9)
    "next_item_clean": False,  # MIIR (issue 9)
    "next_item_exclude_history": False,  # MIIR (issue 9)
    "next_item_fraction": 1.0,  # MIIR (issue 9)
    "sampled_negatives": 0,  # MIIR (issue 9)
    "side_output": False,  # MIIR (issue 9)
    "readout": "id",  # MIIR (issue 9)
    "id_stream": False,  # MIIR (issue 9)
    "fusion": "dense",  # MIIR (issue 9)
    "loss_mean": "sequence",  # MIIR (issue 9; BERT4Rec has its own loss_norm)
    "multi_loss": "mean",  # MIIR (issue 9)
    "rfs_prob": 0.0,  # FDSA and NOVA (issue 10)
    # train options (issue 9)
    "weight_decay": 0.0,
    "warmup_epochs": 0.0,
    "lr_schedule": "constant",
    "copies": 1,
}
