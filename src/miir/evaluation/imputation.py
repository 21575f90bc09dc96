"""Imputation evaluation (paper Section 5.4, Table 11): how well a model recovers the side values
that ``miir prepare --discard p`` hid, scored against the ground truth kept in the artifact.

What is scored (the *cells*). For every test sequence, the model reads the last ``max_len``
items: the user's history up to the test target (``max_len - 1`` items) and the target. A cell
is one (position, field) of that window whose value the discard hid: present in the ground
truth (``truth_present``), absent in what models see (``present``). Values missing in the raw
data (truth absent) have no ground truth and are never scored; they are only counted.

What the imputer sees. The history items as the artifact shows them (discarded values
missing), and at the target position the next-item query of Section 3.1: an item whose ID and
fields are all hidden (item id 1, as :meth:`~miir.models.miir.MIIR.query_states` builds it).
So the target's fields are imputed from the history alone, as a next-item query, and reported
as a separate ``target`` row; history cells come from the same pass (the target never helps
impute them). Results are kept per cell, so they break down by position (distance from the
end of the window: 0 is the target) and by history vs target.

Metrics per field kind (ids 0 = padding and 1 = missing are never predictions):

- multi-valued (categories): precision, recall and F1 of the values with probability above
  ``threshold`` (0.5, the paper's), and of the top-k values where k is the true set's size
  (``@k``: then precision = recall = F1); averaged over cells (an empty prediction has
  precision 0);
- categorical (brand): accuracy and top-5 accuracy;
- numeric: accuracy of the quantile bucket;
- text: mean squared error per dimension (the paper's MSE) and the nearest-text hit rate: the
  catalogue text (distinct ground-truth text vectors of all items) nearest to the predicted
  vector by cosine is the true item's text.

Imputers: anything with ``name``, ``field_names``, ``max_len`` and ``impute(items, hidden)``
(the :class:`~miir.models.base.Imputer` protocol plus a description): a trained model through
:class:`ModelImputer`, or the references :class:`MostFrequentImputer` and
:class:`CoOccurrenceImputer`, fitted on the observed (post-discard) training windows only.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor

from miir.data.artifact import Artifact
from miir.data.schema import FIRST_VALUE_ID, MISSING_ID, FieldKind
from miir.errors import ConfigError, DataError
from miir.models.fields import ItemCatalogue

SCOPES = ("history", "target", "all")
#: metrics of each field kind, in table order
METRICS: dict[FieldKind, tuple[str, ...]] = {
    FieldKind.MULTI_CATEGORICAL: (
        *("precision", "recall", "f1", "precision@k", "recall@k", "f1@k"),
        # without the values every item has
        *("inf_precision", "inf_recall", "inf_f1", "inf_f1@k"),
    ),
    FieldKind.CATEGORICAL: ("accuracy", "top5_accuracy"),
    FieldKind.NUMERIC: ("accuracy",),
    FieldKind.TEXT: ("mse", "nearest_hit"),
}
#: the metric plotted per kind (MSE: lower is better). Multi-valued fields: F1 of the top-k
#: values (k = the true set size), not of the values above 0.5: on amazon-beauty no imputer
#: puts an informative category above 0.5, so every thresholded set is the root category that
#: every item has and the thresholded F1 of all imputers differs in the fourth decimal
HEADLINE: dict[FieldKind, str] = {
    FieldKind.MULTI_CATEGORICAL: "f1@k",
    FieldKind.CATEGORICAL: "accuracy",
    FieldKind.NUMERIC: "accuracy",
    FieldKind.TEXT: "mse",
}


# ---------------------------------------------------------------------- metrics (pure, per cell


def _real_values(probs: Tensor) -> Tensor:
    """(M, V + 2) -> the same with ids 0 and 1 at -inf, so they are never predicted."""
    out = probs.float().clone()
    out[:, :FIRST_VALUE_ID] = -torch.inf
    return out


def categorical_metrics(probs: Tensor, truth: Tensor, k: int = 5) -> dict[str, Tensor]:
    """(M, V + 2) probabilities over value ids, (M,) true ids -> per-cell ``accuracy`` and
    ``top5_accuracy`` (top-``k``), as (M,) floats."""
    p = _real_values(probs)
    top = p.topk(min(k, p.shape[1] - FIRST_VALUE_ID), dim=1).indices  # (M, k)
    return {
        "accuracy": (top[:, 0] == truth).float(),
        f"top{k}_accuracy": (top == truth[:, None]).any(1).float(),
    }


def numeric_metrics(probs: Tensor, truth: Tensor) -> dict[str, Tensor]:
    """(M, V + 2) probabilities over bucket ids, (M,) true buckets -> per-cell ``accuracy``."""
    return {"accuracy": (_real_values(probs).argmax(1) == truth).float()}


def _prf(hits: Tensor, n_pred: Tensor, n_true: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    precision = torch.where(n_pred > 0, hits / n_pred.clamp(min=1), torch.zeros_like(hits))
    recall = hits / n_true.clamp(min=1)
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), 0.0)
    return precision, recall, f1


def _top_k_hits(p: Tensor, true_hot: Tensor, n_true: Tensor) -> Tensor:
    """Per cell, how many of the top-k values (k = ``n_true``) are true."""
    order = p.argsort(dim=1, descending=True, stable=True)  # (M, V + 2)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(p.shape[1]).expand_as(order))
    return (true_hot & (ranks < n_true[:, None])).sum(1).float()


def multi_metrics(
    probs: Tensor, truth: Tensor, threshold: float = 0.5, constant: Tensor | None = None
) -> dict[str, Tensor]:
    """(M, V + 2) independent probabilities, (M, K) true value ids (0-padded, at least one
    real) -> per-cell precision, recall, F1 of the values with probability > ``threshold``,
    and of the top-k values (k = true set size: ``precision@k`` = ``recall@k`` = ``f1@k``).

    ``inf_precision``, ``inf_recall``, ``inf_f1`` and ``inf_f1@k``: the same over the
    informative values only, without the ``constant`` value ids (those every catalogue item
    has, such as Amazon's root category "Beauty": predicting them is free, and they lift
    precision to 1 for any imputer that names nothing else); NaN for a cell whose true set is
    only constant values (left out of the means)."""
    p = _real_values(probs)
    true_hot = torch.zeros_like(p, dtype=torch.bool)  # (M, V + 2)
    true_hot.scatter_(1, truth.long(), truth >= FIRST_VALUE_ID)
    n_true = true_hot.sum(1).float()  # (M,)
    pred = p > threshold  # (M, V + 2)
    hits = (pred & true_hot).sum(1).float()
    precision, recall, f1 = _prf(hits, pred.sum(1).float(), n_true)
    pk, rk, fk = _prf(*(_top_k_hits(p, true_hot, n_true), n_true, n_true))
    out = {"precision": precision, "recall": recall, "f1": f1}
    out |= {"precision@k": pk, "recall@k": rk, "f1@k": fk}
    keep = torch.ones(p.shape[1], dtype=torch.bool)  # (V + 2,)
    if constant is not None and len(constant):
        keep[constant.long()] = False
    # constant values rank below every other one (a 0 could win a tie in the top k)
    p_inf, true_inf = p.masked_fill(~keep, -math.inf), true_hot & keep
    n_inf = true_inf.sum(1).float()
    pred_inf = pred & keep
    hits_inf = (pred_inf & true_inf).sum(1).float()
    prec_inf, rec_inf, f1_inf = _prf(hits_inf, pred_inf.sum(1).float(), n_inf)
    _, _, fk_inf = _prf(_top_k_hits(p_inf, true_inf, n_inf), n_inf, n_inf)
    scored = n_inf > 0
    out["inf_precision"] = torch.where(scored, prec_inf, torch.nan)
    out["inf_recall"] = torch.where(scored, rec_inf, torch.nan)
    out["inf_f1"] = torch.where(scored, f1_inf, torch.nan)
    out["inf_f1@k"] = torch.where(scored, fk_inf, torch.nan)
    return out


def text_metrics(
    pred: Tensor, truth: Tensor, catalogue: Tensor, truth_text: Tensor
) -> dict[str, Tensor]:
    """(M, D) predicted and (M, D) true vectors, (T, D) catalogue of distinct texts, (M,) row of
    each true text in it -> per-cell ``mse`` (mean over dimensions) and ``nearest_hit`` (the
    catalogue row nearest to the prediction by cosine is the true text)."""
    mse = ((pred.float() - truth.float()) ** 2).mean(1)
    sims = F.normalize(pred.float(), dim=1) @ F.normalize(catalogue.float(), dim=1).T  # (M, T)
    return {"mse": mse, "nearest_hit": (sims.argmax(1) == truth_text).float()}


# ---------------------------------------------------------------------- imputers


class ImputerLike(Protocol):
    """What :func:`evaluate_imputation` scores: ``impute(items, hidden)`` with (B, n) item ids and
    (B, n, 1 + F) hidden flags (ID first, then ``field_names`` in order) -> name -> (B, n, V + 2)
    probabilities or (B, n, D) vectors."""

    name: str
    field_names: list[str]
    max_len: int

    def impute(self, items: Tensor, hidden: Tensor | None = None) -> dict[str, Tensor]: ...


class ModelImputer:
    """A trained model implementing :class:`~miir.models.base.Imputer`, seen through the same
    interface as the references: its side fields, its window length, predictions on CPU."""

    def __init__(self, model: Any, device: str = "cpu", name: str | None = None) -> None:
        from miir.models.base import Imputer

        if not isinstance(model, Imputer):
            raise ConfigError(
                f"model {type(model).__name__} does not impute side fields (it has no "
                "impute(items, hidden)); imputation is evaluated for models implementing Imputer"
            )
        self.model = model.to(device).eval()
        self.device = device
        self.name = name or model.display_name()
        self.field_names = list(model.catalogue.names)
        self.max_len = int(model.config.max_len)

    @torch.no_grad()
    def impute(self, items: Tensor, hidden: Tensor | None = None) -> dict[str, Tensor]:
        hidden = hidden.to(self.device) if hidden is not None else None
        out = self.model.impute(items.to(self.device), hidden)
        return {k: v.float().cpu() for k, v in out.items()}


class _TableImputer:
    """Shared by the references: the observed (post-discard) item tables and the training
    windows (each user's sequence without its last two items) they are fitted on."""

    def __init__(self, artifact: Artifact, max_len: int | None = None) -> None:
        from miir.training.data import training_windows

        self.max_len = int(max_len or artifact.max_len)
        self.catalogue = ItemCatalogue.from_artifact(artifact)  # observed tables only
        self.field_names = self.catalogue.names
        self.kinds = {f.name: f.kind for f in self.catalogue.fields}
        self.windows = training_windows(artifact, self.max_len)  # (W, max_len)
        self.priors = {name: self._prior(name) for name in self.field_names}

    def _prior(self, name: str) -> Tensor:
        """Observed frequencies in the training windows (per interaction): (V + 2,)
        probabilities (multi-valued: the share of observed sets holding each value), or the
        mean observed vector (D,) of a text field."""
        items = self.windows[self.windows >= FIRST_VALUE_ID]  # (I,) training interactions
        seen = self.catalogue.present[name][items]
        if self.kinds[name] == FieldKind.TEXT:
            vecs = self.catalogue.values[name][items[seen]]  # (I', D)
            return vecs.mean(0) if len(vecs) else vecs.new_zeros(vecs.shape[1])
        values = self.catalogue.values[name][items[seen]].reshape(-1)  # (I' K,)
        V = self.catalogue.field(name).cardinality
        counts = torch.bincount(values[values >= FIRST_VALUE_ID], minlength=V).float()  # (V + 2,)
        multi = self.kinds[name] == FieldKind.MULTI_CATEGORICAL
        total = float(seen.sum()) if multi else float(counts.sum())
        return counts / max(total, 1.0)

    def visible(self, name: str, items: Tensor, hidden: Tensor | None, j: int) -> Tensor:
        """(B, n) bool: the field's value is observed and not hidden by the caller."""
        seen = self.catalogue.present[name][items]
        return seen if hidden is None else seen & ~hidden[..., 1 + j]


class MostFrequentImputer(_TableImputer):
    """The most frequent observed value of each field in the training windows (counted per
    interaction), whatever the sequence: its frequencies as probabilities (multi-valued: the
    share of observed sets holding each value), the mean observed vector for text."""

    name = "most-frequent"

    def impute(self, items: Tensor, hidden: Tensor | None = None) -> dict[str, Tensor]:
        B, n = items.shape
        return {k: v.expand(B, n, -1) for k, v in self.priors.items()}


class CoOccurrenceImputer(_TableImputer):
    """The value most often seen together with the sequence's other observed values.

    Fitted on the training windows: C[v, w] counts pairs of distinct items of one window where
    one holds v and the other w; N[v] counts pairs where one holds v and the other has the
    field observed. At an item, with the other items' observed values as context (multiset c),
    p(w) = sum_v c_v C[v, w] / sum_v c_v N[v]: an estimate of P(w | a co-occurring value),
    a distribution for single-valued fields and per-value probabilities for multi-valued ones.
    Text: the mean of the other items' observed vectors. With no observed context: the
    most-frequent prior (:class:`MostFrequentImputer`).
    """

    name = "co-occurrence"

    def __init__(self, artifact: Artifact, max_len: int | None = None) -> None:
        super().__init__(artifact, max_len)
        self.pairs: dict[str, tuple[Tensor, Tensor]] = {}
        for name in self.field_names:
            if self.kinds[name] != FieldKind.TEXT:
                self.pairs[name] = self._fit(name)

    def _fit(self, name: str) -> tuple[Tensor, Tensor]:
        """(V + 2, V + 2) pair counts C and (V + 2,) context counts N (sparse products)."""
        w = self.windows  # (W, L)
        rows, cols = (w >= FIRST_VALUE_ID).nonzero(as_tuple=True)
        items = w[rows, cols]
        seen = self.catalogue.present[name][items]
        rows, items = rows[seen].numpy(), items[seen]
        values = self.catalogue.values[name][items]
        values = values[:, None] if values.dim() == 1 else values  # (I, K)
        V = self.catalogue.field(name).cardinality
        occ, slot = (values >= FIRST_VALUE_ID).nonzero(as_tuple=True)
        hot = sp.csr_matrix(  # (I, V + 2): observed values of each interaction
            (np.ones(len(occ)), (occ.numpy(), values[occ, slot].numpy())), shape=(len(items), V)
        )
        A = sp.csr_matrix(  # (W, I): which window each interaction is in
            (np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(len(w), len(items))
        )
        S = A @ hot  # (W, V + 2) value counts per window
        C = (S.T @ S - hot.T @ hot).toarray()  # pairs of distinct items
        m = np.asarray(A.sum(1)).ravel()  # observed items per window
        N = S.T @ np.maximum(m - 1, 0)  # (V + 2,)
        return torch.from_numpy(C).float(), torch.from_numpy(np.asarray(N).ravel()).float()

    def impute(self, items: Tensor, hidden: Tensor | None = None) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        B, n = items.shape
        for j, name in enumerate(self.field_names):
            vis = self.visible(name, items, hidden, j).float()  # (B, n)
            if self.kinds[name] == FieldKind.TEXT:
                vecs = self.catalogue.values[name][items] * vis[..., None]  # (B, n, D)
                others = vecs.sum(1, keepdim=True) - vecs  # (B, n, D): the other items
                count = (vis.sum(1, keepdim=True) - vis)[..., None]  # (B, n, 1)
                prior = self.priors[name].expand(B, n, -1)
                out[name] = torch.where(count > 0, others / count.clamp(min=1), prior)
                continue
            C, N = self.pairs[name]
            # sum_v C[v, :] over each item's own values, by gathering rows (no (B n, V) @ C)
            own, own_n = self._gather_rows(name, items, vis, C, N)  # (B, n, V + 2), (B, n)
            num = own.sum(1, keepdim=True) - own  # (B, n, V + 2): the other items' values
            den = (own_n.sum(1, keepdim=True) - own_n)[..., None]  # (B, n, 1)
            p = num / den.clamp(min=1e-12)
            out[name] = torch.where(den > 0, p, self.priors[name]).clamp(0, 1)
        return out

    def _gather_rows(
        self, name: str, items: Tensor, vis: Tensor, C: Tensor, N: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The sums of C's rows (B, n, V + 2) and of N (B, n) over each visible item's observed
        values (zero for an item whose field is not visible)."""
        values = self.catalogue.values[name][items].long()
        values = values[..., None] if values.dim() == items.dim() else values  # (B, n, K)
        real = (values >= FIRST_VALUE_ID).float() * vis[..., None]  # (B, n, K)
        rows = torch.einsum("bnk,bnkw->bnw", real, C[values])  # (B, n, V + 2)
        return rows, (N[values] * real).sum(-1)


REFERENCE_IMPUTERS: dict[str, type[_TableImputer]] = {
    MostFrequentImputer.name: MostFrequentImputer,
    CoOccurrenceImputer.name: CoOccurrenceImputer,
}


def reference_imputer(name: str, artifact: Artifact, max_len: int | None = None) -> ImputerLike:
    """A reference imputer by name (``most-frequent`` or ``co-occurrence``)."""
    if name not in REFERENCE_IMPUTERS:
        raise ConfigError(
            f"unknown reference imputer {name!r}; choose from {', '.join(REFERENCE_IMPUTERS)}"
        )
    return REFERENCE_IMPUTERS[name](artifact, max_len)


# ---------------------------------------------------------------------- test windows and cells


def require_ground_truth(artifact: Artifact) -> None:
    """Raise unless ``artifact`` was prepared with ``--discard p`` (only then does it keep the
    hidden values' ground truth)."""
    discard = float(artifact.manifest.get("config", {}).get("discard", 0.0) or 0.0)
    if discard <= 0 or not (artifact.path / "truth").is_dir():
        raise DataError(
            "this artifact was prepared without --discard, so it has no ground truth for "
            "imputation (nothing was hidden); prepare one with `miir prepare ... --discard 0.5`",
            file=artifact.path,
        )


def sequence_windows(
    artifact: Artifact, max_len: int, stage: str = "test", users: np.ndarray | None = None
) -> Tensor:
    """(U, max_len) right-aligned windows (0 = padding) of each user's sequence up to and
    including the ``stage`` target (the last item for test, the one before for valid)."""
    if stage not in ("valid", "test"):
        raise ConfigError(f"stage must be 'valid' or 'test', got {stage!r}")
    cut = 1 if stage == "valid" else 0
    users = np.arange(artifact.n_users) if users is None else users
    out = np.zeros((len(users), max_len), dtype=np.int64)
    for r, u in enumerate(users):  # data layout only; the model runs batched below
        s = artifact.sequence(int(u))
        s = s[: len(s) - cut][-max_len:]
        out[r, max_len - len(s) :] = s
    return torch.from_numpy(out)


def discard_cells(artifact: Artifact, name: str, windows: Tensor) -> tuple[Tensor, Tensor]:
    """(U, n) bool masks over ``windows``: the cells of field ``name`` the discard hid (truth
    present, observed absent: scored) and those missing in the raw data (never scored)."""
    fd = artifact.fields[name]
    truth = torch.from_numpy(np.array(fd.truth_present, dtype=bool))[windows]
    seen = torch.from_numpy(np.array(fd.present, dtype=bool))[windows]
    real = windows >= FIRST_VALUE_ID
    return real & truth & ~seen, real & ~truth


def query_inputs(windows: Tensor, hidden_cells: dict[str, Tensor], names: list[str]) -> tuple:
    """What the imputer is given: the windows with the target (last column) replaced by the
    all-missing query item (id 1), and (U, n, 1 + F) hidden flags: the whole query position,
    and the cells the discard hid (already missing in the tables; flagged so an imputer knows
    what is asked)."""
    items = windows.clone()
    items[:, -1] = MISSING_ID
    hidden = torch.zeros(*windows.shape, 1 + len(names), dtype=torch.bool)
    hidden[:, -1] = True
    for j, name in enumerate(names):
        hidden[..., 1 + j] |= hidden_cells[name]
    return items, hidden


@dataclass
class CellRecords:
    """Per-cell results of one field: the row (user index into the evaluated windows), the
    distance from the end of the window (0 = the target), the item whose value it is, and
    each metric's value."""

    kind: FieldKind
    rows: list[Tensor] = field(default_factory=list)
    distance: list[Tensor] = field(default_factory=list)
    items: list[Tensor] = field(default_factory=list)
    values: dict[str, list[Tensor]] = field(default_factory=dict)
    raw_missing: int = 0

    def add(
        self, rows: Tensor, distance: Tensor, items: Tensor, metrics: dict[str, Tensor]
    ) -> None:
        self.rows.append(rows)
        self.distance.append(distance)
        self.items.append(items)
        for k, v in metrics.items():
            self.values.setdefault(k, []).append(v.float().cpu())

    def arrays(self) -> Cells:
        cat = lambda xs: torch.cat(xs).numpy() if xs else np.zeros(0, dtype=np.int64)  # noqa: E731
        metrics = {k: cat(self.values.get(k, [])) for k in METRICS[self.kind]}
        return Cells(cat(self.rows), cat(self.distance), cat(self.items), metrics)


class Cells(NamedTuple):
    """One field's scored cells as arrays (:meth:`CellRecords.arrays`), for paired tests."""

    rows: np.ndarray  # (M,) user row into the evaluated windows
    distance: np.ndarray  # (M,) from the end of the window, 0 = the target
    items: np.ndarray  # (M,) the item whose hidden value the cell is
    metrics: dict[str, np.ndarray]  # metric -> (M,) per-cell values

    def index(self) -> dict[tuple[int, int], int]:
        """(user row, distance) -> position: how two scorings of the same windows match."""
        pairs = zip(self.rows, self.distance, strict=True)
        return {(int(r), int(d)): i for i, (r, d) in enumerate(pairs)}


class _Truth:
    """The ground truth of one field as tensors, and for text the catalogue of distinct texts."""

    def __init__(self, artifact: Artifact, name: str) -> None:
        fd = artifact.fields[name]
        self.kind = fd.kind
        values = np.asarray(fd.truth_values)
        self.values = torch.from_numpy(
            values.astype(np.float32 if fd.kind == FieldKind.TEXT else np.int64)
        )
        if fd.kind == FieldKind.TEXT:
            rows = np.flatnonzero(np.asarray(fd.truth_present))
            texts, inverse = np.unique(values[rows], axis=0, return_inverse=True)
            self.catalogue = torch.from_numpy(texts.astype(np.float32))  # (T, D)
            text_of = np.full(len(values), -1, dtype=np.int64)
            text_of[rows] = inverse.ravel()
            self.text_of = torch.from_numpy(text_of)
        self.constant = torch.zeros(0, dtype=torch.long)
        if fd.kind == FieldKind.MULTI_CATEGORICAL:
            # the values every item with a known set has (Amazon's root category)
            rows = np.flatnonzero(np.asarray(fd.truth_present))
            ids, counts = np.unique(values[rows], return_counts=True)
            every = ids[(ids >= FIRST_VALUE_ID) & (counts == len(rows))] if len(rows) else ids[:0]
            self.constant = torch.from_numpy(every.astype(np.int64))

    def metrics(self, pred: Tensor, items: Tensor, threshold: float) -> dict[str, Tensor]:
        """Per-cell metrics of predictions (M, ...) for the true values of ``items`` (M,)."""
        truth = self.values[items]
        if self.kind == FieldKind.TEXT:
            return text_metrics(pred, truth, self.catalogue, self.text_of[items])
        if self.kind == FieldKind.MULTI_CATEGORICAL:
            return multi_metrics(pred, truth, threshold, self.constant)
        if self.kind == FieldKind.NUMERIC:
            return numeric_metrics(pred, truth)
        return categorical_metrics(pred, truth)


def score_cells(
    artifact: Artifact,
    imputer: ImputerLike,
    *,
    stage: str = "test",
    fields: list[str] | None = None,
    threshold: float = 0.5,
    batch_size: int = 256,
    users: np.ndarray | None = None,
) -> dict[str, CellRecords]:
    """Run ``imputer`` over the ``stage`` windows in batches and score every discard-hidden cell
    of its fields: name -> :class:`CellRecords`."""
    names = [n for n in imputer.field_names if fields is None or n in fields]
    unknown = sorted(set(fields or ()) - set(imputer.field_names))
    if unknown:
        raise ConfigError(
            f"{imputer.name} does not impute field(s) {unknown}; it imputes {imputer.field_names}"
        )
    n = imputer.max_len
    windows = sequence_windows(artifact, n, stage, users)  # (U, n) true items
    scored, records, truths = {}, {}, {}
    for name in names:
        scored[name], raw_missing = discard_cells(artifact, name, windows)
        records[name] = CellRecords(artifact.fields[name].kind, raw_missing=int(raw_missing.sum()))
        truths[name] = _Truth(artifact, name)
    all_names = list(imputer.field_names)
    items, hidden = query_inputs(
        windows, {k: scored.get(k, _none(windows)) for k in all_names}, all_names
    )
    order = torch.argsort((windows != 0).sum(1), stable=True)  # similar lengths share a batch
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        first = int((windows[idx] != 0).any(0).to(torch.int8).argmax())  # shared padding cut
        preds = imputer.impute(items[idx, first:], hidden[idx, first:])
        for name in names:
            r, c = scored[name][idx, first:].nonzero(as_tuple=True)  # (M,), (M,)
            if len(r) == 0:
                continue
            true_items = windows[idx[r], first + c]
            metrics = truths[name].metrics(preds[name][r, c], true_items, threshold)
            records[name].add(idx[r], n - 1 - (first + c), true_items, metrics)
    return records


def _none(windows: Tensor) -> Tensor:
    return torch.zeros(windows.shape, dtype=torch.bool)


# ---------------------------------------------------------------------- summaries


def _means(metrics: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {"cells": int(mask.sum())}
    for k, v in metrics.items():
        kept = v[mask]
        kept = kept[~np.isnan(kept)] if kept.dtype.kind == "f" else kept  # NaN: not scorable
        out[k] = float(kept.mean()) if len(kept) else None
    return out


def summarize(records: dict[str, CellRecords]) -> dict[str, Any]:
    """Per field: metric means over history, target and all cells, the cell counts, and the
    breakdown by distance from the end of the window (0 = the target)."""
    fields: dict[str, Any] = {}
    by_position: dict[str, list[dict[str, Any]]] = {}
    cells = dict.fromkeys(SCOPES, 0)
    for name, rec in records.items():
        _, distance, _, metrics = rec.arrays()
        scopes = {"history": distance > 0, "target": distance == 0, "all": distance >= 0}
        fields[name] = {
            "kind": rec.kind.value,
            "metrics": list(METRICS[rec.kind]),
            "raw_missing_cells": rec.raw_missing,
            **{s: _means(metrics, m) for s, m in scopes.items()},
        }
        for s in SCOPES:
            cells[s] += fields[name][s]["cells"]
        by_position[name] = [
            {"distance": int(d), **_means(metrics, distance == d)} for d in np.unique(distance)
        ]
    return {"fields": fields, "cells": cells, "by_position": by_position}


def evaluate_imputation(
    artifact: Artifact,
    imputer: ImputerLike,
    *,
    stage: str = "test",
    fields: list[str] | None = None,
    threshold: float = 0.5,
    batch_size: int = 256,
    max_users: int | None = None,
    cells: bool = False,
) -> dict[str, Any]:
    """Score ``imputer`` on the discard-hidden cells of the ``stage`` sequences (see the module
    docstring); returns a JSON-able dict: per field and metric for history, target and all
    cells, cell counts, and the per-position breakdown. ``max_users``: only the first users
    (smoke runs). ``cells``: also ``"cells"``, field -> (user row, distance, metric -> value)
    arrays per cell (not JSON: for paired comparisons, :func:`paired_cells`)."""
    require_ground_truth(artifact)
    users = np.arange(min(max_users, artifact.n_users)) if max_users else None
    started = time.perf_counter()
    records = score_cells(
        artifact,
        imputer,
        stage=stage,
        fields=fields,
        threshold=threshold,
        batch_size=batch_size,
        users=users,
    )
    out = {
        "imputer": imputer.name,
        "artifact": {
            "path": str(artifact.path),
            "name": artifact.name,
            "discard": float(artifact.manifest["config"]["discard"]),
        },
        "stage": stage,
        "max_len": imputer.max_len,
        "threshold": threshold,
        "users": int(len(users) if users is not None else artifact.n_users),
        **summarize(records),
        "seconds": round(time.perf_counter() - started, 2),
    }
    if cells:
        out["cells"] = {name: rec.arrays() for name, rec in records.items()}
    return out


def paired_cells(a: Cells, b: Cells) -> dict[str, dict[str, Any]]:
    """Two imputers' per-cell results of one field (``cells`` of :func:`evaluate_imputation`)
    compared on the cells both scored (same user row and distance from the window's end):
    metric -> cells, items, mean of a, mean of b, their difference and its two-sided p.

    The cells are not independent: the discard hides an item's value once, so the same hidden
    value is scored in every test window that holds the item (17 windows per item on average
    on Sports D, some in hundreds), and each user's window gives several cells. The p is
    therefore that of the mean difference with a variance clustered two ways, by item and by
    user (:func:`miir.evaluation.metrics.clustered_mean_test`); a t-test over cells would count
    each repeat as new evidence. Cells where either value is NaN are left out."""
    from miir.evaluation.metrics import clustered_mean_test

    ka, kb = a.index(), b.index()
    shared = [k for k in ka if k in kb]
    ia = np.array([ka[k] for k in shared], dtype=np.int64)
    ib = np.array([kb[k] for k in shared], dtype=np.int64)
    out: dict[str, dict[str, Any]] = {}
    for metric, va in a.metrics.items():
        x, y = va[ia], b.metrics[metric][ib]
        ok = ~(np.isnan(x) | np.isnan(y))
        x, y = x[ok], y[ok]
        items, users = a.items[ia][ok], a.rows[ia][ok]
        p = clustered_mean_test(x - y, items, users)[1] if len(x) > 1 else None
        out[metric] = {
            "cells": len(x),
            "items": len(np.unique(items)),
            "a": float(x.mean()) if len(x) else None,
            "b": float(y.mean()) if len(y) else None,
            "diff": float((x - y).mean()) if len(x) else None,
            "p": p,
        }
    return out


# ---------------------------------------------------------------------- a run folder


def _manifest_sha(artifact: Artifact) -> str:
    return hashlib.sha256((artifact.path / "manifest.json").read_bytes()).hexdigest()


def load_run_imputer(
    run: str | Path, artifact: Artifact | None = None, device: str = "cpu"
) -> tuple[ModelImputer, Artifact]:
    """The best checkpoint of ``run`` as an imputer, and the artifact to score it on (default:
    the one it was trained on). On another artifact, a model that keeps item tables
    (``set_item_tables``) is given that artifact's observed tables, so it sees exactly what
    the artifact shows; any other model must have been trained on it."""
    from miir.training.checkpoint import load_checkpoint

    run = Path(run)
    model, meta = load_checkpoint(run / "best", map_location=device)
    imputer = ModelImputer(model, device)
    trained_on = meta.get("artifact") or {}
    if artifact is None:
        if "path" not in trained_on:
            raise ConfigError(
                f"{run / 'best'}: the checkpoint does not name its artifact; pass one"
            )
        artifact = Artifact(trained_on["path"])
    if artifact.n_items != meta["n_items"]:
        raise ConfigError(
            f"{artifact.path} has {artifact.n_items} items, the checkpoint of {run} {meta['n_items']}"
        )
    if trained_on.get("manifest_sha256") != _manifest_sha(artifact):
        if not hasattr(model, "set_item_tables"):
            raise ConfigError(
                f"{run} was trained on {trained_on.get('path')}, not {artifact.path}, and its "
                "model cannot take another artifact's item tables"
            )
        cat = ItemCatalogue.from_artifact(artifact, model.catalogue.names)
        model.set_item_tables(
            {k: v.to(device) for k, v in cat.present.items()},
            {k: v.to(device) for k, v in cat.values.items()},
        )
    return imputer, artifact


def evaluate_run_imputation(
    run: str | Path,
    *,
    artifact: Artifact | None = None,
    references: tuple[str, ...] = (),
    stage: str = "test",
    batch_size: int = 256,
    max_users: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Imputation results of a run's best checkpoint and of the named reference imputers (over
    the same windows and cells): ``{"run", "artifact", "results": [one per imputer]}``."""
    imputer, artifact = load_run_imputer(run, artifact, device)
    require_ground_truth(artifact)
    imputers: list[ImputerLike] = [imputer]
    imputers += [reference_imputer(name, artifact, imputer.max_len) for name in references]
    # the references are scored on the model's fields, over the same windows and cells
    kw = dict(stage=stage, batch_size=batch_size, max_users=max_users, fields=imputer.field_names)
    results = [evaluate_imputation(artifact, imp, **kw) for imp in imputers]
    return {"run": str(run), "artifact": results[0]["artifact"], "results": results}


def imputation_command(
    run: Path, artifact: Artifact | None, imputers: str, stages: tuple[str, ...]
) -> str:
    """``miir evaluate --run RUN --imputation``: evaluate, write ``imputation.json`` in the run
    folder atomically, and return the Markdown table. ``imputers``: comma-separated reference
    names; ``stages``: one of valid or test."""
    from miir.atomic import atomic_json
    from miir.evaluation.report import imputation_table

    if len(stages) != 1:
        raise ConfigError(f"--imputation scores one stage (valid or test), got {list(stages)}")
    names = tuple(n.strip() for n in imputers.split(",") if n.strip())
    for name in names:
        if name not in REFERENCE_IMPUTERS:
            raise ConfigError(
                f"unknown reference imputer {name!r} in --imputers; "
                f"choose from {', '.join(REFERENCE_IMPUTERS)}"
            )
    results = evaluate_run_imputation(run, artifact=artifact, references=names, stage=stages[0])
    atomic_json(Path(run) / "imputation.json", results)
    return imputation_table(results)
