"""The Python facade: train, load, save, recommend and impute with one object, following the
scikit-learn and sentence-transformers conventions (``__init__`` only stores parameters,
``fit`` returns ``self``, learned attributes end in ``_``, ``save``/``load`` round-trip)::

    rec = Recommender.load("runs/beauty")               # a `miir train` run, or a saved one
    rec.recommend(["B0001", "B0002", {"title": "Rose lip balm", "brand": "Acme"}], k=10)
    rec.impute(["B0001", "B0002"])                       # the missing fields, human-readable
    rec.save("models/beauty")                            # safetensors + JSON, nothing else

    rec = Recommender("miir", embedding_size=32).fit("artifacts/beauty", max_epochs=5)

What a loaded recommender needs, and where it comes from:

- the weights, config, item names, field vocabularies and the item tables (the observed side
  values of every item) are in the checkpoint (:mod:`miir.training.checkpoint`): recommending
  from catalogue ids and imputing need nothing else;
- the artifact, where the run recorded its path and the folder is still there with the same
  manifest, adds the exact numeric bucket edges, the name of the text model of preparation,
  raw numbers for display, and display fields for a model without side fields (SASRec);
  :meth:`save` copies the edges and the text model into the saved checkpoint, so a saved
  recommender encodes inline items without the artifact. Without either, bucket edges are
  read back from the checkpoint's range labels (6 significant digits) and text is encoded
  with the default model (checked against the trained vector size);
- item titles are not shown: ``miir prepare`` keeps texts only as vectors, so display fields
  are the categorical, multi-valued and numeric ones, and an imputed text is given as the
  catalogue items whose text vectors are nearest.

Errors a caller (the HTTP service) can tell apart, all :class:`~miir.errors.MiirError`:
:class:`~miir.inference.UnknownItemError` (``.items`` lists the unknown ids),
:class:`~miir.inference.InlineItemsNotSupported` (a record given to a model that takes
catalogue ids only), :class:`~miir.errors.DataError` (a malformed history or record: an
unknown field, an empty history). Result types are dataclasses with ``to_dict()``.

The building blocks (result types, encoding of histories and records, the JSONL batch path)
are in :mod:`miir.inference`.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from miir.data.artifact import Artifact
from miir.data.schema import FIRST_VALUE_ID, FieldKind
from miir.errors import ConfigError, MiirError
from miir.inference import (
    Codebook,
    FieldImputation,
    Imputation,
    ItemImputation,
    ItemTables,
    Recommendation,
    Resolved,
    ScoredItem,
    TextEncoder,
    TextIndex,
    describe_rows,
    model_inputs,
    numeric_edges_from_labels,
)
from miir.models.base import Imputer, SequenceModel
from miir.models.batch import append_query
from miir.models.fields import FieldEncoder, ItemCatalogue
from miir.training.checkpoint import (
    checkpoint_dir,
    load_checkpoint,
    save_checkpoint,
)

log = logging.getLogger(__name__)

#: keys save_checkpoint writes itself (the rest of a loaded checkpoint's metadata is kept)
_OWN_KEYS = {"format_version", "model", "display_name", "config", "catalogue", "n_items"}


class Recommender:
    """A trained sequential recommender behind one object (see the module docstring).

    Parameters: ``model`` (a registered model name), ``data`` (the artifact :meth:`fit` trains
    on when it is given none), ``device``, ``text_encoder`` (for inline items' text: None = the
    preparation's model, a model path or name, or a callable ``list[str] -> (n, D) array``),
    and ``**config``: the model's options (``miir models --options NAME``).
    """

    def __init__(
        self,
        model: str = "miir",
        data: str | Path | Artifact | None = None,
        *,
        device: str = "cpu",
        text_encoder: str | Callable[[list[str]], np.ndarray] | None = None,
        **config: Any,
    ) -> None:
        self.model = model
        self.data = data
        self.device = device
        self.text_encoder = text_encoder
        self.config = config

    # ------------------------------------------------------------------ building
    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str = "cpu",
        text_encoder: str | Callable[[list[str]], np.ndarray] | None = None,
    ) -> Recommender:
        """A recommender from a run folder written by ``miir train`` (its best checkpoint) or
        a folder written by :meth:`save`."""
        folder = checkpoint_dir(path)
        net, meta = load_checkpoint(folder, map_location=device)
        rec = cls(meta["model"], device=device, text_encoder=text_encoder, **meta["config"])
        rec._setup(net, meta, folder.parent if folder.name == "best" else None)
        return rec

    def fit(
        self,
        data: str | Path | Artifact | None = None,
        *,
        out: str | Path | None = None,
        overwrite: bool = False,
        **train_options: Any,
    ) -> Recommender:
        """Train on the artifact ``data`` (default: the ``data`` given at construction) into the
        run folder ``out`` (default: a new temporary folder, kept: ``run_dir_``) with
        ``train_options`` (:class:`~miir.training.train.TrainConfig`: ``max_epochs``, ``lr``,
        ...); the best checkpoint becomes this recommender. Returns ``self``."""
        from miir.training.train import train, train_config

        data = data if data is not None else self.data
        if data is None:
            raise ConfigError("fit needs an artifact: fit(path) or Recommender(data=path)")
        path = data.path if isinstance(data, Artifact) else Path(data)
        cfg = train_config(train_options, "fit")
        run = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="miir-run-"))
        self.results_ = train(path, run, self.model, dict(self.config), cfg, overwrite=overwrite)
        net, meta = load_checkpoint(run / "best", map_location=self.device)
        self._setup(net, meta, run)
        return self

    def save(self, path: str | Path) -> Path:
        """Write the model to the folder ``path`` (safetensors + JSON, atomically), with what
        inline items need: the exact numeric bucket edges and the text model of preparation."""
        self._check_fitted()
        kept = {k: v for k, v in self.meta_.items() if k not in _OWN_KEYS}
        inference = {"bucket_edges": self.bucket_edges_, "text_model": self.text_model_}
        return save_checkpoint(self.model_, path, extra={**kept, "inference": inference})

    def _setup(self, net: SequenceModel, meta: dict[str, Any], run_dir: Path | None) -> None:
        """Learned attributes from a loaded model and its checkpoint metadata."""
        self.model_ = net.to(self.device).eval()
        self.meta_ = meta
        self.run_dir_ = run_dir
        self.artifact_ = self._find_artifact(meta)
        saved = meta.get("inference") or {}
        catalogue: ItemCatalogue = net.catalogue
        edges = dict(saved.get("bucket_edges") or {})
        text_model = saved.get("text_model")
        art = self.artifact_
        if art is not None:
            text_model = art.manifest["config"].get("text_model")
            for f in catalogue.fields:
                if f.kind == FieldKind.NUMERIC:
                    edges[f.name] = art._json(f"vocab/{f.name}.json")["bucket_edges"]
        for f in catalogue.fields:
            if f.kind == FieldKind.NUMERIC and f.name not in edges:
                edges[f.name] = numeric_edges_from_labels(catalogue.vocabs[f.name])
        self.bucket_edges_: dict[str, list[float]] = edges
        self.text_model_: str | None = text_model
        self.codebook_ = Codebook(
            list(catalogue.item_names or []), catalogue.fields, catalogue.vocabs, edges
        )
        self.tables_ = self._item_tables()
        self._text: Callable[[list[str]], np.ndarray] | None = (
            self.text_encoder if callable(self.text_encoder) else None
        )
        # the HTTP service scores from several threads: the lazily built text encoder and
        # text tables must be built once, not once per racing request
        self._lazy_lock = threading.Lock()
        self._text_ready = False  # a given encoder may load lazily too (TextEncoder)
        self._displays: dict[int, dict[str, Any]] = {}  # item id -> display fields, on use

    def display(self, item: int) -> dict[str, Any]:
        """The display fields of catalogue item id ``item`` (see
        :meth:`~miir.inference.Codebook.display`), built once per item and copied per call
        (a recommendation shows ten of them: building them each time cost as much as
        describing the imputations)."""
        shown = self._displays.get(item)
        if shown is None:
            shown = self._displays[item] = self.codebook_.display(self.tables_, item)
        return {k: list(v) if isinstance(v, list) else v for k, v in shown.items()}

    @staticmethod
    def _find_artifact(meta: dict[str, Any]) -> Artifact | None:
        """The artifact the run was trained on, if its folder is still there unchanged."""
        info = meta.get("artifact") or {}
        path = Path(info.get("path") or "")
        manifest = path / "manifest.json"
        if not info.get("path") or not manifest.is_file():
            return None
        if hashlib.sha256(manifest.read_bytes()).hexdigest() != info.get("manifest_sha256"):
            log.warning("%s changed since training: display fields from the checkpoint", path)
            return None
        try:
            return Artifact(path, verify="off")
        except MiirError as exc:
            log.warning("%s: not used for display (%s)", path, exc)
            return None

    def _item_tables(self) -> ItemTables:
        """The display tables: the model's own (its buffers), or the artifact's for a model
        without side fields; raw numbers from the artifact where it is at hand."""
        encoder = getattr(self.model_, "encoder", None)
        art = self.artifact_
        if isinstance(encoder, FieldEncoder) and encoder.fields:
            features = encoder.features
            cat = self.model_.catalogue
            tables = ItemTables(
                list(cat.fields),
                cat.vocabs,
                {f.name: getattr(features, f"{f.name}__present").cpu().numpy() for f in cat.fields},
                {f.name: features.table(f.name).cpu().numpy() for f in cat.fields},
            )
        elif art is not None:
            cat = ItemCatalogue.from_artifact(art)
            tables = ItemTables(
                list(cat.fields),
                cat.vocabs,
                {k: v.numpy() for k, v in cat.present.items()},
                {k: v.numpy() for k, v in cat.values.items()},
            )
        else:
            return ItemTables([], {}, {}, {})
        if art is not None:
            for f in tables.fields:
                if f.kind == FieldKind.NUMERIC and (art.path / f"items/{f.name}.raw.npy").is_file():
                    tables.raw[f.name] = art._npy(f"items/{f.name}.raw.npy")
        return tables

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise MiirError("this Recommender is not fitted: call fit(...) or Recommender.load")

    # ------------------------------------------------------------------ description
    @property
    def item_ids(self) -> list[str]:
        """The catalogue ids, in model order."""
        self._check_fitted()
        return self.codebook_.item_names[FIRST_VALUE_ID:]

    @property
    def fields(self) -> list[str]:
        """The side fields an inline record may give (empty for an ID-only model)."""
        self._check_fitted()
        return list(self.codebook_.fields)

    @property
    def accepts_records(self) -> bool:
        """Whether histories may hold inline item records (a model with per-position side
        inputs and side fields: MIIR)."""
        self._check_fitted()
        return hasattr(self.model_, "side_inputs") and bool(self.codebook_.fields)

    # ------------------------------------------------------------------ inference
    def recommend(
        self, history: Sequence[Any], k: int = 10, exclude_seen: bool = True
    ) -> Recommendation:
        """The top-``k`` next items for one history (catalogue ids and inline records, oldest
        first; see :mod:`miir.inference`), the history's items excluded unless
        ``exclude_seen`` is False; for a model that imputes, the imputed missing fields of the
        history items and of the next item."""
        return self._score([self._resolve(history)], k, exclude_seen, True)[0]

    def recommend_batch(
        self,
        histories: Sequence[Sequence[Any]],
        k: int = 10,
        exclude_seen: bool = True,
        imputations: bool = False,
    ) -> list[Recommendation]:
        """:meth:`recommend` for many histories in one model pass (the same items and scores);
        ``imputations`` adds the imputed fields (a second pass)."""
        return self._score([self._resolve(h) for h in histories], k, exclude_seen, imputations)

    def impute(self, history: Sequence[Any], vectors: bool = False) -> Imputation:
        """The missing fields of each history item, and every field of the next item, in human
        form (:class:`~miir.inference.FieldImputation`); ``vectors`` adds imputed text vectors.
        Needs a model that imputes (MIIR)."""
        self._check_fitted()
        if not isinstance(self.model_, Imputer):
            raise MiirError(f"model {self.meta_['model']!r} does not impute side fields")
        r = self._resolve(history)
        imputed, next_item = self._impute([r], vectors)[0]
        return Imputation(imputed, next_item, r.cut, r.warnings)

    # ------------------------------------------------------------------ internals
    def _resolve(self, history: Sequence[Any]) -> Resolved:
        self._check_fitted()
        return self.codebook_.resolve(history, self.model_.history_len, self.accepts_records)

    def _encode_text(self, texts: list[str]) -> np.ndarray:
        """The text encoder of preparation, loaded once on first use. Thread-safe: the first
        call (which loads the sentence model inside :class:`TextEncoder`) runs under a lock,
        so concurrent requests wait for one load instead of each loading a copy."""
        if self._text_ready:
            return self._text(texts)
        with self._lazy_lock:
            if self._text is None:
                name = self.text_encoder if isinstance(self.text_encoder, str) else self.text_model_
                self._text = TextEncoder(name, self.device)
            vecs = self._text(texts)  # (T, D); loads the model on the first call
            self._text_ready = True
            return vecs

    @torch.inference_mode()
    def _score(
        self,
        resolved: list[Resolved],
        k: int,
        exclude_seen: bool,
        imputations: bool,
        display: bool = True,
    ) -> list[Recommendation]:
        """Score resolved histories in one pass: top-k items (with display fields unless
        ``display`` is False: the parquet path has no use for them) and imputations."""
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        items, side = model_inputs(resolved, self.model_, self._encode_text, self.device)
        extra = {} if side is None else {"side": side}
        impute = imputations and isinstance(self.model_, Imputer)
        preds = missing = None
        if impute and hasattr(self.model_, "score_and_impute"):
            # one pass for the scores and the imputations (MIIR: the same tokens either way),
            # computing only the missing fields' predictions
            missing = self._missing(resolved, items, side)
            scores, preds = self.model_.score_and_impute(
                items, wanted=missing.to(items.device), **extra
            )
        else:
            scores = self.model_.score(items, **extra)
        scores = scores.float()  # (B, N + 2)
        scores[:, :FIRST_VALUE_ID] = -torch.inf
        if exclude_seen:
            for b, r in enumerate(resolved):
                scores[b, r.seen] = -torch.inf
        top = torch.topk(scores, min(k, scores.shape[1] - FIRST_VALUE_ID), dim=1)
        imputed = self._impute(resolved, False, items, side, preds, missing) if impute else None
        out = []
        for b, r in enumerate(resolved):
            ranked = [
                ScoredItem(
                    self.codebook_.item_names[int(i)],
                    float(s),
                    self.display(int(i)) if display else {},
                )
                for s, i in zip(top.values[b].tolist(), top.indices[b].tolist(), strict=True)
                if s > -torch.inf
            ]
            history, next_item = imputed[b] if imputed is not None else (None, None)
            out.append(Recommendation(ranked, r.cut, list(r.warnings), history, next_item))
        return out

    @torch.inference_mode()
    def _impute(
        self,
        resolved: list[Resolved],
        vectors: bool,
        items: torch.Tensor | None = None,
        side: Any = None,
        preds: dict[str, torch.Tensor] | None = None,
        missing: torch.Tensor | None = None,
    ) -> list[tuple[list[ItemImputation], ItemImputation]]:
        """Per history: the imputed missing fields of its items, and the next item's fields,
        from one pass over the history with the all-missing query item appended (or from
        ``preds``, that pass's predictions when the scoring pass computed them, with the
        ``missing`` mask it was given)."""
        net = self.model_
        if items is None:
            items, side = model_inputs(resolved, net, self._encode_text, self.device)
        if missing is None:
            missing = self._missing(resolved, items, side)
        L = items.shape[1]
        if preds is None:
            # the query item appended, every field of it to be imputed
            items, hidden = append_query(items, 1 + len(self.codebook_.fields))
            side = side.with_query() if side is not None else None
            extra = {} if side is None else {"side": side}
            preds = net.impute(items, hidden, **extra)  # name -> (B, L + 1, V + 2) | (..., D)
        preds = {name: p.float().cpu() for name, p in preds.items()}
        described = self._describe(missing, preds, vectors)
        out = []
        for b, r in enumerate(resolved):
            start = L - len(r.ids)
            history = [
                ItemImputation(p, r.labels[p], described[b, start + p])
                for p in range(len(r.ids))
                if (b, start + p) in described
            ]
            out.append((history, ItemImputation(len(r.ids), None, described.get((b, L), {}))))
        return out

    def _missing(self, resolved: list[Resolved], items: torch.Tensor, side: Any) -> torch.Tensor:
        """(B, L + 1, F) bool on the CPU: the side fields to impute of ``[history, query]``,
        those missing in the history items (not padding) and every field of the query."""
        B, L = items.shape
        full = append_query(items, 1)[0]  # (B, L + 1)
        net = self.model_
        present = net.present(full) if side is None else net.present(full, side.with_query())
        real = torch.zeros(B, L + 1, dtype=torch.bool)  # (B, L + 1): not padding
        for b, r in enumerate(resolved):
            real[b, L - len(r.ids) :] = True  # the history items and the query
        missing = ~present[:, :, 1:].bool().cpu() & real[:, :, None]  # (B, L + 1, F), not the ID
        missing[:, L] = True  # the query item: every field
        return missing

    def _describe(
        self, missing: torch.Tensor, preds: dict[str, torch.Tensor], vectors: bool
    ) -> dict[tuple[int, int], dict[str, FieldImputation]]:
        """(batch row, position) -> the described fields that are ``missing`` there (B, L, F),
        in field order: one :func:`~miir.inference.describe_rows` per field for the whole
        batch (per position, the small top-k calls cost more than the model pass)."""
        text = self._text_tables()
        out: dict[tuple[int, int], dict[str, FieldImputation]] = {}
        for f, info in enumerate(self.codebook_.fields.values()):
            where = missing[:, :, f].nonzero().tolist()  # (n, 2) rows, positions
            if not where:
                continue
            at = torch.tensor(where)  # (n, 2)
            rows = describe_rows(
                info, preds[info.name][at[:, 0], at[:, 1]], self.codebook_,
                text.get(info.name), vectors,
            )  # fmt: skip
            for (b, j), described in zip(where, rows, strict=True):
                out.setdefault((b, j), {})[info.name] = described
        return out

    def _text_tables(self) -> dict[str, TextIndex]:
        """Per text field: the item ids whose text is present and their unit text vectors,
        from the model's item tables (built once), searched through the model's text head
        where it has one (see :class:`~miir.inference.TextIndex`)."""
        if hasattr(self, "text_tables_"):
            return self.text_tables_
        with self._lazy_lock:
            if hasattr(self, "text_tables_"):  # built by a concurrent request meanwhile
                return self.text_tables_
            tables: dict[str, TextIndex] = {}
            t = self.tables_
            for f in t.fields:
                if f.kind == FieldKind.TEXT and f.name in t.values:
                    rows = np.flatnonzero(t.present[f.name])
                    vecs = torch.from_numpy(np.asarray(t.values[f.name][rows], dtype=np.float32))
                    tables[f.name] = TextIndex(
                        torch.from_numpy(rows),
                        torch.nn.functional.normalize(vecs, dim=1),
                        self._text_head(f.name),
                    )
            self.text_tables_ = tables
        return self.text_tables_

    def _text_head(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The (W, b) of the affine map behind the model's predicted vectors of text field
        ``name``, when it has one (MIIR's text codec: a linear layer)."""
        codecs = getattr(getattr(self.model_, "encoder", None), "codecs", None)
        codec = codecs[name] if codecs is not None and name in codecs else None
        out = getattr(codec, "out", None)
        if isinstance(out, torch.nn.Linear) and out.bias is not None:
            return out.weight, out.bias
        return None

    def __repr__(self) -> str:
        fitted = (
            f", fitted on {self.meta_.get('artifact', {}).get('name')}"
            if hasattr(self, "model_")
            else ""
        )
        return f"Recommender(model={self.model!r}{fitted})"
