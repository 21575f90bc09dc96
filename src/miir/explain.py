"""Explanations of one recommendation (the MIIR paper's Figures 4 and 5, Section 5.5).

For one history, from a trained run:

- ``attention.png``: the attention from the scoring token's ID field to every field of every
  position, one panel per layer and head, as a fields x positions heat map (Fig. 5). The
  scoring token is the appended query item's ID (the paper's model, ``next_item_weight=0``) or,
  for a model that scores from the last history item (the default recipe), that item's ID.
  The weights come from the pass that scores (:meth:`~miir.models.miir.MIIR.score_with_attention`),
  not from a second model of the attention. A model with one token per item
  (``fusion='item'``) has one row, the item token, in place of the fields.
- ``case_study.md``: the sequence with each field's known value, the value the data hides
  (where the artifact keeps the ground truth of a discard, and the target's own fields), and
  the imputed value, side by side (Fig. 4); then the top-10 recommendations.
- ``attention.json``: the same weights as numbers, with the field names and item names.

The model needs the :class:`~miir.models.base.AttentionMaps` capability with MIIR's token
layout (every item a group of F field tokens, or one, ``score_with_attention``) and the
:class:`~miir.models.base.Imputer` capability: the MIIR variants; any other model is refused
with an error that says so.
Artifacts keep text fields as vectors only, so an imputed text is shown as the catalogue item
whose text vector is nearest (cosine), named by its item id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from miir.atomic import atomic_figure, atomic_json, atomic_write_text
from miir.data.artifact import Artifact
from miir.data.schema import FIRST_VALUE_ID, MISSING_ID, FieldKind
from miir.errors import ConfigError, DataError
from miir.models.base import AttentionMaps, Imputer, SequenceModel
from miir.models.fields import ID_FIELD
from miir.training.checkpoint import load_checkpoint

TOP_K = 10
QUERY_LABEL = "next"
FUSED_LABEL = "item (all fields)"


@dataclass
class Explanation:
    """What one scoring pass says about one history (n - 1 items plus the query item)."""

    items: list[int]  # the n - 1 history item ids the model read, oldest first
    fields: list[str]  # item_id, then the side fields in the model's order
    query_attention: np.ndarray  # (L, h, F or 1, m): from the scoring token to every token
    scores: Tensor  # (N + 2,) next-item scores, ids 0 and 1 at -inf
    imputed: dict[str, Tensor]  # field -> (n, V + 2) probabilities or (n, D) text vectors
    target: int | None = None  # the known next item, when there is one
    dropped: int = 0  # older items of the given history the model does not read
    query_appended: bool = True  # False: scored from the last history item (no query token)

    @property
    def fused(self) -> bool:
        """One token per item (``fusion='item'``): the attention runs over items, not fields."""
        return self.query_attention.shape[2] == 1 and len(self.fields) > 1

    @property
    def rows(self) -> list[str]:
        """The rows of ``query_attention``: the fields, or one row for the fused item token."""
        return [FUSED_LABEL] if self.fused else self.fields

    @property
    def positions(self) -> list[str]:
        return [str(i + 1) for i in range(len(self.items))] + [QUERY_LABEL]

    @property
    def attention_positions(self) -> list[str]:
        """The positions of the scoring pass (the columns of ``query_attention``)."""
        return self.positions if self.query_appended else self.positions[:-1]

    @property
    def scoring_token(self) -> str:
        """Whose ID field (or fused item token) the attention comes from, in words."""
        token = "token" if self.fused else "ID"
        if self.query_appended:
            return f"the next item's {token}"
        return f"the last history item's {token} (position {len(self.items)})"


def require_attention(model: SequenceModel, name: str) -> None:
    """A clear error for a model that cannot show its attention."""
    if not isinstance(model, AttentionMaps) or not hasattr(model, "score_with_attention"):
        raise ConfigError(
            f"model {name!r} ({model.display_name()}) has no attention maps: `miir explain` "
            "needs a model with the AttentionMaps capability (the MIIR variants)"
        )


@torch.no_grad()
def explain(model: SequenceModel, history: list[int], target: int | None = None) -> Explanation:
    """Score ``history`` (item ids, oldest first; the last ``history_len`` are read) and keep
    the attention of that pass and the imputation of every field at every position."""
    require_attention(model, getattr(model, "registry_name", type(model).__name__))
    if not isinstance(model, Imputer):
        raise ConfigError(f"model {model.display_name()} cannot impute side fields")
    model.eval()
    kept = [int(i) for i in history][-model.history_len :]
    if not kept:
        raise DataError("the history is empty: nothing to explain")
    rows = torch.tensor([kept], dtype=torch.long)  # (1, n - 1)
    scores, attention = model.score_with_attention(rows)  # (1, N + 2), (L, 1, h, T, T)
    n = len(kept) + 1
    # the scoring pass appends the query item, or (next-item scoring) reads the history only
    appended = getattr(model, "next_proj", None) is None
    m = n if appended else n - 1  # positions in the scoring pass
    per_item = attention.shape[-1] // m  # tokens per item: F, or 1 (fusion='item')
    scoring = (m - 1) * per_item  # the ID token that scores: the query's or the last item's
    weights = attention[:, 0, :, scoring, :]  # (L, h, T)
    L, h, _ = weights.shape
    per_token = weights.reshape(L, h, m, per_item).transpose(2, 3)  # (L, h, F or 1, m)
    items = torch.tensor([[*kept, MISSING_ID]], dtype=torch.long)  # (1, n)
    hidden = torch.zeros(1, n, model.n_fields, dtype=torch.bool)
    hidden[:, -1] = True  # the query item, exactly as in the scoring pass
    imputed = {k: v[0] for k, v in model.impute(items, hidden).items()}  # (n, ...)
    fields = [ID_FIELD, *model.catalogue.names]
    dropped = len(history) - len(kept)
    return Explanation(
        kept, fields, per_token.float().numpy(), scores[0], imputed, target, dropped, appended
    )


# ---------------------------------------------------------------------- the heat maps


def plot_attention(expl: Explanation, path: Path, title: str = "") -> None:
    """One fields x positions heat map per layer (rows) and head (columns), one colour scale
    (one row, the item token, for a model with one token per item)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L, h, F, n = expl.query_attention.shape
    fig, axes = plt.subplots(
        L,
        h,
        figsize=(max(3.0, 0.32 * n + 1.2) * h, (0.3 * F + 1.0) * L + 0.6),
        squeeze=False,
        constrained_layout=True,
    )
    vmax = float(expl.query_attention.max())
    image = None
    for layer in range(L):
        for head in range(h):
            ax = axes[layer][head]
            image = ax.imshow(
                expl.query_attention[layer, head], aspect="auto", cmap="viridis", vmin=0, vmax=vmax
            )
            ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=8)
            ax.set_yticks(range(F), expl.rows if head == 0 else [""] * F, fontsize=7)
            ax.set_xticks(range(n), expl.attention_positions, fontsize=6, rotation=90)
            if layer == L - 1:
                ax.set_xlabel("item position", fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.8, label=f"attention from {expl.scoring_token}")
    if title:
        fig.suptitle(title, fontsize=9)
    atomic_figure(fig, path)


# ---------------------------------------------------------------------- the case study


class _Values:
    """Turns stored and predicted values of the model's fields into text."""

    def __init__(self, model: SequenceModel, artifact: Artifact | None) -> None:
        self.model = model
        self.catalogue = model.catalogue
        self.features = model.encoder.features  # type: ignore[attr-defined]
        self.names = self.catalogue.item_names or []
        self.truth = artifact.fields if artifact is not None else None

    def item(self, item_id: int) -> str:
        return self.names[item_id] if item_id < len(self.names) else f"#{item_id}"

    def stored(self, field: str, value: Any) -> str:
        """A value as stored in an item table (id, id list or vector)."""
        kind = self.catalogue.field(field).kind
        vocab = self.catalogue.vocabs.get(field, [])
        if kind == FieldKind.TEXT:
            return "(text vector)"
        if kind == FieldKind.MULTI_CATEGORICAL:
            return ", ".join(str(vocab[int(v)]) for v in np.asarray(value) if v >= FIRST_VALUE_ID)
        return str(vocab[int(value)])

    def known(self, field: str, item_id: int) -> str | None:
        """The value the model sees, or None where it is missing."""
        ids = torch.tensor([item_id])
        if not bool(self.features.field_present(field, ids)[0]):
            return None
        return self.stored(field, self.features.values(field, ids)[0].numpy())

    def hidden_truth(self, field: str, item_id: int, whole_item: bool) -> Any:
        """The ground truth the model does not see: a discarded value (the artifact keeps it
        under truth/), or any value of the hidden target item (``whole_item``)."""
        if self.truth is None or item_id < FIRST_VALUE_ID:
            return None
        fd = self.truth[field]
        if not fd.truth_present[item_id] or (fd.present[item_id] and not whole_item):
            return None
        return fd.truth_values[item_id]

    def imputed(self, field: str, pred: Tensor, truth: Any) -> str:
        """A prediction as text: the top value and its probability (categorical, numeric), the
        values with probability >= 0.5 (multi-valued), the nearest item's text (text)."""
        kind = self.catalogue.field(field).kind
        vocab = self.catalogue.vocabs.get(field, [])
        if kind == FieldKind.TEXT:
            return self._nearest_text(field, pred, truth)
        if kind == FieldKind.MULTI_CATEGORICAL:
            chosen = [int(i) for i in torch.argsort(pred, descending=True) if pred[i] >= 0.5]
            if not chosen:
                top = int(pred.argmax())
                return f"none >= 0.5 (top: {vocab[top]} {float(pred[top]):.2f})"
            return ", ".join(f"{vocab[i]} ({float(pred[i]):.2f})" for i in chosen)
        top = int(pred.argmax())
        mark = " ✓" if truth is not None and int(truth) == top else ""
        return f"{vocab[top]} ({float(pred[top]):.2f}){mark}"

    def _nearest_text(self, field: str, pred: Tensor, truth: Any) -> str:
        table = self.features.table(field).float()  # (N + 2, D)
        present = self.features.field_present(field, torch.arange(len(table)))  # (N + 2,)
        sims = torch.nn.functional.cosine_similarity(table, pred[None], dim=-1)  # (N + 2,)
        sims[~present] = -2.0
        text = "(no item has this text)"
        if bool(present.any()):
            best = int(sims.argmax())
            text = f"like {self.item(best)}'s (cos {float(sims[best]):.2f})"
        if truth is not None:
            cos = torch.nn.functional.cosine_similarity(
                torch.tensor(np.array(truth, dtype=np.float32)), pred, dim=0
            )
            text += f"; cos to the truth {float(cos):.2f}"
        return text


def _cell(text: str | None) -> str:
    return "" if text is None else str(text).replace("|", "\\|")


def case_study(
    expl: Explanation, model: SequenceModel, artifact: Artifact | None, heading: str
) -> str:
    """The Markdown case study of ``expl`` (see the module docstring)."""
    vals = _Values(model, artifact)
    lines = [f"# {heading}", ""]
    lines += [
        f"Model: {model.display_name()}; history: {len(expl.items)} items"
        + (
            f" (the model reads the last {model.history_len}: {expl.dropped} older ones are "
            "left out)"
            if expl.dropped
            else ""
        )
        + ". Artifact: "
        + (str(artifact.path) if artifact is not None else "not available (no hidden truth)"),
        "",
        "## The sequence: known, hidden and imputed values",
        "",
        "Known: the value the model sees. Hidden: the ground truth the model does not see (a "
        "value the artifact's discard hid, or the next item's own fields). Imputed: the "
        "model's prediction where the value is not seen (✓: the hidden value).",
        "",
        "| position | item | field | known | hidden | imputed |",
        "|---|---|---|---|---|---|",
    ]
    ids = [*expl.items, expl.target if expl.target is not None else MISSING_ID]
    top = int(expl.scores.argmax())
    for pos, (label, item_id) in enumerate(zip(expl.positions, ids, strict=True)):
        query = label == QUERY_LABEL
        lines.append(
            f"| {label} | {'?' if query else _cell(vals.item(item_id))} | {ID_FIELD} | "
            f"{'' if query else _cell(vals.item(item_id))} | "
            f"{_cell(vals.item(item_id)) if query and expl.target is not None else ''} | "
            f"{_cell(vals.item(top)) + ' (top-1)' if query else ''} |"
        )
        for field in expl.fields[1:]:
            known = None if query else vals.known(field, item_id)
            truth = vals.hidden_truth(field, item_id, whole_item=query)
            shown = None if truth is None else vals.stored(field, truth)
            pred = expl.imputed[field][pos]
            imputed = None if known is not None else vals.imputed(field, pred, truth)
            seen = "" if query else (_cell(known) if known is not None else "*missing*")
            lines.append(f"| {label} | | {field} | {seen} | {_cell(shown)} | {_cell(imputed)} |")
    lines += ["", *_recommendations(expl, vals), "", *_attention_summary(expl)]
    return "\n".join(lines) + "\n"


def _recommendations(expl: Explanation, vals: _Values) -> list[str]:
    scores = expl.scores.clone()
    top = torch.topk(scores, min(TOP_K, len(scores) - FIRST_VALUE_ID)).indices.tolist()
    lines = [f"## Top-{len(top)} recommendations", ""]
    if expl.target is not None:
        rank = int((scores > scores[expl.target]).sum()) + 1
        lines += [f"The hidden next item {vals.item(expl.target)} ranks {rank} of all items.", ""]
    lines += ["| rank | item | score | note |", "|---|---|---|---|"]
    seen = set(expl.items)
    for rank, item_id in enumerate(top, start=1):
        note = "the next item ✓" if item_id == expl.target else ""
        note = note or ("in the history" if item_id in seen else "")
        lines.append(
            f"| {rank} | {_cell(vals.item(item_id))} | {float(scores[item_id]):.3f} | {note} |"
        )
    return lines


def _attention_summary(expl: Explanation) -> list[str]:
    """Per layer, the share of the scoring ID token's attention that goes to each field (with
    one token per item, to each item position: the fields are fused before attention)."""
    if expl.fused:
        share = expl.query_attention[:, :, 0].mean(1)  # (L, m): mean over heads
        columns, what = expl.attention_positions, "item position (one token per item)"
    else:
        share = expl.query_attention.sum(-1).mean(1)  # (L, F): over positions, mean over heads
        columns, what = expl.fields, "field"
    lines = [
        f"## Attention from {expl.scoring_token}" + ("" if expl.fused else " field"),
        "",
        "![attention](attention.png)",
        "",
        f"Share of the attention that goes to each {what}, per layer (mean over heads):",
        "",
        "| layer | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for layer, row in enumerate(share, start=1):
        lines.append(f"| {layer} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return lines


# ---------------------------------------------------------------------- from a run folder


def _open_artifact(meta: dict[str, Any], data: Path | None, needed: bool) -> Artifact | None:
    path = data or (meta.get("artifact") or {}).get("path")
    if path is None or not Path(path).exists():
        if needed:
            raise ConfigError(
                f"the run was trained on artifact {path!r}, which is not there; pass --data"
            )
        return None
    artifact = Artifact(path)
    if artifact.n_items != meta["n_items"]:
        raise ConfigError(
            f"{path}: the artifact has {artifact.n_items} items, the checkpoint {meta['n_items']}"
        )
    return artifact


def read_history(path: Path, model: SequenceModel) -> list[int]:
    """A JSON list of item ids (names), oldest first (or ``{"items": [...]}``) -> model ids."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read the history ({exc})", file=path) from None
    items = data.get("items") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise DataError(
            'expected a non-empty JSON list of item ids (or {"items": [...]})', file=path
        )
    index = {name: i for i, name in enumerate(model.catalogue.item_names or []) if i >= 2}
    out = []
    for pos, name in enumerate(items, start=1):
        if str(name) not in index:
            raise DataError(
                f"item {name!r} (position {pos}) is not in the model's catalogue", file=path
            )
        out.append(index[str(name)])
    return out


def user_history(artifact: Artifact, user: str) -> tuple[list[int], int]:
    """A user's test case: the sequence before its last item, and that item."""
    try:
        u = artifact.user_names.index(user)
    except ValueError:
        examples = ", ".join(artifact.user_names[:5])
        raise DataError(
            f"user {user!r} is not in {artifact.path} (users: {examples}, ...)"
        ) from None
    seq = [int(i) for i in artifact.sequence(u)]
    return seq[:-1], seq[-1]


def explain_run(
    run: str | Path,
    out: str | Path,
    *,
    user: str | None = None,
    history_file: str | Path | None = None,
    data: str | Path | None = None,
) -> dict[str, Path]:
    """Explain one history of ``run``'s best checkpoint: a user's test case (``user``, from the
    artifact the run was trained on, or ``data``) or the items of ``history_file``. Writes
    attention.png, attention.json and case_study.md to ``out``; returns their paths."""
    if (user is None) == (history_file is None):
        raise ConfigError("give either a user or a history file")
    run = Path(run)
    model, meta = load_checkpoint(run / "best")
    require_attention(model, meta.get("model", "?"))
    artifact = _open_artifact(meta, Path(data) if data else None, needed=user is not None)
    if user is not None:
        assert artifact is not None
        history, target = user_history(artifact, user)
        heading = f"Case study: user {user} (run {run.name})"
    else:
        history, target = read_history(Path(history_file), model), None
        heading = f"Case study: {Path(history_file).name} (run {run.name})"
    expl = explain(model, history, target)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "png": out / "attention.png",
        "md": out / "case_study.md",
        "json": out / "attention.json",
    }
    plot_attention(expl, paths["png"], f"{model.display_name()}: {heading}")
    atomic_json(
        paths["json"],
        {
            "fields": expl.fields,
            "attention_rows": expl.rows,
            "positions": expl.positions,
            "attention_positions": expl.attention_positions,
            "scoring_token": expl.scoring_token,
            "items": [model.catalogue.item_names[i] for i in expl.items]
            if model.catalogue.item_names
            else expl.items,
            "query_attention": np.round(expl.query_attention, 6).tolist(),
            "shape": "layers x heads x attention_rows x attention_positions",
        },
    )
    atomic_write_text(paths["md"], case_study(expl, model, artifact, heading))
    return paths
