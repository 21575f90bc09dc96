"""Training end to end on seeded synthetic data with planted structure: MIIR learns to
recommend and to impute; runs resume, are deterministic, and write self-describing results."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from miir.data.artifact import Artifact
from miir.models import variant_config
from miir.training.checkpoint import load_checkpoint
from miir.training.data import LengthBuckets, eval_rows, row_lengths, training_windows
from miir.training.module import SequenceModule, _validation_rows
from miir.training.train import ConfiguredEarlyStopping, TrainConfig, train, training_loader

FAST = dict(batch_size=32, lr=3e-3, patience=100, progress=False, threads=2)


def small_model(variant: str = "miir", **kw):
    return variant_config(
        variant, embedding_size=32, n_heads=2, n_layers=2, dropout=0.1, max_len=8, **kw
    )


def test_windows_and_eval_rows(planted_artifact) -> None:
    art = Artifact(planted_artifact)
    w = training_windows(art, 8)
    # 240 users x 10 training items, windows of 8 stepping back 8 -> [2..10) and [0..2): 2 each
    assert w.shape == (480, 8)
    seq0 = art.sequence(0)
    assert w[0].tolist() == seq0[2:10].tolist()
    assert w[1].tolist() == [0] * 6 + seq0[0:2].tolist()
    valid, test = eval_rows(art, "valid", 8), eval_rows(art, "test", 8)
    assert valid.history.shape == (240, 7)
    assert valid.history[0].tolist() == seq0[3:10].tolist() and valid.target[0] == seq0[10]
    assert test.history[0].tolist() == seq0[4:11].tolist() and test.target[0] == seq0[11]
    # the wide id tables are int32 (issue 9: memory); every earlier item is in ``seen``
    assert valid.negatives.dtype == valid.seen.dtype == torch.int32
    assert valid.seen[0][valid.seen[0] != 0].tolist() == seq0[:10].tolist()
    # the windows hold exactly the training parts seq[:-2], each item once: no validation or
    # test target reaches training
    train_items = sorted(int(i) for u in range(art.n_users) for i in art.sequence(u)[:-2])
    assert sorted(int(i) for i in w[w != 0]) == train_items
    sliding = training_windows(art, 8, stride=1)
    assert len(sliding) > len(w)


@pytest.fixture(scope="module")
def trained(planted_discard_artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "miir"
    results = train(
        planted_discard_artifact,
        out,
        "miir",
        small_model(item_mask_prob=0.2),
        TrainConfig(max_epochs=25, **FAST),
    )
    return out, results


def test_miir_learns_to_recommend(trained) -> None:
    out, results = trained
    # The next item is determined by the last one. Chance under full ranking over 40 items:
    # HR@5 = 1/8, HR@10 = 1/4, MRR about 0.1. (Sampled metrics are trivial here: the negatives
    # avoid the user's history, which is its whole group, so they only test the group.)
    full = results["test"]["full"]
    assert full["HR@5"] > 0.4 and full["HR@10"] > 0.8 and full["MRR"] > 0.3, results["test"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["test"] == results["test"]
    assert sorted(np.load(out / "ranks_test.npz").files) == ["full", "full_masked", "sampled"]
    log = (out / "logs" / "main" / "metrics.csv").read_text()
    assert "train/loss_color" in log and "valid/full/NDCG@10" in log


def test_miir_imputes_hidden_categorical_field(trained, planted_discard_artifact) -> None:
    """Colors hidden by the discard are never supervised, yet recoverable from context."""
    out, _ = trained
    model, _ = load_checkpoint(out / "best")
    art = Artifact(planted_discard_artifact)
    color = art.fields["color"]
    hidden_items = np.flatnonzero(color.truth_present & ~color.present)
    assert len(hidden_items) > 5
    rows = eval_rows(art, "test", 8).history  # (U, 7) full histories
    preds = model.impute(rows)["color"].argmax(-1)  # (U, 7) most probable value ids
    correct = total = 0
    for item in hidden_items:
        where = rows == int(item)
        if where.any():
            guess = preds[where]
            correct += int((guess == int(color.truth_values[item])).sum())
            total += int(where.sum())
    assert total > 50
    assert correct / total > 0.6, (correct, total)  # chance is 1/4


def test_training_is_deterministic_and_resumable(planted_artifact, tmp_path) -> None:
    cfg = TrainConfig(max_epochs=2, limit_train_batches=3, **FAST)
    a = train(planted_artifact, tmp_path / "a", "miir", small_model(), cfg)
    b = train(planted_artifact, tmp_path / "b", "miir", small_model(), cfg)
    assert a["test"] == b["test"]
    # deterministic algorithms on, without their NaN fill of new tensors (not needed for it)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.utils.deterministic.fill_uninitialized_memory
    ma, _ = load_checkpoint(tmp_path / "a" / "best")
    mb, _ = load_checkpoint(tmp_path / "b" / "best")
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    # resume: a 3-epoch run continued from a's last checkpoint trains one more epoch only
    longer = TrainConfig(max_epochs=3, limit_train_batches=3, **FAST)
    train(planted_artifact, tmp_path / "a", "miir", small_model(), longer, resume=True)
    first = (tmp_path / "a" / "logs" / "main" / "metrics.csv").read_text().strip().splitlines()
    assert {line.split(",")[0] for line in first[1:]} == {"0", "1"}  # kept, not rewritten
    resumed = (
        (tmp_path / "a" / "logs" / "main-resumed1" / "metrics.csv").read_text().strip().splitlines()
    )
    assert {line.split(",")[0] for line in resumed[1:]} == {"2"}
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["train_config"]["max_epochs"] == 3
    assert [e["train_config"]["max_epochs"] for e in run["earlier"]] == [2]  # history kept


def test_a_killed_run_resumes_from_its_last_finished_epoch(
    planted_artifact, tmp_path, monkeypatch
) -> None:
    cfg = TrainConfig(max_epochs=3, limit_train_batches=2, **FAST)
    original = SequenceModule.on_train_epoch_start

    def crash_in_epoch_2(self) -> None:
        if self.current_epoch == 2:
            raise RuntimeError("killed")
        original(self)

    monkeypatch.setattr(SequenceModule, "on_train_epoch_start", crash_in_epoch_2)
    with pytest.raises(RuntimeError, match="killed"):
        train(planted_artifact, tmp_path / "r", "miir", small_model(), cfg)
    last = tmp_path / "r" / "lightning" / "main" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1  # saved after each epoch
    monkeypatch.setattr(SequenceModule, "on_train_epoch_start", original)
    train(planted_artifact, tmp_path / "r", "miir", small_model(), cfg, resume=True)
    resumed = (tmp_path / "r" / "logs" / "main-resumed1" / "metrics.csv").read_text().splitlines()
    assert {line.split(",")[0] for line in resumed[1:]} == {"2"}  # only the lost epoch again


def test_validation_ranks_fill_one_buffer_sized_to_the_split(
    planted_artifact, tmp_path, monkeypatch
) -> None:
    """Each validation epoch sizes its rank buffers to the validation split (ranks kept batch
    by batch fragment the heap, issue 9) and ranks every validation user."""
    seen = []
    original = SequenceModule.on_validation_epoch_end

    def record(self) -> None:
        seen.append((_validation_rows(self.trainer), len(self.ranks.full)))
        original(self)

    monkeypatch.setattr(SequenceModule, "on_validation_epoch_end", record)
    cfg = TrainConfig(max_epochs=2, limit_train_batches=2, **FAST)
    train(planted_artifact, tmp_path / "v", "miir", small_model(), cfg, stages=())
    assert seen == [(240, 240)] * 2  # 240 planted users


def test_validation_scores_in_float32_under_bf16_training() -> None:
    """A bf16 run trains under autocast but validates in float32, as the test evaluation
    does: bf16 scores would tie items with the target, and ties count against it."""
    from helpers import small_model as build

    model = build("sasrec", max_len=6).eval()
    module = SequenceModule(model, lr=1e-3, seed=1, bf16=True)
    history = torch.randint(2, model.n_items + 2, (4, model.history_len))
    with torch.no_grad():
        got = module._score(history)
        expected = model.score(history)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            low = model.score(history).float()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)
    assert not torch.equal(low, expected)  # what autocast would have given


def test_no_trainer_outlives_its_stage(planted_artifact, tmp_path, monkeypatch) -> None:
    """By the final evaluation every stage's trainer is gone, with its module, optimizer state
    and validation rows (a callback kept past ``fit`` held them all through Lightning's bound
    ``log`` methods: issue 9, ~90 MiB of heap on amazon-beauty), and the artifact holds no
    field tables (the model's buffers have what it reads). During a fit the validation rows
    exist once, reordered for the loader: no ``EvalRows`` in user order is held beside them."""
    import gc

    import lightning as L

    import miir.training.module as module_module
    import miir.training.train as train_module
    from miir.data.artifact import Artifact
    from miir.training.data import EvalRows

    kinds = (L.Trainer, L.LightningModule, torch.optim.Optimizer)
    gc.collect()
    before = {id(o) for o in gc.get_objects() if isinstance(o, (*kinds, EvalRows, Artifact))}
    alive, tables, rows = [], [], []
    original, original_ranks = train_module.evaluate_scores, module_module.ProtocolRanks

    def new(kind: type) -> list:
        return [o for o in gc.get_objects() if isinstance(o, kind) and id(o) not in before]

    def count(*args, **kwargs):
        gc.collect()
        alive.append(len(new(kinds)))
        tables.append(sum("fields" in a.__dict__ for a in new(Artifact)))
        return original(*args, **kwargs)

    def ranks(*args, **kwargs):  # at the start of each validation epoch
        gc.collect()
        rows.append(len(new(EvalRows)))
        return original_ranks(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate_scores", count)
    monkeypatch.setattr(module_module, "ProtocolRanks", ranks)
    cfg = TrainConfig(max_epochs=1, limit_train_batches=2, **FAST)
    train(planted_artifact, tmp_path / "g", "miir-f", small_model("miir-f"), cfg)
    assert alive == [0, 0]  # valid and test, after both stages of MIIR-F
    assert tables == [0, 0]
    assert len(rows) >= 2 and not any(rows)  # each stage validated once at least


def test_resumed_early_stopping_keeps_the_configured_patience() -> None:
    first = ConfiguredEarlyStopping(monitor="m", mode="max", patience=4)
    first.wait_count, first.best_score = 3, torch.tensor(0.5)
    resumed = ConfiguredEarlyStopping(monitor="m", mode="max", patience=10)
    resumed.load_state_dict(first.state_dict())
    assert resumed.patience == 10  # the new configuration, not the checkpoint's 4
    assert resumed.wait_count == 3 and float(resumed.best_score) == 0.5


@pytest.mark.parametrize("variant", ["miir-f", "sparse-miir-r", "miir-m"])
def test_variants_train(planted_artifact, tmp_path, variant) -> None:
    res = train(
        planted_artifact,
        tmp_path / variant,
        variant,
        small_model(variant),
        TrainConfig(max_epochs=1, limit_train_batches=2, **FAST),
    )
    assert 0 <= res["test"]["full"]["MRR"] <= 1
    _, meta = load_checkpoint(tmp_path / variant / "best")
    assert meta["config"] == small_model(variant).model_dump(mode="json")
    if variant == "miir-f":
        assert set(res["stages"]) == {"pretrain", "main"}
        assert (tmp_path / variant / "best_pretrain" / "model.safetensors").exists()


def test_min_epochs_binds_the_first_stage_only(planted_artifact, tmp_path, monkeypatch) -> None:
    """MIIR-F's fine-tuning starts from the best MII model: the floor on epochs (for MII's
    plateau at the popularity level) does not hold it, early stopping may stop it at once."""
    import lightning as L

    floors = []
    init = L.Trainer.__init__

    def spy(self, *args, **kwargs):
        floors.append(kwargs["min_epochs"])
        init(self, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "__init__", spy)
    cfg = TrainConfig(max_epochs=2, min_epochs=2, limit_train_batches=2, **FAST)
    train(planted_artifact, tmp_path / "f", "miir-f", small_model("miir-f"), cfg, stages=())
    assert floors == [2, 0]  # pretrain (MII), then the fine-tuning


@pytest.mark.slow
def test_ddp_two_cpu_processes(planted_artifact, tmp_path) -> None:
    """Two DDP processes (gloo on CPU) train one short epoch through the CLI."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "miir.cli",
        "train",
        "--data",
        str(planted_artifact),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--limit-train-batches",
        "2",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--threads",
        "1",
        "--no-progress",
        "--batch-size",
        "16",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GLOBAL_RANK" not in proc.stderr  # Lightning's banners stay off the terminal
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["train_config"]["devices"] == 2
    assert results["stages"]["main"]["world_size"] == 2  # two processes trained
    assert (out / "best" / "model.safetensors").exists()


def test_early_stopping_waits_for_min_epochs(planted_artifact, tmp_path) -> None:
    """A model that cannot improve (lr ~ 0) stops after patience epochs, but not before min_epochs."""
    base = dict(
        batch_size=32,
        lr=1e-12,
        patience=1,
        max_epochs=6,
        limit_train_batches=1,
        progress=False,
        threads=2,
    )

    def epochs(run: str) -> set[str]:
        lines = (
            (tmp_path / run / "logs" / "main" / "metrics.csv").read_text().strip().splitlines()[1:]
        )
        return {line.split(",")[0] for line in lines}

    train(
        planted_artifact,
        tmp_path / "early",
        "miir",
        small_model(),
        TrainConfig(min_epochs=0, **base),
    )
    train(
        planted_artifact,
        tmp_path / "floor",
        "miir",
        small_model(),
        TrainConfig(min_epochs=4, **base),
    )
    assert epochs("early") == {"0", "1"}
    assert epochs("floor") == {"0", "1", "2", "3"}


def test_length_buckets_batch_similar_lengths(planted_artifact) -> None:
    windows = training_windows(Artifact(planted_artifact), 8)  # 240 of 8 items, 240 of 2
    lengths = row_lengths(windows)
    sampler = LengthBuckets(lengths, batch_size=32, seed=3, pool_batches=5)
    first = sampler.batches()
    rows = torch.cat(first)
    assert sorted(rows.tolist()) == list(range(len(windows)))  # every row once
    assert [len(b) for b in first] == [32] * 15  # 480 rows: no short batch
    mixed = sum(len(set(lengths[b].tolist())) > 1 for b in first)
    assert mixed <= 3  # at most one batch per pool straddles the two lengths
    random = torch.randperm(480, generator=torch.Generator().manual_seed(0)).split(32)
    assert sum(len(set(lengths[b].tolist())) > 1 for b in random) == 15
    assert [b.tolist() for b in sampler.batches()] == [b.tolist() for b in first]  # seeded
    sampler.set_epoch(1)
    assert [b.tolist() for b in sampler.batches()] != [b.tolist() for b in first]  # per epoch
    # a DataLoader with the same batch size cuts exactly these batches
    loader = training_loader(windows, TrainConfig(batch_size=32, seed=3, batching="buckets"))
    loader.sampler.set_epoch(4)
    expected = [windows[b] for b in loader.sampler.batches()]
    got = [b[0] for b in loader]
    assert len(got) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    # the one short batch comes last
    odd = LengthBuckets(lengths[:100], batch_size=32, seed=0, pool_batches=2).batches()
    assert [len(b) for b in odd] == [32, 32, 32, 4]


@pytest.mark.parametrize("batching", ["buckets", "random"])
def test_training_with_other_batching(planted_artifact, tmp_path, batching) -> None:
    cfg = TrainConfig(max_epochs=1, limit_train_batches=3, batching=batching, **FAST)
    res = train(planted_artifact, tmp_path / "r", "miir", small_model(), cfg)
    assert 0 <= res["test"]["full"]["MRR"] <= 1
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["train_config"]["batching"] == batching
