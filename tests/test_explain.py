"""Attention maps of MIIR (the weights of the scoring pass) and `miir explain`."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from helpers import SHORT_RUN, random_windows, small_model
from miir.cli import app
from miir.data.artifact import Artifact
from miir.explain import case_study, explain, plot_attention
from miir.models import VARIANTS
from miir.models.base import AttentionMaps
from miir.training.checkpoint import save_checkpoint

runner = CliRunner()


def appends_query(model) -> bool:
    """The paper's scoring pass appends an all-missing query item; a next-item model (the
    default recipe) scores from the last history item and appends nothing."""
    return model.config.next_item_weight == 0


def expected_allowed(model, history: torch.Tensor) -> torch.Tensor:
    """(B, T, T) which keys each query token may attend to, from the definitions alone:
    real keys only (no padding); SFSA (Eq. 16): the same item or the same field type; MIIR-M
    (Eq. 15): no side field missing in the data; causal: the same or an earlier item; and
    every token to itself."""
    n_hist = history.shape[1]
    items = history
    if appends_query(model):
        items = torch.cat([history, torch.ones(len(history), 1, dtype=torch.long)], 1)  # (B, n)
    F = model.n_fields
    n = items.shape[1]
    key = (items != 0)[:, :, None].expand(-1, -1, F).clone()  # (B, n, F)
    if model.config.mask_missing:
        feats = model.encoder.features
        for j, f in enumerate(model.fields, start=1):
            key[:, :, j] &= feats.field_present(f.name, items)
    allowed = key.reshape(len(items), 1, n * F).expand(-1, n * F, -1)  # (B, T, T)
    if model.config.attention == "sparse":
        pos = torch.arange(n).repeat_interleave(F)
        fld = torch.arange(F).repeat(n)
        allowed = allowed & ((pos[:, None] == pos[None]) | (fld[:, None] == fld[None]))
    if model.config.causal:
        pos = torch.arange(n).repeat_interleave(F)
        allowed = allowed & (pos[None, :] <= pos[:, None])
    assert n == n_hist + appends_query(model)
    return allowed | torch.eye(n * F, dtype=torch.bool)


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize(
    "options",
    [{}, {"norm_first": True}, {"causal": False}],
    ids=["default", "pre-ln", "paper-dfsa"],
)
def test_attention_is_the_scoring_pass(name: str, options: dict) -> None:
    model = small_model(name, n_layers=2, **options).eval()
    assert isinstance(model, AttentionMaps)
    history = random_windows(6, model.history_len, seed=4, min_len=2)
    history[0] = torch.arange(2, 2 + model.history_len)  # a full row: no column is cut
    fast = model.score(history)  # the fused kernel
    scores, attention = model.score_with_attention(history)
    torch.testing.assert_close(scores, fast, rtol=0, atol=1e-5)
    cand = history[:, -3:].clamp(min=2)
    torch.testing.assert_close(
        model.score_with_attention(history, cand)[0], model.score(history, cand), rtol=0, atol=1e-5
    )
    B, T = len(history), (model.history_len + appends_query(model)) * model.n_fields
    assert attention.shape == (2, B, 2, T, T)
    torch.testing.assert_close(model.attention(history), attention)

    # weights of the rows of real tokens: a distribution over exactly the allowed keys
    allowed = expected_allowed(model, history)[None, :, None]  # (1, B, 1, T, T)
    scored = history
    if appends_query(model):
        scored = torch.cat([history, torch.ones(B, 1, dtype=torch.long)], 1)
    real_query = (scored != 0).repeat_interleave(model.n_fields, 1)  # (B, T)
    rows = real_query[None, :, None, :, None].expand_as(attention)
    torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:-1]))
    assert torch.all(attention[rows & ~allowed] == 0)  # padding, and pairs the variant forbids
    assert torch.all(attention[rows & allowed.expand_as(attention)] > 0)
    if model.config.attention == "sparse" or model.config.causal:
        assert (~allowed).any()  # the test did see forbidden pairs


def test_fast_path_unchanged_in_training_mode() -> None:
    """With dropout 0 in training mode both paths agree too (recording does not change the
    computation), and recording keeps the gradient path."""
    model = small_model("miir", n_layers=2).train()
    history = random_windows(4, model.history_len, seed=2)
    scores, attention = model.score_with_attention(history)
    torch.testing.assert_close(scores, model.score(history), rtol=0, atol=1e-5)
    scores[:, 2:].sum().backward()
    assert model.blocks[0].qkv.weight.grad is not None and attention.requires_grad


@pytest.mark.parametrize("causal", [True, False])
def test_explanation_of_a_random_model(tmp_path, causal: bool) -> None:
    """All four field kinds (text included) decode in the case study; the heat map is a PNG.
    The attention comes from the appended query's ID (the paper's model) or from the last
    history item's ID (the default recipe, which scores from there)."""
    model = small_model("miir", n_layers=2, causal=causal)
    expl = explain(model, [5, 9, 3, 12], target=20)
    L, h, F, n = expl.query_attention.shape
    assert (L, h, F, n) == (2, 2, 5, 4 if causal else 5)
    assert expl.attention_positions == (["1", "2", "3", "4"] + ([] if causal else ["next"]))
    assert ("position 4" in expl.scoring_token) == causal
    assert expl.fields == ["item_id", "brand", "cats", "title", "price"]
    assert abs(expl.query_attention.sum(axis=(2, 3)) - 1).max() < 1e-5
    md = case_study(expl, model, None, "Case")
    assert "| next | ? | item_id |" in md and "like item" in md and "Top-10" in md
    assert "The hidden next item item18 ranks" in md
    for item in ("item3", "item7", "item1", "item10"):  # ids 5, 9, 3, 12
        assert f"| {item} | item_id | {item} |" in md
    plot_attention(expl, tmp_path / "a.png", "t")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("causal", [True, False])
def test_explanation_with_one_token_per_item(tmp_path, causal: bool) -> None:
    """``fusion='item'``: the attention of the scoring pass runs over items, one row in the
    map; the summary shares go to item positions; every field is still imputed."""
    model = small_model("miir", n_layers=2, causal=causal, fusion="item")
    expl = explain(model, [5, 9, 3, 12], target=20)
    L, h, rows, n = expl.query_attention.shape
    assert (L, h, rows, n) == (2, 2, 1, 4 if causal else 5)
    assert expl.fused and expl.rows == ["item (all fields)"]
    assert expl.scoring_token.startswith("the last history item's token" if causal else "the next")
    assert abs(expl.query_attention.sum(axis=(2, 3)) - 1).max() < 1e-5
    scores, attention = model.score_with_attention(torch.tensor([[5, 9, 3, 12]]))
    torch.testing.assert_close(
        torch.from_numpy(expl.query_attention[:, :, 0]), attention[:, 0, :, -1].float()
    )
    torch.testing.assert_close(expl.scores, scores[0])
    assert {k: v.shape[0] for k, v in expl.imputed.items()} == dict.fromkeys(expl.imputed, 5)
    md = case_study(expl, model, None, "Case")
    assert "each item position (one token per item)" in md and "| next | ? | item_id |" in md
    plot_attention(expl, tmp_path / "a.png", "t")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained_run(planted_discard_artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("explain") / "run"
    cfg = ["--set", "embedding_size=16", "--set", "n_heads=2", "--set", "n_layers=2"]
    cfg += ["--set", "max_len=8"]
    res = runner.invoke(
        app, ["train", "--data", str(planted_discard_artifact), "--out", str(out), *cfg, *SHORT_RUN]
    )
    assert res.exit_code == 0, res.output
    return out


def test_explain_a_user(trained_run, planted_discard_artifact, tmp_path) -> None:
    art = Artifact(planted_discard_artifact)
    user = art.user_names[3]
    res = runner.invoke(
        app, ["explain", "--run", str(trained_run), "--user", user, "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 0, res.output
    out = tmp_path / "x"
    assert (out / "attention.png").read_bytes()[:4] == b"\x89PNG"
    att = json.loads((out / "attention.json").read_text())
    assert att["fields"] == ["item_id", "color", "tags", "size"]
    seq = [art.item_names[i] for i in art.sequence(3)]
    assert att["items"] == seq[:-1][-7:]  # the test history: the last max_len - 1 items
    weights = torch.tensor(att["query_attention"])  # (L, h, F, n)
    assert weights.shape == (2, 2, 4, 7)  # scored from the last of the 7 history items
    assert att["attention_positions"] == att["positions"][:-1]
    torch.testing.assert_close(weights.sum((2, 3)), torch.ones(2, 2), atol=1e-4, rtol=0)
    md = (out / "case_study.md").read_text()
    assert f"user {user}" in md and f"The hidden next item {seq[-1]} ranks" in md
    assert f"reads the last 7: {len(seq) - 1 - 7} older ones are left out" in md
    assert md.count("\n| ") >= 8 * 4 + 10  # a row per field and position, ten recommendations
    # a value the discard hid shows its ground truth beside the imputation
    color = art.fields["color"]
    hidden = [
        i for i in art.sequence(3)[:-1][-7:] if color.truth_present[i] and not color.present[i]
    ]
    for i in hidden:
        truth = color.vocab[int(color.truth_values[i])]
        assert f"| | color | *missing* | {truth} |" in md
    # the next item's own fields are hidden truth too
    target_color = color.vocab[int(color.truth_values[art.sequence(3)[-1]])]
    assert f"| next | | color |  | {target_color} |" in md


def test_explain_a_history_file(trained_run, tmp_path) -> None:
    hist = tmp_path / "h.json"
    hist.write_text(json.dumps(["i000", "i004", "i008"]), encoding="utf-8")
    res = runner.invoke(
        app, ["explain", "--run", str(trained_run), "--input", str(hist), "--out", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    att = json.loads((tmp_path / "attention.json").read_text())
    assert att["items"] == ["i000", "i004", "i008"] and att["positions"][-1] == "next"
    hist.write_text(json.dumps(["i000", "nope"]), encoding="utf-8")
    res = runner.invoke(
        app, ["explain", "--run", str(trained_run), "--input", str(hist), "--out", str(tmp_path)]
    )
    assert res.exit_code == 2 and "'nope' (position 2)" in res.output and "h.json" in res.output
    res = runner.invoke(app, ["explain", "--run", str(trained_run), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--user" in res.output


def test_explain_needs_attention_maps(tmp_path) -> None:
    save_checkpoint(small_model("sasrec"), tmp_path / "run" / "best")
    res = runner.invoke(
        app,
        ["explain", "--run", str(tmp_path / "run"), "--user", "u", "--out", str(tmp_path / "x")],
    )
    assert res.exit_code == 2 and "no attention maps" in res.output and "sasrec" in res.output
    assert not (tmp_path / "x").exists()
