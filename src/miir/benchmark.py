"""``miir benchmark``: train a grid of models on data sets and settings, over seeds, and write
the paper's comparison tables (Tables 2-4) from what really ran.

A grid is a YAML file (relative paths in it are read from the current folder, like every
``miir`` path)::

    name: beauty                     # tables go to bench/results/<name> by default
    cache: artifacts                 # where data sets given as a raw source are prepared
    target: miir                     # optional: the column whose Impr. (%) is reported
    settings:                        # setting name -> how a source is prepared
      given: {discard: 0.0}          #   prepared into <cache>/<data><suffix>; the suffix is ''
      D: {discard: 0.5, suffix: -d}  #   for discard 0, else '-<setting>' unless given
    data:
      beauty:
        source: ../shared/data/amazon-beauty   # + format, kinds (--field), prepare options
        prepare: {max_len: 20}
      mine:
        artifacts: {given: artifacts/mine}     # or ready artifacts, one per setting
    seeds: [1]                       # every model's seeds, unless the model names its own
    train: {lr: 1.0e-3, max_epochs: 100}       # train options of every run
    model: {}                        # model options of every model
    models:
      - gru4rec                      # a registry name, or a mapping:
      - {name: sasrec, seeds: [1, 2, 3], model: {dropout: 0.2}, train: {batch_size: 256}}

Unknown keys are errors naming the key and the file; model names are checked against the
registry when the grid is planned (``miir models`` lists them).

**Runs and records.** A run is keyed by a hash of its model name, its resolved model config,
its train config (seed included; ``progress`` left out, it changes no result) and the
checksums of its artifact (its evaluation cases, and its identity: the manifest without the
library versions and the text embeddings' checksums, so that the same data prepared on another
machine keeps its records); the miir version is not part of the key. A finished run is
recorded at once as ``<records>/<key>.json`` (metrics of validation and
test under every protocol, best epochs, epochs run, wall time, command, commit, machine) with
its per-user test ranks in ``<records>/<key>.ranks.npz``, both written atomically. A rerun of
the grid skips recorded runs; a run killed midway resumes from its run folder
``<runs-root>/<key>`` (Lightning's last checkpoint). Records may be read from several folders
(``--records`` repeated; new ones are written to the first), so a grid that shares runs with
another grid reads that grid's folder instead of holding copies.

**Tables.** For each data set and setting: rows are the metrics under each protocol (three
blocks), columns the models in grid order (test metrics in %, mean ± sample std over seeds),
then ``Impr. (%)`` of the target over the best baseline of that row and the p-value of a paired
two-sided t-test over users. Choices, stated again in every table's notes:

- the target is the grid's ``target``; without one, the MIIR-family column with the best mean
  *validation* full-ranking NDCG@10 (choosing it on test metrics would flatter it);
- the best baseline is chosen per row on test metrics (as the paper underlines it), which can
  only make the target look worse; the baselines are the models outside the MIIR family (MIIR
  variants are not baselines, as in the paper), or every other model for a target from outside
  the family;
- the t-test pairs users: each model's per-user metric is first averaged over its recorded
  seeds (so a 3-seed model is compared with its seed-averaged per-user values, not with one
  seed picked), then ``scipy.stats.ttest_rel``; p < 0.05 is marked ``*`` whatever the sign,
  and p is not corrected for the number of rows tested;
- a negative Impr. is shown as it is.

The grid's ``claims`` (the paper's, such as "MIIR beats MIIR-M") are judged under each case's
table, per protocol, on one metric (NDCG@10 unless named): the difference of the two columns'
means, the same paired test, and a verdict: ``held`` or ``not held`` when p < 0.05 and the
difference is beyond a floor (the larger seed standard deviation when both sides have two or
more seeds; else the larger of the grid's ``noise``, 0.0021 by default: two runs of one
objective land up to that far apart in full NDCG@10, and the widest gap between two seeds of
one model in the case's table under that protocol, since sampled metrics spread several times
wider over seeds), ``inside the noise`` otherwise, ``not run`` when a side has no
record. The verdicts are also in ``results.json``.

A model that reads item ids only (no ``fields`` in its config) computes the same thing on
every setting of one data set's cases (same users, sequences, split and negatives: the
artifacts' cases checksum), so its runs after the first share the first one's record
(``PlannedRun.twin``) instead of training again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import time
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from miir.atomic import atomic_figure, atomic_json, atomic_npz, atomic_write_text
from miir.errors import ConfigError
from miir.options import NEUTRAL_OPTIONS
from miir.provenance import git_commit, machine

METRICS = ("HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR")
FIGURE_METRICS = ("HR@10", "NDCG@10")
#: the validation metric that picks the MIIR-family column when the grid names no target
SELECT_BY = ("full", "NDCG@10")
#: train options that change no result, left out of a run's key
NOT_KEYED = frozenset({"progress"})


def keyed_config(values: dict[str, Any]) -> dict[str, Any]:
    """A dumped config without display-only options and without options at their neutral
    value (:data:`miir.options.NEUTRAL_OPTIONS`), so that adding an option never changes the
    key (or the adoption check) of the runs recorded before it existed."""
    return {
        k: v
        for k, v in values.items()
        if k not in NOT_KEYED and not (k in NEUTRAL_OPTIONS and v == NEUTRAL_OPTIONS[k])
    }


ONLY_KEYS = ("model", "label", "data", "setting", "seed")
SIGNIFICANCE = 0.05
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

Echo = Callable[[str], None]


# ------------------------------------------------------------------------------ grid schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SettingSpec(_Strict):
    """How a data set given as a raw source is prepared for one setting."""

    discard: float = Field(
        0.0, ge=0.0, lt=1.0, description="Hide each present side value with this probability."
    )
    suffix: str | None = Field(
        None,
        description="Artifact folder suffix: <cache>/<data><suffix> (default '' for discard 0, "
        "else '-<setting>').",
    )


class DataSpec(_Strict):
    """A data set: a raw source prepared per setting, or ready artifacts per setting."""

    source: str | None = Field(None, description="Raw source folder (as for `miir prepare`).")
    format: str = Field("auto", description="Source format (`miir prepare --format`).")
    kinds: dict[str, str] = Field(
        default_factory=dict, description="Field kind overrides (`miir prepare --field`)."
    )
    prepare: dict[str, Any] = Field(
        default_factory=dict,
        description="`miir prepare` options (PrepareConfig keys; discard comes from the setting).",
    )
    artifacts: dict[str, str] = Field(
        default_factory=dict, description="Setting name -> ready artifact folder."
    )
    settings: list[str] | None = Field(
        None, description="Settings this data set runs under (default: all for a source)."
    )

    @model_validator(mode="after")
    def _one_origin(self) -> DataSpec:
        if (self.source is None) == (not self.artifacts):
            raise ValueError("give either 'source' (a raw folder) or 'artifacts' (per setting)")
        if self.artifacts and (self.kinds or self.prepare or self.format != "auto"):
            raise ValueError("'format', 'kinds' and 'prepare' apply to a 'source' only")
        return self


class ModelSpec(_Strict):
    """One column of the tables: a registered model with its options and seeds."""

    name: str = Field(description="Registered model name (`miir models`).")
    label: str | None = Field(
        None, description="Column name (default: the model's display name, e.g. SASRec)."
    )
    model: dict[str, Any] = Field(default_factory=dict, description="Model config overrides.")
    train: dict[str, Any] = Field(default_factory=dict, description="Train config overrides.")
    seeds: list[int] | None = Field(None, min_length=1, description="Seeds (default: the grid's).")
    settings: list[str] | None = Field(
        None, min_length=1, description="Settings this model runs under (default: all)."
    )
    imputed_by: str | None = Field(
        None,
        description="Label or name of an earlier model of the grid that imputes side fields "
        "(e.g. lrmm): this model trains on a derived artifact whose missing side values that "
        "model's run (same data, setting and seed, else its first seed) filled in "
        "(the paper's FDSA+LRMM).",
    )


class ClaimSpec(_Strict):
    """A claim of the paper to read off a case's table: ``better`` beats ``worse``."""

    text: str = Field(min_length=1, description="The claim, in words.")
    better: str = Field(min_length=1, description="Model label (or name) claimed better.")
    worse: str = Field(min_length=1, description="Model label (or name) claimed worse.")
    metric: str = Field("NDCG@10", description="Metric judged (under every protocol).")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in METRICS:
            raise ValueError(f"metric {value!r}: one of {', '.join(METRICS)}")
        return value


class GridSpec(_Strict):
    """A benchmark grid (see the module docstring)."""

    name: str | None = Field(None, description="Grid name (default: the file name).")
    cache: str = Field("artifacts", description="Folder of prepared artifacts.")
    target: str | None = Field(
        None, description="Model (label or name) whose Impr. (%) is reported."
    )
    settings: dict[str, SettingSpec] = Field(
        default_factory=lambda: {"given": SettingSpec()},
        description="Setting name -> preparation (default: given, discard 0).",
    )
    data: dict[str, DataSpec] = Field(min_length=1, description="Data set name -> data.")
    seeds: list[int] = Field(default_factory=lambda: [1], min_length=1, description="Seeds.")
    train: dict[str, Any] = Field(default_factory=dict, description="Train options of all runs.")
    model: dict[str, Any] = Field(default_factory=dict, description="Model options of all models.")
    models: list[ModelSpec] = Field(min_length=1, description="Models, in column order.")
    claims: list[ClaimSpec] = Field(
        default_factory=list, description="The paper's claims, judged under each case's table."
    )
    noise: float = Field(
        0.0021,
        ge=0,
        description="Absolute difference of a claim's metric inside which it is noise when a "
        "side has one seed (two runs of one objective: up to 0.0021 full NDCG@10), or the "
        "widest gap between two seeds of one model in the table if that is wider; with two "
        "or more seeds on both sides, the larger seed standard deviation.",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _names_as_entries(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> GridSpec:
        for kind, names in (("data set", self.data), ("setting", self.settings)):
            for name in names:
                if not _NAME.match(name):
                    raise ValueError(
                        f"{kind} name {name!r}: use letters, digits, '_', '.' and '-' only"
                    )
        for name, spec in self.data.items():
            used = list(spec.artifacts) + list(spec.settings or [])
            unknown = [s for s in used if s not in self.settings]
            if unknown:
                raise ValueError(
                    f"data set {name!r} names unknown setting(s) {unknown}; "
                    f"settings: {', '.join(self.settings)}"
                )
        labels: dict[str, int] = {}
        for i, m in enumerate(self.models):
            if m.label is not None:
                if m.label in labels:
                    raise ValueError(f"models[{i}]: label {m.label!r} is used twice")
                labels[m.label] = i
        if self.target is not None:
            known = {m.name.lower() for m in self.models} | {
                (m.label or "").lower() for m in self.models
            }
            if self.target.lower() not in known:
                raise ValueError(f"target {self.target!r} is not one of the grid's models")
        for i, m in enumerate(self.models):
            unknown = [s for s in m.settings or [] if s not in self.settings]
            if unknown:
                raise ValueError(
                    f"models[{i}] names unknown setting(s) {unknown}; "
                    f"settings: {', '.join(self.settings)}"
                )
        for i, m in enumerate(self.models):
            if m.imputed_by is None:
                continue
            earlier = {
                key.lower(): j
                for j, e in enumerate(self.models[:i])
                for key in (e.name, e.label or "")
                if key
            }
            j = earlier.get(m.imputed_by.lower())
            if j is None:
                raise ValueError(
                    f"models[{i}]: imputed_by {m.imputed_by!r} is not an earlier model of the grid"
                )
            if self.models[j].imputed_by is not None:
                raise ValueError(f"models[{i}]: its imputer models[{j}] is itself imputed_by")
            mine = set(m.settings or self.settings)
            theirs = set(self.models[j].settings or self.settings)
            if not mine <= theirs:
                raise ValueError(
                    f"models[{i}] runs under setting(s) {sorted(mine - theirs)} where its "
                    f"imputer models[{j}] does not"
                )
        for where, options in [("train", self.train)] + [
            (f"models[{i}].train", m.train) for i, m in enumerate(self.models)
        ]:
            if "seed" in options:
                raise ValueError(f"{where}: set seeds with 'seeds', not a train 'seed'")
        return self


def _strip_optional(t: Any) -> Any:
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return args[0] if len(args) == 1 else t
    return t


def _allowed_keys(path: tuple[Any, ...]) -> list[str]:
    """The keys allowed at ``path`` (a pydantic error location) of a grid."""
    t: Any = GridSpec
    for part in path:
        t = _strip_optional(t)
        if isinstance(t, type) and issubclass(t, BaseModel):
            info = t.model_fields.get(part) if isinstance(part, str) else None
            if info is None:
                return []
            t = info.annotation
        else:
            args = typing.get_args(t)
            if not args:
                return []
            t = args[-1]
    t = _strip_optional(t)
    if isinstance(t, type) and issubclass(t, BaseModel):
        return sorted(t.model_fields)
    return []


def _loc_text(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe_grid_error(exc: ValidationError, file: str | Path) -> str:
    """One line per problem, naming the file and the key (and the allowed keys)."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = _loc_text(loc)
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
            lines.append(f"{file}: unknown key {key!r}{hint}")
        elif err["type"] == "missing":
            lines.append(f"{file}: {key!r} is required")
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            given = f" (given {err['input']!r})" if loc and "input" in err else ""
            lines.append(f"{file}: {key or '(grid)'}: {msg}{given}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Grid:
    """A validated grid and the file it came from."""

    spec: GridSpec
    path: Path

    @property
    def name(self) -> str:
        return self.spec.name or self.path.stem


def load_grid(path: str | Path) -> Grid:
    """Read and validate a grid file; errors name the file and the key."""
    import yaml

    from miir.data.prepare import PrepareConfig
    from miir.models import describe_validation_error

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the grid ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a grid is a mapping of keys (name, data, models, ...)")
    try:
        spec = GridSpec(**data)
    except ValidationError as exc:
        raise ConfigError(describe_grid_error(exc, path)) from None
    for name, ds in spec.data.items():
        if "discard" in ds.prepare:
            raise ConfigError(
                f"{path}: data.{name}.prepare: 'discard' comes from the settings "
                f"(settings: {', '.join(spec.settings)})"
            )
        try:
            PrepareConfig(**ds.prepare)
        except ValidationError as exc:
            where = f"{path}: data.{name}.prepare"
            raise ConfigError(describe_validation_error(exc, PrepareConfig, where)) from None
    grid = Grid(spec, path)
    if spec.claims:
        columns = grid_labels(grid)
        for i, claim in enumerate(spec.claims):
            for side in ("better", "worse"):
                if _claim_label(getattr(claim, side), columns) is None:
                    known = ", ".join(label for label, _ in columns)
                    raise ConfigError(
                        f"{path}: claims[{i}].{side}: {getattr(claim, side)!r} is not a model "
                        f"of the grid ({known})"
                    )
    return grid


def _claim_label(name: str, columns: list[tuple[str, str]]) -> str | None:
    """The column label a claim names: a label, else a registry name with one column."""
    wanted = name.lower()
    by_label = [label for label, _ in columns if label.lower() == wanted]
    if by_label:
        return by_label[0]
    by_model = [label for label, model in columns if model == wanted]
    return by_model[0] if len(by_model) == 1 else None


# ------------------------------------------------------------------------------ planning


@dataclass
class Case:
    """One data set under one setting: an artifact folder (prepared from a source, or given)."""

    data: str
    setting: str
    discard: float
    path: Path
    spec: DataSpec

    @property
    def title(self) -> str:
        return f"{self.data} ({self.setting})"

    def prepare_config(self) -> Any:
        from miir.data.prepare import PrepareConfig

        return PrepareConfig(**self.spec.prepare, discard=self.discard)


@dataclass
class PlannedRun:
    """One training run of the grid."""

    label: str
    model: str
    data: str
    setting: str
    seed: int
    case: Case
    model_config: Any
    train_config: Any
    config_sha: str
    key: str | None = None  # None until the artifact exists
    #: the artifact's cases checksum (users, sequences, split, negatives); None while absent
    cases_sha256: str | None = None
    #: the run whose imputations fill this run's data (a grid model's ``imputed_by``)
    imputer: PlannedRun | None = None
    #: an earlier run that is the same computation (an ID-only model on another setting of the
    #: same cases): this run shares its record instead of training
    twin: PlannedRun | None = None

    @property
    def id_only(self) -> bool:
        """The model reads item IDs only (nothing a discard changes)."""
        return "fields" not in type(self.model_config).model_fields

    def describe(self) -> str:
        name = self.model if self.imputer is None else self.label
        return f"{name} · {self.case.title} · seed {self.seed}"

    @property
    def data_path(self) -> Path | None:
        """The artifact this run trains on: its case's, or the one derived from the case's by
        its imputer's run (None while that run has no key)."""
        if self.imputer is None:
            return self.case.path
        if self.imputer.key is None:
            return None
        return derived_artifact_path(self.case, self.imputer.key)


def derived_artifact_path(case: Case, imputer_key: str) -> Path:
    """``<case artifact>.imputed-<imputer run key>``, next to the case's artifact."""
    return case.path.parent / f"{case.path.name}.imputed-{imputer_key}"


def grid_cases(grid: Grid) -> list[Case]:
    """Every (data set, setting) of the grid, in grid order."""
    spec = grid.spec
    out = []
    for data, ds in spec.data.items():
        if ds.artifacts:
            names = [s for s in spec.settings if s in ds.artifacts]
            if ds.settings is not None:
                names = [s for s in names if s in ds.settings]
        else:
            names = [s for s in spec.settings if ds.settings is None or s in ds.settings]
        for setting in names:
            st = spec.settings[setting]
            if ds.artifacts:
                path = Path(ds.artifacts[setting])
            else:
                suffix = (
                    st.suffix
                    if st.suffix is not None
                    else ("" if not st.discard else f"-{setting}")
                )
                path = Path(spec.cache) / f"{data}{suffix}"
            out.append(Case(data, setting, st.discard, path, ds))
    paths: dict[Path, str] = {}
    for case in out:
        if case.path in paths:
            raise ConfigError(
                f"{grid.path}: {paths[case.path]} and {case.title} use the same artifact "
                f"folder {case.path}; give the settings different suffixes"
            )
        paths[case.path] = case.title
    return out


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _keyed_payload(model: str, model_config: Any, train_config: Any) -> dict[str, Any]:
    return {
        "model": model,
        "model_config": keyed_config(model_config.model_dump(mode="json")),
        "train_config": keyed_config(train_config.model_dump(mode="json")),
    }


def run_key(
    model: str, model_config: Any, train_config: Any, cases_sha256: str, identity_sha256: str
) -> str:
    """The key of a run: a hash of the model name, its resolved model config, its train config
    (seed included; display-only options left out) and the artifact's cases and identity
    checksums (:func:`~miir.evaluation.compare.identity_checksum`: the same prepare options on
    the same sources, wherever prepared; the miir version is not part of it)."""
    return _key_of(_keyed_payload(model, model_config, train_config), cases_sha256, identity_sha256)


def _key_of(payload: dict[str, Any], cases_sha256: str, identity_sha256: str) -> str:
    """:func:`run_key` from a :func:`_keyed_payload` already built."""
    return _sha({**payload, "cases_sha256": cases_sha256, "identity_sha256": identity_sha256})[:16]


def artifact_checksums(path: Path) -> tuple[str, str] | None:
    """(cases checksum, identity checksum) of the artifact at ``path``; None if absent."""
    from miir.evaluation.compare import cases_checksum, identity_checksum

    manifest = path / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        parsed = json.loads(manifest.read_bytes())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{manifest}: not valid JSON ({exc})") from None
    return cases_checksum(parsed), identity_checksum(parsed)


def check_artifact(case: Case) -> None:
    """An existing artifact must be what the grid asks for: its prepare options (a source) or
    at least its discard probability (a given artifact)."""
    manifest = json.loads((case.path / "manifest.json").read_text(encoding="utf-8"))
    have = manifest.get("config", {})
    if case.spec.source is None:
        want = {"discard": case.discard}
    else:
        want = case.prepare_config().model_dump(mode="json")
    diff = [f"{k}={have.get(k)!r} (grid: {v!r})" for k, v in want.items() if have.get(k) != v]
    if diff:
        raise ConfigError(
            f"{case.path}: the artifact for {case.title} was prepared with {', '.join(diff)}; "
            "remove it (it is prepared again) or point the grid elsewhere"
        )


def check_fields(case: Case, resolved: list[tuple[Any, str, str, Any]], file: Path) -> None:
    """Every side field a model of the grid names must be in the case's artifact: an error at
    planning (``--dry-run`` included), naming the model and the fields there are, not at the
    start of that model's training."""
    manifest = json.loads((case.path / "manifest.json").read_text(encoding="utf-8"))
    have = [f["name"] for f in manifest.get("schema", {}).get("fields", [])]
    for m, _, label, mc in resolved:
        if m.settings is not None and case.setting not in m.settings:
            continue
        unknown = [f for f in getattr(mc, "fields", None) or () if f not in have]
        if unknown:
            raise ConfigError(
                f"{file}: {label} reads field(s) {', '.join(map(repr, unknown))}, which "
                f"{case.title} ({case.path}) does not have; its fields are {have}"
            )


def ensure_artifact(case: Case, echo: Echo) -> None:
    """Prepare the case's artifact from its source once; reuse an existing one."""
    if (case.path / "manifest.json").is_file():
        check_artifact(case)
        return
    if case.spec.source is None:
        raise ConfigError(
            f"{case.path}: not an artifact folder (no manifest.json) for {case.title}"
        )
    if case.path.exists():
        raise ConfigError(f"{case.path}: exists and is not an artifact; remove it or move it")
    from miir.data.prepare import prepare
    from miir.data.readers import read_source

    echo(f"preparing {case.title} from {case.spec.source} into {case.path}")
    raw = read_source(case.spec.source, case.spec.format, overrides=dict(case.spec.kinds))
    case.path.parent.mkdir(parents=True, exist_ok=True)
    prepare(raw, case.path, case.prepare_config(), progress=True)


def _display_label(name: str, model_config: Any) -> str:
    variant = getattr(model_config, "variant_name", None)
    if callable(variant):
        return variant()
    from miir.models import get_entry

    return get_entry(name).cls.__name__


def _resolve_models(grid: Grid) -> tuple[list[tuple[Any, str, str, Any]], dict[int, int]]:
    """Each model of the grid as (spec, registry name, column label, model config), and the
    index of each ``imputed_by`` model's imputer."""
    from miir.models import REGISTRY, model_config

    spec, file = grid.spec, grid.path
    unknown = [m.name for m in spec.models if m.name.lower() not in REGISTRY]
    if unknown:
        raise ConfigError(
            f"{file}: unknown model(s) {', '.join(repr(u) for u in unknown)}; registered "
            f"models: {', '.join(REGISTRY)}"
        )
    labels: list[str] = []
    resolved = []
    imputers: dict[int, int] = {}  # model index -> its imputer's index
    for i, m in enumerate(spec.models):
        name = m.name.lower()
        mc = model_config(name, {**spec.model, **m.model}, f"{file} models[{i}]")
        imputer_index = None
        if m.imputed_by is not None:
            wanted = m.imputed_by.lower()
            imputer_index = next(
                j
                for j, (e, e_name, e_label, _) in enumerate(resolved)
                if wanted in (e_name, e_label.lower(), (e.label or "").lower())
            )
            imputers[i] = imputer_index
            imputer_name = resolved[imputer_index][1]
            if not callable(getattr(REGISTRY[imputer_name].cls, "impute", None)):
                raise ConfigError(
                    f"{file}: models[{i}]: imputed_by {m.imputed_by!r}: model "
                    f"{imputer_name!r} does not impute side fields"
                )
        label = m.label or _display_label(name, mc)
        if imputer_index is not None and m.label is None:
            label = f"{label}+{resolved[imputer_index][2]}"
        if label in labels:
            raise ConfigError(
                f"{file}: models[{i}]: two columns would be named {label!r}; give one a 'label'"
            )
        labels.append(label)
        resolved.append((m, name, label, mc))
    return resolved, imputers


def grid_labels(grid: Grid) -> list[tuple[str, str]]:
    """(column label, registry name) of each model of the grid, in column order."""
    return [(label, name) for _, name, label, _ in _resolve_models(grid)[0]]


def plan(grid: Grid, cases: list[Case] | None = None) -> list[PlannedRun]:
    """Every run of the grid (data set x setting x model x seed, in grid order), with its
    configs resolved and validated and its key where its artifact exists."""
    from miir.training.train import train_config

    spec, file = grid.spec, grid.path
    resolved, imputers = _resolve_models(grid)
    cases = grid_cases(grid) if cases is None else cases
    checksums = {c.path: artifact_checksums(c.path) for c in cases}
    for case in cases:
        if checksums[case.path] is not None:
            check_artifact(case)  # an artifact prepared otherwise is an error, not a reuse
            check_fields(case, resolved, file)
    runs: list[PlannedRun] = []
    seen: dict[str, str] = {}
    for case in cases:
        by_model: dict[int, dict[int, PlannedRun]] = {}
        for i, (m, name, label, mc) in enumerate(resolved):
            if m.settings is not None and case.setting not in m.settings:
                continue
            for seed in m.seeds or spec.seeds:
                tc = train_config(
                    {**spec.train, **m.train, "seed": seed}, f"{file} train options of {label}"
                )
                payload = _keyed_payload(name, mc, tc)
                imputer = None
                if i in imputers:
                    mine = by_model[imputers[i]]
                    imputer = mine.get(seed) or mine[min(mine)]
                    payload["imputed_by"] = imputer.config_sha  # not the plain model's run
                run = PlannedRun(
                    label=label,
                    model=name,
                    data=case.data,
                    setting=case.setting,
                    seed=seed,
                    case=case,
                    model_config=mc,
                    train_config=tc,
                    config_sha=_sha(payload),
                    imputer=imputer,
                )
                by_model.setdefault(i, {})[seed] = run
                set_key(run, checksums[case.path] if imputer is None else None)
                if run.key is not None:
                    if run.key in seen:
                        raise ConfigError(
                            f"{file}: {seen[run.key]} and {run.describe()} are the same run "
                            "(same model, configs, seed and artifact)"
                        )
                    seen[run.key] = run.describe()
                runs.append(run)
    # An ID-only model reads nothing the discard changes: on another setting with the same
    # users, sequences, split and negatives (cases checksum) its run is the same computation
    # (SASRec's Beauty D seeds reproduced the given ones bit for bit), so it shares the first
    # such run's record instead of training again.
    first: dict[tuple[str, str], PlannedRun] = {}
    for run in runs:
        sums = checksums.get(run.case.path)
        if run.imputer is not None or sums is None or not run.id_only:
            continue
        twin = first.setdefault((run.config_sha, sums[0]), run)
        if twin is not run:
            run.twin = twin
    return runs


def set_key(run: PlannedRun, sums: tuple[str, str] | None = None) -> None:
    """Key ``run`` by its artifact's checksums (``sums``, else read from its data path, a
    derived artifact included); the key stays None while that artifact is absent."""
    if sums is None and run.data_path is not None:
        sums = artifact_checksums(run.data_path)
    if sums is not None:
        run.cases_sha256 = sums[0]
        run.key = run_key(run.model, run.model_config, run.train_config, *sums)


def parse_only(filters: Iterable[str]) -> dict[str, set[str]]:
    """``["model=sasrec", "seed=1,2"]`` -> ``{"model": {"sasrec"}, "seed": {"1", "2"}}``."""
    out: dict[str, set[str]] = {}
    for text in filters:
        key, sep, value = text.partition("=")
        key = key.strip().lower()
        if not sep or key not in ONLY_KEYS or not value.strip():
            raise ConfigError(
                f"--only expects KEY=VALUE with KEY one of {', '.join(ONLY_KEYS)}, got {text!r}"
            )
        out.setdefault(key, set()).update(v.strip().lower() for v in value.split(",") if v.strip())
    return out


def selected(run: PlannedRun, only: dict[str, set[str]]) -> bool:
    """Whether ``run`` passes the filters: any value of a key, every key."""
    values = {
        "model": {run.model.lower(), run.label.lower()},  # a registry name or a column label
        "label": {run.label.lower()},  # the column label only ("MIIR", not its labelled kin)
        "data": {run.data.lower()},
        "setting": {run.setting.lower()},
        "seed": {str(run.seed)},
    }
    return all(values[k] & wanted for k, wanted in only.items())


# ------------------------------------------------------------------------------ records


class RecordStore:
    """Recorded runs: ``<root>/<key>.json`` and ``<root>/<key>.ranks.npz``, read from one or
    more folders. New records are written to the first; a key recorded in several folders is
    read from the first that holds it, so a grid can share the records of another grid's
    folder instead of holding copies."""

    def __init__(self, root: str | Path | Sequence[str | Path]) -> None:
        roots = [root] if isinstance(root, (str, Path)) else list(root)
        if not roots:
            raise ConfigError("no records folder given")
        self.roots = [Path(r) for r in roots]
        self.root = self.roots[0]
        self.by_key: dict[str, dict[str, Any]] = {}
        self._home: dict[str, Path] = {}
        for folder in self.roots:
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.json")):
                if path.name.startswith(".") or path.stem in self.by_key:
                    continue
                try:
                    record = json.loads(path.read_text(encoding="utf-8"))
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}: not a valid run record ({exc})") from None
                if isinstance(record, dict) and record.get("key") == path.stem:
                    self.by_key[path.stem] = record
                    self._home[path.stem] = folder

    def describe(self) -> str:
        """The folders, as a table's header names them."""
        return ", ".join(f"`{r}`" for r in self.roots)

    def find(self, run: PlannedRun) -> dict[str, Any] | None:
        """The record of ``run``: by its key, else its twin's (the same computation on another
        setting). Failing that (an artifact absent, or the twin's), a record on the same data
        set whose key is this run's key over the record's own artifact checksums (today's
        keying rules, whatever they were when it was written): of the same setting where the
        run has no key; for an ID-only model also of another setting with the same cases (the
        twin the plan finds when both artifacts exist); for a run on imputed data, one whose
        imputer is the recorded imputer run."""
        if run.key is not None:
            record = self.by_key.get(run.key)
            if record is None and run.twin is not None:
                record = self.find(run.twin)  # the same computation, recorded under its key
            if record is not None:
                return record
        imputer_key = None
        if run.imputer is not None:
            found = self.find(run.imputer)
            if found is None:
                return None
            imputer_key = found.get("key")
        shareable = imputer_key is None and run.id_only
        if run.key is not None and not shareable:
            return None
        payload = _keyed_payload(run.model, run.model_config, run.train_config)
        mine, others = [], []
        for r in self.by_key.values():
            sums = r.get("artifact") or {}
            if r.get("data") != run.data or r.get("imputed_by") != imputer_key:
                continue
            if not {"cases_sha256", "identity_sha256"} <= sums.keys():
                continue
            if _key_of(payload, sums["cases_sha256"], sums["identity_sha256"]) != r.get("key"):
                continue
            if r.get("setting") == run.setting and run.key is None:
                mine.append(r)
            elif (
                r.get("setting") != run.setting
                and shareable
                and run.cases_sha256 in (None, sums["cases_sha256"])
            ):
                others.append(r)
        same = mine or others
        return max(same, key=lambda r: r.get("date", "")) if same else None

    def ranks_path(self, key: str) -> Path:
        return self._home.get(key, self.root) / f"{key}.ranks.npz"

    def write(self, record: dict[str, Any], ranks: dict[str, np.ndarray]) -> None:
        """Write the ranks, then the record (a record always has its ranks)."""
        self.root.mkdir(parents=True, exist_ok=True)
        key = record["key"]
        ranks = {p: r.astype(np.int32) for p, r in ranks.items()}
        self._home[key] = self.root  # the ranks beside the record, in the first folder
        atomic_npz(self.ranks_path(key), ranks, compressed=True)
        atomic_json(self.root / f"{key}.json", record)
        self.by_key[key] = record

    def ranks(self, key: str) -> dict[str, np.ndarray] | None:
        path = self.ranks_path(key)
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            return {p: data[p] for p in data.files}


def read_curve(run_dir: Path, stages: Iterable[str]) -> list[dict[str, Any]]:
    """Validation metrics per epoch from the run's CSV logs (a resumed stage logs to
    ``<stage>-resumedK``), stage by stage in training order."""
    order = {s: i for i, s in enumerate(stages)}
    rows: dict[tuple[int, int], dict[str, Any]] = {}
    for path in sorted((run_dir / "logs").glob("*/metrics.csv")):
        stage = path.parent.name.rpartition("-resumed")[0] or path.parent.name
        with path.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                values = {k: float(v) for k, v in row.items() if k and k.startswith("valid/") and v}
                if values and row.get("epoch", "").isdigit():
                    epoch = int(row["epoch"])
                    rows[(order.get(stage, len(order)), epoch)] = {
                        "stage": stage,
                        "epoch": epoch,
                        **values,
                    }
    return [rows[k] for k in sorted(rows)]


def _artifact_info(info: dict[str, Any] | None, run: PlannedRun) -> dict[str, Any] | None:
    """The run's artifact record, with the identity checksum of its key (a run folder written
    before the identity existed lacks it)."""
    if info is None or "identity_sha256" in info or run.data_path is None:
        return info
    sums = artifact_checksums(run.data_path)
    return info if sums is None else {**info, "identity_sha256": sums[1]}


def _record(
    run: PlannedRun,
    results: dict[str, Any],
    run_dir: Path,
    *,
    wall: float,
    resumed: bool,
    command: str | None,
    grid: Grid,
    code: dict[str, Any],
) -> dict[str, Any]:
    import miir

    stages = results.get("stages", {})
    curve = read_curve(run_dir, stages)
    return {
        "key": run.key,
        "config_sha256": run.config_sha,
        "model": run.model,
        "label": run.label,
        "variant": results.get("variant"),
        "data": run.data,
        "setting": run.setting,
        "discard": run.case.discard,
        "seed": run.seed,
        "model_config": run.model_config.model_dump(mode="json"),
        "train_config": run.train_config.model_dump(mode="json"),
        "artifact": _artifact_info(results.get("run", {}).get("artifact"), run),
        "imputed_by": run.imputer.key if run.imputer is not None else None,
        "valid": results["valid"],
        "test": results["test"],
        "stages": stages,
        "best_epochs": {s: v["epoch"] + 1 for s, v in stages.items()},
        "epochs_run": len({(c["stage"], c["epoch"]) for c in curve}),
        "curve": curve,
        "train_seconds": results.get("train_seconds"),
        "wall_seconds": wall,
        "resumed": resumed,
        "command": command,
        **code,
        "machine": machine(),
        "miir_version": miir.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "grid": str(grid.path),
        "run_dir": str(run_dir),
    }


def execute(
    run: PlannedRun,
    runs_root: Path,
    store: RecordStore,
    *,
    command: str | None,
    grid: Grid,
) -> dict[str, Any]:
    """Train ``run`` (resuming its run folder where one exists; a folder holding finished
    results is only recorded) and record it."""
    assert run.key is not None, "plan the run after its artifact exists"
    run_dir = runs_root / run.key
    done = (run_dir / "results.json").is_file() and (run_dir / "ranks_test.npz").is_file()
    resumed = False
    code = git_commit()  # the code that trains, read before the run (the tree may change)
    if done:
        results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        _check_adopted(run, results, run_dir)
        wall = float(results.get("train_seconds") or 0.0)
    else:
        results, wall, resumed = _train(run, run_dir, command)
    with np.load(run_dir / "ranks_test.npz", allow_pickle=False) as data:
        ranks = {p: data[p] for p in data.files}
    record = _record(
        run, results, run_dir, wall=wall, resumed=resumed, command=command, grid=grid, code=code
    )
    store.write(record, ranks)
    return record


def _train(run: PlannedRun, run_dir: Path, command: str | None) -> tuple[dict, float, bool]:
    """Train ``run`` into ``run_dir`` (resuming what the folder holds): its results, the wall
    time and whether it resumed."""
    from miir.training import train as training

    resumed = run_dir.is_dir() and any(run_dir.iterdir())
    started = time.perf_counter()
    results = training.train(
        run.data_path,
        run_dir,
        run.model,
        run.model_config,
        run.train_config,
        resume=resumed,
        command=command,
    )
    return results, time.perf_counter() - started, resumed


def ensure_imputed(
    run: PlannedRun,
    runs_root: Path,
    store: RecordStore,
    command: str | None,
    grid: Grid,
    echo: Echo,
) -> int:
    """Make ``run``'s data: train and record its imputer's run where it is not recorded (even
    outside ``--only``), derive the imputed artifact from it where absent, then key ``run``.
    Returns the number of runs trained (0 or 1)."""
    from miir.data.artifact import Artifact
    from miir.data.derived import impute_artifact

    imputer = run.imputer
    assert imputer is not None and imputer.key is not None
    trained = 0
    if store.find(imputer) is None:
        echo(f"[imputer] {imputer.describe()} (for {run.label})")
        execute(imputer, runs_root, store, command=command, grid=grid)
        trained = 1
    path = run.data_path
    assert path is not None
    if not (path / "manifest.json").is_file():
        run_dir = runs_root / imputer.key
        if not (run_dir / "best" / "model.json").is_file():
            # recorded (the records travel with the repository) but trained elsewhere: train
            # it again here to impute with; its record stays the one that was committed
            echo(
                f"[imputer] {imputer.describe()} (for {run.label}): recorded, but {run_dir} "
                "holds no checkpoint; training it again to impute with (its record is kept)"
            )
            results, _, _ = _train(imputer, run_dir, command)
            recorded = store.find(imputer)
            assert recorded is not None  # trained and recorded above where it was not
            echo(
                f"[imputer] retrained: test full NDCG@10 "
                f"{results['test']['full']['NDCG@10']:.4f} (recorded "
                f"{recorded['test']['full']['NDCG@10']:.4f})"
            )
            trained += 1
        echo(f"imputing {run.case.title} with {imputer.label} run {imputer.key} into {path}")
        impute_artifact(Artifact(run.case.path), run_dir, path)
    set_key(run)
    return trained


def _check_adopted(run: PlannedRun, results: dict[str, Any], run_dir: Path) -> None:
    """A finished run folder is recorded only if it trained exactly the planned run: the same
    model, model config and train config (keyed options only)."""
    info = results.get("run", {})
    if (
        info.get("model") != run.model
        or keyed_config(info.get("model_config", {}))
        != keyed_config(run.model_config.model_dump(mode="json"))
        or keyed_config(info.get("train_config", {}))
        != keyed_config(run.train_config.model_dump(mode="json"))
    ):
        raise ConfigError(
            f"{run_dir}: holds a finished run that is not {run.describe()} with the grid's "
            "settings; move it away to train this run"
        )


# ------------------------------------------------------------------------------ estimates


def format_duration(seconds: float | None) -> str:
    """``4000`` -> ``1h06m``; ``None`` -> ``?``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s < 600 else f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def estimate(run: PlannedRun, finished: list[dict[str, Any]]) -> float | None:
    """Expected wall time of ``run``: the mean recorded wall time of finished runs of the same
    model on the same data and setting, else of the same model, else of the same data and
    setting, else of every finished run; None without any."""
    for same in (
        lambda r: (r["label"], r["data"], r["setting"]) == (run.label, run.data, run.setting),
        lambda r: r["label"] == run.label,
        lambda r: (r["data"], r["setting"]) == (run.data, run.setting),
        lambda r: True,
    ):
        walls = [r["wall_seconds"] for r in finished if same(r) and r.get("wall_seconds")]
        if walls:
            return float(np.mean(walls))
    return None


def estimate_left(runs: list[PlannedRun], finished: list[dict[str, Any]]) -> float | None:
    total = 0.0
    for run in runs:
        seconds = estimate(run, finished)
        if seconds is None:
            return None
        total += seconds
    return total


# ------------------------------------------------------------------------------ the command


@dataclass
class Summary:
    planned: int = 0
    recorded: int = 0
    selected: int = 0
    trained: int = 0
    out: Path | None = None
    files: list[Path] = field(default_factory=list)


def run_benchmark(
    grid_path: str | Path,
    *,
    out: str | Path | None = None,
    runs_root: str | Path = "runs/benchmark",
    records: str | Path | Sequence[str | Path] = "bench/results/runs",
    only: Iterable[str] = (),
    dry_run: bool = False,
    tables_only: bool = False,
    command: str | None = None,
    echo: Echo = print,
) -> Summary:
    """Run the grid's unrecorded runs (those ``only`` selects), then write its tables.

    ``dry_run`` lists the runs, which are recorded and the estimated time, and changes
    nothing; ``tables_only`` rebuilds the tables from the records (no training, no
    preparation)."""
    if dry_run and tables_only:
        raise ConfigError("--dry-run and --tables-only exclude each other")
    grid = load_grid(grid_path)
    filters = parse_only(only)
    runs_root = Path(runs_root)
    out = Path(out) if out is not None else Path("bench/results") / grid.name
    cases = grid_cases(grid)
    runs = plan(grid, cases)
    store = RecordStore(records)
    summary = Summary(planned=len(runs), out=out)
    chosen = [r for r in runs if selected(r, filters)]
    summary.selected = len(chosen)
    if filters and not chosen:
        raise ConfigError(f"--only {' '.join(only)} selects none of the grid's {len(runs)} runs")

    if dry_run:
        _dry_run(runs, chosen, store, runs_root, echo)
        summary.recorded = sum(store.find(r) is not None for r in runs)
        return summary

    if not tables_only:
        wanted = {(r.data, r.setting) for r in chosen if store.find(r) is None}
        prepared = False
        for case in cases:
            if (case.data, case.setting) in wanted or (case.path / "manifest.json").is_file():
                exists = (case.path / "manifest.json").is_file()
                ensure_artifact(case, echo)
                prepared = prepared or not exists
        if prepared or any(r.key is None for r in chosen):
            runs = plan(grid, cases)  # keys of the artifacts prepared just now
            chosen = [r for r in runs if selected(r, filters)]
        todo = [r for r in chosen if store.find(r) is None]
        finished = [rec for r in runs if (rec := store.find(r)) is not None]
        echo(
            f"{grid.name}: {len(runs)} runs, {len(finished)} recorded, "
            f"{len(todo)} to run{' (--only)' if filters else ''}"
        )
        for i, run in enumerate(todo, 1):
            if run.twin is not None and store.find(run) is not None:
                echo(f"[{i}/{len(todo)}] {run.describe()} · the same run as on "
                     f"{run.twin.case.title}, recorded: shared")  # fmt: skip
                continue
            if run.imputer is not None:
                summary.trained += ensure_imputed(run, runs_root, store, command, grid, echo)
                if store.find(run) is not None:
                    continue  # recorded under the key that its derived artifact gives it
            left = estimate_left(todo[i - 1 :], finished)
            echo(f"[{i}/{len(todo)}] {run.describe()} · est. left {format_duration(left)}")
            record = execute(run, runs_root, store, command=command, grid=grid)
            finished.append(record)
            summary.trained += 1
    summary.recorded = sum(store.find(r) is not None for r in runs)
    summary.files = write_report(grid, runs, store, out, runs_root=runs_root, command=command)
    echo(f"{summary.recorded} of {len(runs)} runs recorded; tables written to {out}")
    return summary


def _dry_run(
    runs: list[PlannedRun],
    chosen: list[PlannedRun],
    store: RecordStore,
    runs_root: Path,
    echo: Echo,
) -> None:
    finished = [rec for r in runs if (rec := store.find(r)) is not None]
    todo = []
    for i, run in enumerate(chosen, 1):
        found = store.find(run)
        if found is not None and run.key is None:
            state = "recorded (artifact absent: the record found by its configs)"
        elif found is not None and found.get("key") != run.key:
            where = run.twin.case.title if run.twin else f"{found['data']} ({found['setting']})"
            state = f"recorded (shared: the same run on {where})"
        elif found is not None:
            state = "recorded"
        elif run.key is None and run.imputer is not None:
            state = f"to run (on data that {run.imputer.label}, seed {run.imputer.seed}, imputes)"
            todo.append(run)
        elif run.key is None:
            state = f"to run (artifact {run.case.path} to be prepared)"
            todo.append(run)
        elif (runs_root / run.key).is_dir():
            state = f"to resume from {runs_root / run.key}"
            todo.append(run)
        else:
            state = "to run"
            todo.append(run)
        est = "" if found is not None else f" · est. {format_duration(estimate(run, finished))}"
        echo(f"[{i}/{len(chosen)}] {run.describe()} · key {run.key or '?'} · {state}{est}")
    echo(
        f"{len(chosen)} runs selected of {len(runs)}: {len(chosen) - len(todo)} recorded, "
        f"{len(todo)} to run, est. {format_duration(estimate_left(todo, finished))}"
    )


# ------------------------------------------------------------------------------ tables


@dataclass
class Cell:
    """One model's test metric on one case and protocol, over its recorded seeds."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def std(self) -> float | None:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else None


class CaseTable:
    """The comparison table of one case: models' test metrics, the target, the baselines."""

    def __init__(
        self,
        case: Case,
        labels: list[str],
        records: dict[str, list[dict[str, Any]]],
        planned_seeds: dict[str, int],
        families: dict[str, bool],
        target: str | None,
        store: RecordStore,
    ) -> None:
        self.case = case
        self.labels = labels
        self.records = records  # label -> records of this case (one per seed)
        self.planned_seeds = planned_seeds
        self.store = store
        have = [lb for lb in labels if records.get(lb)]
        if target is not None:
            self.target = target if target in have else None
            self.target_note = f"target {target} (named in the grid)"
        else:
            miirs = [lb for lb in have if families[lb]]
            self.target = max(miirs, key=self._valid_score) if miirs else None
            self.target_note = (
                f"target {self.target}: the MIIR-family column with the best mean validation "
                f"{SELECT_BY[0]}-ranking {SELECT_BY[1]}"
                if self.target
                else "no MIIR-family model recorded"
            )
        # the baselines of a MIIR-family target are the other models (its variants are not
        # baselines, as in the paper); a target from outside the family meets every other model
        outside = target is not None and not families[target]
        self.baselines = [lb for lb in have if lb != self.target and (outside or not families[lb])]
        self._per_user: dict[tuple[str, str, str], np.ndarray | None] = {}

    def _valid_score(self, label: str) -> float:
        protocol, metric = SELECT_BY
        return float(np.mean([r["valid"][protocol][metric] for r in self.records[label]]))

    def cell(self, label: str, protocol: str, metric: str) -> Cell:
        return Cell(
            [
                r["test"][protocol][metric] * 100
                for r in self.records.get(label, [])
                if protocol in r["test"]
            ]
        )

    def seed_spread(self, protocol: str, metric: str) -> float | None:
        """The widest gap between two seeds of one model in this table (absolute, not %):
        how far two runs of one objective land apart here under ``protocol``; None without a
        model of two or more seeds."""
        gaps = [
            max(c.values) - min(c.values)
            for c in (self.cell(lb, protocol, metric) for lb in self.labels)
            if c.n > 1
        ]
        return max(gaps) / 100 if gaps else None

    def best_baseline(self, protocol: str, metric: str) -> str | None:
        scored = [(self.cell(b, protocol, metric).mean, b) for b in self.baselines]
        scored = [(m, b) for m, b in scored if m is not None]
        return max(scored, key=lambda s: s[0])[1] if scored else None  # ties: grid order

    def per_user(self, label: str, protocol: str, metric: str) -> np.ndarray | None:
        """The per-user test metric of ``label``, averaged over its recorded seeds."""
        import torch

        from miir.evaluation.metrics import per_user_metrics

        key = (label, protocol, metric)
        if key not in self._per_user:
            values = []
            for r in self.records.get(label, []):
                ranks = self.store.ranks(r["key"])
                if ranks is None or protocol not in ranks:
                    values = []
                    break
                ranks_t = torch.from_numpy(ranks[protocol].astype(np.int64))
                values.append(per_user_metrics(ranks_t, (5, 10))[metric].numpy())
            same = values and len({len(v) for v in values}) == 1
            self._per_user[key] = np.mean(values, axis=0) if same else None
        return self._per_user[key]

    def improvement(self, protocol: str, metric: str) -> dict[str, Any]:
        """Impr. (%) of the target over the row's best baseline and the paired test's p."""
        base = self.best_baseline(protocol, metric)
        out: dict[str, Any] = {"baseline": base, "impr": None, "p": None, "t": None}
        if self.target is None or base is None:
            return out
        t_mean = self.cell(self.target, protocol, metric).mean
        b_mean = self.cell(base, protocol, metric).mean
        if t_mean is None or b_mean is None:
            return out
        # rounded, so that equal means (up to float summation) read +0.00, not -0.00
        out["impr"] = round((t_mean - b_mean) / b_mean * 100, 9) + 0.0 if b_mean > 0 else None
        out["t"], out["p"] = _paired_users(self, self.target, base, protocol, metric)
        return out


def _paired_users(
    table: CaseTable, a: str, b: str, protocol: str, metric: str
) -> tuple[float | None, float | None]:
    """(t, p) of the paired test over the test users between two columns (each column's
    per-user metric averaged over its seeds first); (None, None) without per-user ranks."""
    from miir.evaluation.metrics import paired_t

    ua, ub = table.per_user(a, protocol, metric), table.per_user(b, protocol, metric)
    if ua is None or ub is None or len(ua) != len(ub) or len(ua) < 2:
        return None, None
    return paired_t(ua, ub)


def judge_claim(table: CaseTable, claim: ClaimSpec, protocol: str, noise: float) -> dict[str, Any]:
    """One claim under one protocol of one case: the difference of the two columns' means
    (absolute, ``better`` minus ``worse``), the paired t-test's p over the test users (each
    side's per-user metric averaged over its seeds), the noise floor (the larger seed standard
    deviation where both sides have seeds; where a side has one run, the larger of ``noise``
    and the widest gap between two seeds of one model in the table under this protocol:
    sampled metrics spread several times wider over seeds than full-ranking ones), and the
    verdict:
    ``held`` (ahead by more than the floor, p < 0.05), ``not held`` (behind by more than the
    floor, p < 0.05), ``inside the noise``, or ``not run`` (a side without records)."""
    better, worse = claim.better, claim.worse  # column labels (see write_report)
    out: dict[str, Any] = {
        "claim": claim.text, "better": better, "worse": worse, "protocol": protocol,
        "metric": claim.metric, "diff": None, "p": None, "floor": None, "seeds": None,
        "verdict": "not run",
    }  # fmt: skip
    a, b = table.cell(better, protocol, claim.metric), table.cell(worse, protocol, claim.metric)
    if a.mean is None or b.mean is None:
        return out
    out["seeds"] = (a.n, b.n)
    out["diff"] = (a.mean - b.mean) / 100  # cells are in %
    if a.std is not None and b.std is not None:
        out["floor"] = max(a.std, b.std) / 100
    else:  # a single run is as far from its objective's mean as two runs land apart
        out["floor"] = max(noise, table.seed_spread(protocol, claim.metric) or 0.0)
    out["p"] = _paired_users(table, better, worse, protocol, claim.metric)[1]
    significant = out["p"] is not None and out["p"] < SIGNIFICANCE
    if significant and out["diff"] > out["floor"]:
        out["verdict"] = "held"
    elif significant and out["diff"] < -out["floor"]:
        out["verdict"] = "not held"
    else:
        out["verdict"] = "inside the noise"
    return out


def _claims_markdown(table: CaseTable, claims: list[ClaimSpec], noise: float) -> list[str]:
    from miir.evaluation.evaluate import PROTOCOL_LABELS, PROTOCOLS

    if not claims:
        return []
    metric = claims[0].metric
    spreads = ", ".join(
        f"{PROTOCOL_LABELS[p]} {gap:.4f}"
        if (gap := table.seed_spread(p, metric))
        else f"{PROTOCOL_LABELS[p]} -"
        for p in PROTOCOLS
    )
    lines = [
        f"**The paper's claims on {table.case.title}** (difference: the claimed-better column "
        "minus the other, absolute; held / not held: p < 0.05 and a difference beyond the "
        "floor, the larger seed standard deviation, or where a side has one seed the larger "
        f"of {noise:.4f} and the widest gap between two seeds of one model in this table "
        f"under that protocol ({spreads}); otherwise inside the noise):",
        "",
        "| claim | better | worse | metric | "
        + " | ".join(PROTOCOL_LABELS[p] for p in PROTOCOLS)
        + " |",
        "|---|---|---|---|" + "---|" * len(PROTOCOLS),
    ]
    for claim in claims:
        judged = [judge_claim(table, claim, p, noise) for p in PROTOCOLS]
        texts = []
        for j in judged:
            if j["diff"] is None:
                texts.append("not run")
                continue
            p = "–" if j["p"] is None else f"{j['p']:.1e}"
            texts.append(f"{j['verdict']} ({j['diff']:+.4f}, p {p})")
        first = judged[0]
        lines.append(
            f"| {claim.text} | {first['better']} | {first['worse']} | {claim.metric} | "
            + " | ".join(texts)
            + " |"
        )
    return [*lines, ""]


def _fmt_cell(cell: Cell) -> str:
    if cell.mean is None:
        return "–"
    return f"{cell.mean:.2f}" if cell.std is None else f"{cell.mean:.2f} ± {cell.std:.2f}"


def _fmt_impr(imp: dict[str, Any]) -> tuple[str, str]:
    if imp["impr"] is None:
        return "–", "–"
    star = "*" if imp["p"] is not None and imp["p"] < SIGNIFICANCE else ""
    p = "–" if imp["p"] is None else f"{imp['p']:.1e}"
    return f"{imp['impr']:+.2f}{star}", p


def _header_label(table: CaseTable, label: str) -> str:
    n, planned = len(table.records.get(label, [])), table.planned_seeds[label]
    seeds = f"{n} seed{'s' if n != 1 else ''}" if n == planned else f"{n} of {planned} seeds"
    return f"{label} ({seeds})"


def _case_markdown(table: CaseTable) -> list[str]:
    from miir.evaluation.evaluate import PROTOCOL_LABELS, PROTOCOLS

    case = table.case
    head = ["protocol", "metric", *[_header_label(table, lb) for lb in table.labels]]
    head += ["Impr. (%)", "p"]
    lines = [
        f"## {case.title}",
        "",
        f"Artifact `{case.path}`; {table.target_note}; baselines: "
        f"{', '.join(table.baselines) or 'none recorded'}.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|---|" + "---:|" * (len(head) - 2),
    ]
    behind = 0
    rows = 0
    for protocol in PROTOCOLS:
        for j, metric in enumerate(METRICS):
            cells = {lb: table.cell(lb, protocol, metric) for lb in table.labels}
            means = {lb: c.mean for lb, c in cells.items() if c.mean is not None}
            best = max(means, key=lambda lb: means[lb]) if means else None
            imp = table.improvement(protocol, metric)
            texts = []
            for lb in table.labels:
                text = _fmt_cell(cells[lb])
                if lb == imp["baseline"]:
                    text = f"<u>{text}</u>"
                if lb == best:
                    text = f"**{text}**"
                texts.append(text)
            impr, p = _fmt_impr(imp)
            if imp["impr"] is not None:
                rows += 1
                behind += imp["impr"] < 0
            label = f"**{PROTOCOL_LABELS[protocol]}**" if j == 0 else ""
            lines.append("| " + " | ".join([label, metric, *texts, impr, p]) + " |")
    if rows and behind:
        lines += ["", f"The target is behind the best baseline in {behind} of {rows} rows."]
    return lines


def _runs_rows(runs: list[PlannedRun], store: RecordStore) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        rec = store.find(run)
        best = rec.get("best_epochs", {}) if rec else {}
        rows.append(
            {
                "key": (rec or {}).get("key") or run.key or "",
                "model": run.label,
                "data": run.data,
                "setting": run.setting,
                "seed": run.seed,
                "best_epoch": (
                    ", ".join(f"{s} {e}" if len(best) > 1 else str(e) for s, e in best.items())
                    if rec
                    else ""
                ),
                "epochs": rec.get("epochs_run", "") if rec else "",
                "wall_seconds": round(rec["wall_seconds"], 1) if rec else "",
                "resumed": rec.get("resumed", False) if rec else "",
                "commit": (rec.get("commit") or "")[:10] if rec else "",
                "status": (
                    "not run"
                    if rec is None
                    else "recorded"
                    if rec.get("key") == run.key or rec.get("setting") == run.setting
                    else f"shared with {rec.get('setting')}"
                ),
            }
        )
    return rows


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def _machines(records: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, int] = {}
    for r in records:
        m = r.get("machine") or {}
        text = f"{m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')}"
        if m.get("gpu"):
            text += f", {m['gpu']}"
        seen[text] = seen.get(text, 0) + 1
    return [f"{k} ({v} runs)" for k, v in seen.items()]


def write_report(
    grid: Grid,
    runs: list[PlannedRun],
    store: RecordStore,
    out: Path,
    *,
    runs_root: Path,
    command: str | None,
) -> list[Path]:
    """Write ``results.md``, ``results.csv``, ``runs.csv``, ``results.json`` and the figures
    into ``out``; returns the files written."""
    from miir.evaluation.evaluate import PROTOCOL_LABELS, PROTOCOLS
    from miir.models import get_entry
    from miir.models.miir import MIIR

    out.mkdir(parents=True, exist_ok=True)
    labels = list(dict.fromkeys(r.label for r in runs))
    families = {r.label: get_entry(r.model).cls is MIIR for r in runs}
    target = None
    if grid.spec.target is not None:
        wanted = grid.spec.target.lower()
        target = next(r.label for r in runs if wanted in (r.label.lower(), r.model))
    cases = list({(r.data, r.setting): r.case for r in runs}.values())
    tables = []
    for case in cases:
        here = [r for r in runs if r.case is case]
        records = {
            lb: [rec for r in here if r.label == lb and (rec := store.find(r)) is not None]
            for lb in labels
        }
        planned = {lb: sum(r.label == lb for r in here) for lb in labels}
        tables.append(CaseTable(case, labels, records, planned, families, target, store))

    all_records = [rec for r in runs if (rec := store.find(r)) is not None]
    now = git_commit()
    commits: dict[str, int] = {}
    for r in all_records:
        c = (r.get("commit") or "unknown")[:10] + (" (dirty)" if r.get("dirty") else "")
        commits[c] = commits.get(c, 0) + 1
    info = machine()
    missing = [r for r in runs if store.find(r) is None]
    matched = [r for r in runs if r.key is None and store.find(r) is not None]
    lines = [
        f"# Benchmark: {grid.name}",
        "",
        f"- command: `{command or 'miir benchmark ' + str(grid.path)}`",
        f"- grid: `{grid.path}`; records: {store.describe()}; run folders: `{runs_root}`",
        f"- commit: {(now['commit'] or 'unknown')[:10]}"
        + (" (with uncommitted changes)" if now["dirty"] else "")
        + (
            f"; runs recorded at: {', '.join(f'{c} ({n})' for c, n in commits.items())}"
            if commits
            else ""
        ),
        f"- machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}"
        + (f", {info['gpu']}" if info.get("gpu") else "")
        + (f"; runs recorded on: {'; '.join(_machines(all_records))}" if all_records else ""),
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- {len(all_records)} of {len(runs)} runs recorded",
        "",
        "Test metrics in %, mean ± sample standard deviation over the recorded seeds (the seeds "
        "are in each column's header). Bold: the best column of a row; underlined: the best "
        "baseline of the row (chosen on test, as in the paper). Impr. (%): the target over that "
        "baseline, negative when the target is behind. p: paired two-sided t-test over the test "
        "users, each model's per-user metric averaged over its seeds first; `*`: p < 0.05, a "
        "difference in either direction; p is not corrected for the number of rows. Protocols: "
        + "; ".join(f"{PROTOCOL_LABELS[p]} (`{p}`)" for p in PROTOCOLS)
        + ".",
        "",
    ]
    columns = list(dict.fromkeys((r.label, r.model) for r in runs))
    claims = [
        c.model_copy(
            update={side: _claim_label(getattr(c, side), columns) or getattr(c, side)
                    for side in ("better", "worse")}
        )
        for c in grid.spec.claims
    ]  # fmt: skip
    for table in tables:
        lines += [*_case_markdown(table), ""]
        lines += _claims_markdown(table, claims, grid.spec.noise)
    if missing:
        lines += [
            f"Not run yet ({len(missing)}): "
            + ", ".join(f"{r.label} · {r.case.title} · seed {r.seed}" for r in missing)
            + ".",
            "",
        ]
    if matched:
        lines += [
            f"{len(matched)} runs were matched to their records by configuration only: their "
            "artifacts are not on this machine, so their checksums were not checked.",
            "",
        ]
    runs_rows = _runs_rows(runs, store)
    lines += [
        "## Runs",
        "",
        "| key | model | data | setting | seed | best epoch | epochs | wall time | resumed |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for row in runs_rows:
        wall = {"recorded": format_duration(row["wall_seconds"] or None), "not run": "not run"}
        wall = wall.get(row["status"], f"({row['status']})")
        resumed = "yes" if row["resumed"] is True else ""
        lines.append(
            f"| {row['key'][:10]} | {row['model']} | {row['data']} | {row['setting']} | "
            f"{row['seed']} | {row['best_epoch']} | {row['epochs']} | {wall} | {resumed} |"
        )
    lines.append("")
    figure_notes = write_figures(tables, out, runs_root=runs_root)
    lines += ["## Figures", "", *figure_notes, ""]

    wide = []
    summary_tables = []
    for table in tables:
        for protocol in PROTOCOLS:
            for metric in METRICS:
                row: dict[str, Any] = {
                    "data": table.case.data,
                    "setting": table.case.setting,
                    "protocol": protocol,
                    "metric": metric,
                }
                for lb in labels:
                    c = table.cell(lb, protocol, metric)
                    row[lb] = "" if c.mean is None else round(c.mean, 6)
                    row[f"{lb} std"] = "" if c.std is None else round(c.std, 6)
                    row[f"{lb} n"] = c.n
                imp = table.improvement(protocol, metric)
                row["target"] = table.target or ""
                row["best baseline"] = imp["baseline"] or ""
                row["Impr. (%)"] = "" if imp["impr"] is None else round(imp["impr"], 6)
                row["p"] = "" if imp["p"] is None else imp["p"]
                wide.append(row)
        summary_tables.append(
            {
                "data": table.case.data,
                "setting": table.case.setting,
                "target": table.target,
                "claims": [
                    judge_claim(table, claim, protocol, grid.spec.noise)
                    for claim in claims
                    for protocol in PROTOCOLS
                ],
            }
        )
    files = [out / "results.md", out / "results.csv", out / "runs.csv", out / "results.json"]
    atomic_write_text(files[0], "\n".join(lines))
    atomic_write_text(files[1], _csv(wide))
    atomic_write_text(files[2], _csv(runs_rows))
    atomic_json(
        files[3],
        {
            "grid": str(grid.path),
            "command": command,
            "git": now,
            "machine": info,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "tables": summary_tables,
            "rows": wide,
            "runs": runs_rows,
        },
    )
    files += [out / n for n in ("metrics.png", "curves.png") if (out / n).is_file()]
    return files


# ------------------------------------------------------------------------------ figures


def _curve_of(record: dict[str, Any], runs_root: Path) -> list[dict[str, Any]]:
    if record.get("curve"):
        return record["curve"]
    run_dir = runs_root / record["key"]
    return read_curve(run_dir, record.get("stages", {})) if run_dir.is_dir() else []


def write_figures(tables: list[CaseTable], out: Path, *, runs_root: Path) -> list[str]:
    """``metrics.png`` (test HR@10 and NDCG@10 per model and case, error bars = std over
    seeds, one panel per protocol) and ``curves.png`` (validation curves per model and case);
    returns Markdown lines that show them, or say why one is missing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from miir.evaluation.evaluate import PROTOCOL_LABELS, PROTOCOLS

    notes = []
    if not any(any(t.records.values()) for t in tables):
        for name in ("metrics.png", "curves.png"):
            (out / name).unlink(missing_ok=True)
        return ["No run is recorded yet: no figures."]
    labels = tables[0].labels
    fig, axes = plt.subplots(
        len(FIGURE_METRICS),
        len(PROTOCOLS),
        figsize=(5 * len(PROTOCOLS), 3.6 * len(FIGURE_METRICS)),
        squeeze=False,
    )
    width = 0.8 / max(len(tables), 1)
    x = np.arange(len(labels))
    for i, metric in enumerate(FIGURE_METRICS):
        for j, protocol in enumerate(PROTOCOLS):
            ax = axes[i][j]
            for k, table in enumerate(tables):
                cells = [table.cell(lb, protocol, metric) for lb in labels]
                means = [c.mean if c.mean is not None else np.nan for c in cells]
                stds = [c.std if c.std is not None else np.nan for c in cells]  # 1 seed: no bar
                ax.bar(
                    x + k * width - 0.4 + width / 2,
                    means,
                    width,
                    yerr=stds,
                    capsize=2,
                    label=table.case.title,
                )
            ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
            ax.set_title(f"test {metric} (%), {PROTOCOL_LABELS[protocol]}", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    atomic_figure(fig, out / "metrics.png")
    notes.append(
        "![test HR@10 and NDCG@10 per model; error bars: sample std over seeds, none for "
        "a single seed](metrics.png)"
    )

    curve_metrics = [f"valid/{SELECT_BY[0]}/{SELECT_BY[1]}", "valid/sampled/HR@10"]
    fig, axes = plt.subplots(
        len(tables),
        len(curve_metrics),
        figsize=(6 * len(curve_metrics), 3.4 * len(tables)),
        squeeze=False,
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn, skipped = 0, []
    for i, table in enumerate(tables):
        for c, lb in enumerate(labels):
            for rec in table.records.get(lb, []):
                curve = _curve_of(rec, runs_root)
                if not curve:
                    skipped.append(f"{lb} · {table.case.title} · seed {rec['seed']}")
                    continue
                drawn += 1
                for j, m in enumerate(curve_metrics):
                    ys = [p.get(m, np.nan) for p in curve]
                    axes[i][j].plot(
                        range(1, len(ys) + 1),
                        ys,
                        color=colours[c % len(colours)],
                        alpha=0.8,
                        lw=1,
                        marker=".",
                        label=lb if rec is table.records[lb][0] else None,
                    )
        for j, m in enumerate(curve_metrics):
            axes[i][j].set_title(f"{table.case.title}: {m}", fontsize=9)
            axes[i][j].set_xlabel("epoch (stages in order)")
            axes[i][j].grid(alpha=0.3)
        if any(axes[i][0].get_legend_handles_labels()[1]):
            axes[i][0].legend(fontsize=7)
    fig.tight_layout()
    if drawn:
        atomic_figure(fig, out / "curves.png")
        notes.append("![validation curves per model, one line per seed](curves.png)")
    else:
        plt.close(fig)
        (out / "curves.png").unlink(missing_ok=True)
    if skipped:
        notes.append(
            f"No validation curve for {len(skipped)} runs (no CSV log recorded or in their run "
            f"folders): {', '.join(skipped)}."
        )
    return notes


__all__ = [
    "Case",
    "DataSpec",
    "Grid",
    "GridSpec",
    "ModelSpec",
    "PlannedRun",
    "RecordStore",
    "SettingSpec",
    "describe_grid_error",
    "ensure_artifact",
    "execute",
    "format_duration",
    "load_grid",
    "parse_only",
    "plan",
    "run_benchmark",
    "run_key",
    "write_report",
]
