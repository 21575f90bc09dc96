"""``miir demo``: the README's first command, end to end on real data in about ten minutes.

Prepare a raw data folder (by default ``../shared/data/amazon-beauty``) with half of the side
values discarded, so that imputations can be shown next to the hidden truth; train MIIR with
the default recipe on a short schedule; evaluate it under the three ranking protocols and as
an imputer (beside the most-frequent and co-occurrence references); and write a report folder:
``report.md`` with training curves, the metrics beside the recorded baselines of
``bench/results/runs``, an attention map and case study (:mod:`miir.explain`), the top-10
recommendations for a sample user and a table of imputed side values next to the truth.

Every step uses the library's own entry points (:func:`miir.data.prepare.prepare`,
:func:`miir.training.train.train`, :func:`miir.evaluation.imputation.evaluate_run_imputation`,
:func:`miir.explain.explain_run`, :class:`miir.recommender.Recommender`), so the demo shows
what a user gets from them, not a special path.
"""

from __future__ import annotations

import html
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from miir.atomic import atomic_figure, atomic_json
from miir.data.artifact import Artifact
from miir.data.prepare import PrepareConfig, file_sha256
from miir.data.schema import FIRST_VALUE_ID, FieldKind
from miir.errors import ConfigError, DataError

#: the MIIR paper's side fields on Amazon data (Section 5.1), used where the data has them
PAPER_FIELDS = ("categories", "brand", "title")
#: one epoch of the default recipe (causal + next-item) on amazon-beauty is about 38 s with
#: validation on 2 cores (the grid's three runs: 1174 s for 31 epochs, 1381 / 33, 1622 / 37):
#: 14 epochs end within about 9 minutes (measured end to end on quiet cores, the artifact
#: prepared: 554 s of training, 10 min 19 s in all with evaluation and the report)
DEFAULT_EPOCHS = 14
DEFAULT_DATA = "amazon-beauty"
FALLBACK_DATA = "ml-100k"
REFERENCES = ("most-frequent", "co-occurrence")
#: imputation is scored on the test sequences of the first users only: all 22,363 of
#: amazon-beauty take minutes on 2 cores (2,000 took 24 s on a loaded machine)
IMPUTATION_USERS = 5000
GRID = "bench/grids/beauty.yaml"
DEFAULT_OUT = Path("runs/demo")
METRICS = ("HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR")
PROTOCOL_NAMES = {
    "sampled": "sampled (99 negatives)",
    "full": "full ranking",
    "full_masked": "full, history masked",
}
AMAZON_HINT = (
    "The Amazon 2014 'Beauty' data (the MIIR paper's first data set) is not in {shared}. "
    "Get it from the McAuley lab's Amazon review data (2014) page "
    "(https://cseweb.ucsd.edu/~jmcauley/datasets/amazon/links.html): ratings_Beauty.csv or "
    "reviews_Beauty_5.json.gz and meta_Beauty.json.gz, in one folder, and pass it with "
    "--data FOLDER (format amazon2014); or a folder with sequences.txt and items.jsonl (the "
    "S3-Rec layout of ../shared/data/amazon-beauty, see ../shared/data/README.md)."
)


@dataclass
class DemoOptions:
    """What :func:`run_demo` does; the defaults are the README's ``make demo``."""

    data: Path | None = None
    shared: Path = Path("../shared/data")
    artifacts: Path | None = None
    out: Path = DEFAULT_OUT
    report: Path | None = None
    discard: float = 0.5
    epochs: int = DEFAULT_EPOCHS
    seed: int = 42
    threads: int | None = None
    progress: bool = True
    overwrite: bool = False
    results_dir: Path = Path("bench/results/runs")
    #: PrepareConfig fields besides discard and seed (tests: fewer negatives for tiny data)
    prepare_overrides: dict[str, Any] = field(default_factory=dict)
    imputation_users: int | None = IMPUTATION_USERS
    #: TrainConfig fields besides the epochs (smoke runs: limit_train_batches)
    train_overrides: dict[str, Any] = field(default_factory=dict)


Say = Callable[[str], None]


# ---------------------------------------------------------------------- data


def find_data(opts: DemoOptions, say: Say) -> Path:
    """The raw data folder: ``--data``, else the shared Amazon Beauty folder, else (with a note
    on where to get the Amazon files) the shared MovieLens 100K folder."""
    if opts.data is not None:
        if not Path(opts.data).exists():
            raise DataError(f"--data {opts.data}: no such file or folder")
        return Path(opts.data)
    beauty = opts.shared / DEFAULT_DATA
    if beauty.is_dir():
        return beauty
    say(AMAZON_HINT.format(shared=opts.shared))
    fallback = opts.shared / FALLBACK_DATA
    if fallback.is_dir():
        say(f"Falling back to MovieLens 100K at {fallback}.")
        return fallback
    raise DataError(
        f"no demo data: neither {beauty} nor {fallback} exists. "
        + AMAZON_HINT.format(shared=opts.shared)
        + " MovieLens 100K (u.data, u.item, u.genre) also works: "
        "https://grouplens.org/datasets/movielens/100k/"
    )


def matches(artifact: Path, config: PrepareConfig, sources: dict[str, str]) -> bool:
    """Whether ``artifact`` was prepared with ``config`` from source files with these
    checksums (name -> sha256), so it can be reused instead of prepared again."""
    manifest_path = artifact / "manifest.json"
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    recorded = {k: v.get("sha256") for k, v in manifest.get("sources", {}).items()}
    return manifest.get("config") == config.model_dump(mode="json") and recorded == sources


def _source_checksums(raw_sources: tuple[Path, ...]) -> dict[str, str]:
    return {Path(p).name: file_sha256(Path(p)) for p in raw_sources}


def prepare_data(opts: DemoOptions, source: Path, say: Say) -> tuple[Artifact, Any]:
    """The artifact of ``source`` (reused where one with the same config and sources exists)
    and the raw data set (for display titles)."""
    from miir.data.prepare import prepare
    from miir.data.readers import read_source

    config = PrepareConfig(discard=opts.discard, seed=opts.seed, **opts.prepare_overrides)
    raw = read_source(source)
    sources = _source_checksums(raw.sources)
    suffix = "-d" if opts.discard > 0 else ""
    candidates = [opts.artifacts] if opts.artifacts else []
    if not opts.artifacts and source.name == DEFAULT_DATA:
        candidates.append(Path("artifacts") / f"beauty{suffix}")  # what `make prepare-demo` writes
    own = opts.artifacts or Path("artifacts") / f"{source.name}-demo"
    candidates.append(own)
    for path in candidates:
        if matches(path, config, sources):
            say(f"Reusing {path} (prepared with the same options from the same files).")
            return Artifact(path), raw
    if own.exists() and opts.artifacts and not opts.overwrite:
        raise ConfigError(
            f"--artifacts {own}: exists and was prepared with other options or files; pass "
            "--overwrite to replace it, or another folder"
        )
    say(f"Preparing {source} into {own} (discard {opts.discard}) ...")
    prepare(raw, own, config, overwrite=True, progress=opts.progress)
    return Artifact(own), raw


def demo_fields(artifact: Artifact) -> tuple[str, ...] | None:
    """The paper's fields (categories, brand, title) that the artifact has; all fields (None)
    for data without the paper's categorical fields (MovieLens: genres, title)."""
    names = [f.name for f in artifact.schema.fields]
    if not any(n in names for n in PAPER_FIELDS[:2]):
        return None
    return tuple(n for n in PAPER_FIELDS if n in names)


def raw_titles(raw: Any) -> dict[str, str]:
    """Item id -> title from the raw items table, where it has a ``title`` column (artifacts
    keep texts only as vectors, so titles for display come from the raw source)."""
    items = getattr(raw, "items", None)
    if items is None or "title" not in items.columns:
        return {}
    pairs = zip(items["item_id"].to_list(), items["title"].to_list(), strict=True)
    # the Amazon titles keep HTML entities (&amp;)
    return {str(i): html.unescape(str(t)) for i, t in pairs if t is not None}


# ---------------------------------------------------------------------- train and evaluate


def _check_out(out: Path, overwrite: bool) -> None:
    """Replace ``out`` only if it is empty, an earlier demo run (``runs/demo`` is the demo's,
    as it was the old ``make demo``'s), or ``overwrite`` says so."""
    if not out.is_dir() or not any(out.iterdir()) or overwrite or out == DEFAULT_OUT:
        return
    run_json = out / "run.json"
    command = ""
    if run_json.is_file():
        command = json.loads(run_json.read_text(encoding="utf-8")).get("command") or ""
    if not command.startswith("miir demo"):
        raise ConfigError(
            f"--out {out}: not empty and not an earlier `miir demo` run; pass --overwrite to "
            "replace it, or another folder"
        )


def train_demo(opts: DemoOptions, artifact: Artifact, command: str) -> dict[str, Any]:
    """Train MIIR with the default recipe (no overrides besides the fields and the epochs)."""
    from miir.training.train import TrainConfig, train

    _check_out(opts.out, opts.overwrite)
    fields = demo_fields(artifact)
    model = {"fields": fields} if fields is not None else {}
    cfg = TrainConfig(
        max_epochs=opts.epochs,
        seed=opts.seed,
        threads=opts.threads,
        progress=opts.progress,
        **opts.train_overrides,
    )
    return train(artifact.path, opts.out, "miir", model, cfg, overwrite=True, command=command)


def evaluate_imputation(opts: DemoOptions, artifact: Artifact) -> dict[str, Any] | None:
    """The run's imputation of discard-hidden values beside the references (test windows);
    None for an artifact without a discard."""
    from miir.evaluation.imputation import evaluate_run_imputation

    if not artifact.manifest["config"].get("discard"):
        return None
    results = evaluate_run_imputation(
        opts.out, artifact=artifact, references=REFERENCES, max_users=opts.imputation_users
    )
    atomic_json(opts.out / "imputation.json", results)
    return results


# ---------------------------------------------------------------------- command


def run_demo(opts: DemoOptions, say: Say = print, argv: list[str] | None = None) -> Path:
    """Prepare, train, evaluate and report (see the module docstring); returns the report
    folder."""
    command = shlex.join(["miir", "demo", *(argv or [])])
    _check_out(opts.out, opts.overwrite)  # before minutes of preparation
    source = find_data(opts, say)
    artifact, raw = prepare_data(opts, source, say)
    fields = demo_fields(artifact)
    say(
        f"Training MIIR on {artifact.path} ({opts.epochs} epochs, fields: "
        f"{', '.join(fields) if fields else 'all'}) into {opts.out} ..."
    )
    results = train_demo(opts, artifact, command)
    imputation = evaluate_imputation(opts, artifact)
    report = opts.report or opts.out / "report"
    write_report(report, opts, artifact, results, imputation, raw_titles(raw))
    say(f"\nReport: {report / 'report.md'}")
    say(f"Serve the trained model: miir serve --run {opts.out}")
    return report


def truth_text(artifact: Artifact, name: str, item: int) -> str | None:
    """The value of field ``name`` of ``item`` before the discard, as text; None where the
    source has none."""
    fd = artifact.fields[name]
    if not fd.truth_present[item]:
        return None
    value = fd.truth_values[item]
    if fd.kind == FieldKind.MULTI_CATEGORICAL:
        return ", ".join(str(fd.vocab[int(v)]) for v in np.asarray(value) if v >= FIRST_VALUE_ID)
    return str(fd.vocab[int(value)])


# ---------------------------------------------------------------------- report: curves, metrics


def read_curves(run: Path) -> dict[str, dict[int, float]]:
    """Per epoch, the training loss and the validation full-ranking NDCG@10 from the run's CSV
    logs (a resumed run's later log folders continue the earlier ones)."""
    import csv

    out: dict[str, dict[int, float]] = {"train/loss_epoch": {}, "valid/full/NDCG@10": {}}
    for path in sorted((run / "logs").glob("*/metrics.csv")):
        with path.open(encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                for key, values in out.items():
                    if row.get(key):
                        values[int(row["epoch"])] = float(row[key])
    return out


def plot_curves(curves: dict[str, dict[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    labels = {"train/loss_epoch": "training loss (MII)", "valid/full/NDCG@10": "valid full NDCG@10"}
    for ax, (key, values) in zip(axes, curves.items(), strict=True):
        epochs = sorted(values)
        ax.plot([e + 1 for e in epochs], [values[e] for e in epochs], marker="o")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(labels[key])
        ax.grid(alpha=0.3)
    atomic_figure(fig, path)


@dataclass
class Baselines:
    """Recorded benchmark runs (``bench/results/runs/*.json``) on this artifact's evaluation
    cases, averaged per label over seeds: ``same`` in this artifact's setting (discard),
    ``other`` in another setting (the given data when the demo ran on discarded data)."""

    same: dict[str, dict[str, Any]]
    other: dict[str, dict[str, Any]]
    other_discard: float | None = None


def load_baselines(
    results_dir: Path, artifact: Artifact, own: dict[str, Any] | None = None
) -> Baselines:
    """Records on this artifact's cases, one column per label and model configuration: runs
    of one label with different settings (the default MIIR beside the paper's bidirectional
    form) are never averaged together; see :func:`_name_configs`. ``own``: the demo run's
    model config, whose label's matching records are named "(default recipe)"."""
    import hashlib

    from miir.evaluation.compare import cases_checksum

    manifest_sha = hashlib.sha256((artifact.path / "manifest.json").read_bytes()).hexdigest()
    cases = cases_checksum(artifact.manifest)
    discard = float(artifact.manifest["config"].get("discard") or 0.0)
    groups: dict[bool, dict[str, list[dict[str, Any]]]] = {True: {}, False: {}}
    other_discard = None
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            info = rec["artifact"]
            rec["test"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a run record
        if info.get("manifest_sha256") == manifest_sha:
            same = True
        elif info.get("cases_sha256") == cases:
            same = float(rec.get("discard") or 0.0) == discard
        else:
            continue
        if not same:
            other_discard = float(rec.get("discard") or 0.0)
        label = rec.get("label") or rec.get("variant", "?")
        config = json.dumps(rec.get("model_config") or {}, sort_keys=True)
        groups[same].setdefault((label, config), []).append(rec)
    return Baselines(
        _mean_runs(_name_configs(groups[True], own)),
        _mean_runs(_name_configs(groups[False], own)),
        other_discard,
    )


def _name_configs(
    groups: dict[tuple[str, str], list[dict[str, Any]]], own: dict[str, Any] | None
) -> dict[str, list[dict[str, Any]]]:
    """(label, model config) groups -> display label -> records. A label with one config keeps
    its name; with several, the one equal to ``own`` (the demo's MIIR) is "(default recipe)"
    and each other names up to three settings where it differs from it (or, without ``own``,
    from the label's config with the most runs)."""
    by_label: dict[str, list[tuple[dict[str, Any], list[dict[str, Any]]]]] = {}
    for (label, config), recs in groups.items():
        by_label.setdefault(label, []).append((json.loads(config), recs))
    out: dict[str, list[dict[str, Any]]] = {}
    for label, configs in by_label.items():
        if len(configs) == 1:
            out[label] = configs[0][1]
            continue
        mine = own if own is not None and any(c == own for c, _ in configs) else None
        ref = mine if mine is not None else max(configs, key=lambda c: len(c[1]))[0]
        for config, recs in configs:
            if config == ref:
                out[f"{label} (default recipe)" if mine is not None else label] = recs
                continue
            keys = sorted(k for k in set(config) | set(ref) if config.get(k) != ref.get(k))
            shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
            out[f"{label} (other settings: {shown})"] = recs
    return out


def _mean_runs(groups: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for label, recs in sorted(groups.items()):
        test = {
            p: {m: float(np.mean([r["test"][p][m] for r in recs])) for m in METRICS}
            for p in PROTOCOL_NAMES
        }
        epochs = [r.get("epochs_run") for r in recs if r.get("epochs_run")]
        out[label] = {"test": test, "seeds": len(recs), "epochs": epochs}
    return out


def metrics_markdown(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """One table per protocol: a row per (label, results), a column per metric (test)."""
    lines: list[str] = []
    for protocol, title in PROTOCOL_NAMES.items():
        lines += [f"**{title}**", "", "| model | " + " | ".join(METRICS) + " |"]
        lines.append("|---" * (len(METRICS) + 1) + "|")
        for label, res in rows:
            values = res["test"][protocol]
            lines.append(f"| {label} | " + " | ".join(f"{values[m]:.4f}" for m in METRICS) + " |")
        lines.append("")
    return lines


def plot_metrics(rows: list[tuple[str, dict[str, Any]]], path: Path, title: str) -> None:
    """Test HR@10 and NDCG@10 of each row, one panel per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, 3, figsize=(14, 1.4 + 0.5 * max(len(rows), 2)), sharey=True, layout="constrained"
    )
    y = np.arange(len(rows))
    for ax, (protocol, name) in zip(axes, PROTOCOL_NAMES.items(), strict=True):
        for k, metric in enumerate(("HR@10", "NDCG@10")):
            vals = [res["test"][protocol][metric] for _, res in rows]
            ax.barh(y + (k - 0.5) * 0.4, vals, height=0.4, label=metric)
        ax.set_yticks(y, [label.replace("**", "") for label, _ in rows])
        ax.set_title(name)
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()  # shared: the demo's row on top
    axes[0].legend(loc="lower right")
    fig.suptitle(title)
    atomic_figure(fig, path)


# ---------------------------------------------------------------------- report: user examples


def shown_fields(artifact: Artifact, fields: tuple[str, ...] | None) -> list[str]:
    """The categorical and multi-valued fields the model reads (brand and categories on
    Amazon): those whose imputations can be shown as values next to the truth."""
    kinds = (FieldKind.CATEGORICAL, FieldKind.MULTI_CATEGORICAL)
    names = fields if fields is not None else [f.name for f in artifact.schema.fields]
    return [n for n in names if artifact.fields[n].kind in kinds]


def sample_users(artifact: Artifact, names: list[str], n: int, scan: int = 5000) -> list[int]:
    """Users (indices) whose test histories show imputation best: most items with one of
    ``names`` hidden by the discard, then most missing, then the longest; the first ``scan``
    users are considered, ties kept in user order."""
    hidden = np.zeros(artifact.n_items + FIRST_VALUE_ID, dtype=np.int64)
    missing = np.zeros_like(hidden)
    for name in names:
        fd = artifact.fields[name]
        hidden += fd.truth_present & ~fd.present
        missing += ~fd.present
    hidden[:FIRST_VALUE_ID] = missing[:FIRST_VALUE_ID] = 0
    keys = []
    for u in range(min(artifact.n_users, scan)):
        hist = artifact.sequence(u)[:-1][-(artifact.max_len - 1) :]
        keys.append((-int(hidden[hist].sum()), -int(missing[hist].sum()), -len(hist), u))
    return [k[-1] for k in sorted(keys)[:n]]


def _cell(value: Any) -> str:
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def _title(titles: dict[str, str], item: str, width: int = 60) -> str:
    title = titles.get(item)
    if title is None:
        return ""
    return title if len(title) <= width else title[: width - 1] + "…"


def recommendations_section(
    rec: Any, artifact: Artifact, user: int, titles: dict[str, str]
) -> list[str]:
    """The top-10 of ``user``'s test case from :meth:`Recommender.recommend`."""
    seq = [artifact.item_names[int(i)] for i in artifact.sequence(user)]
    history, target = seq[:-1], seq[-1]
    result = rec.recommend(history, k=10)
    name = artifact.user_names[user]
    lines = [
        f"## Top-10 recommendations for user {name}",
        "",
        f"From `Recommender.load(run).recommend(history, k=10)`: the user's {len(history)} "
        f"items before the held-out test item {target} (the history's items are excluded).",
        "",
        "| rank | item | title | score | fields | note |",
        "|---|---|---|---|---|---|",
    ]
    for rank, item in enumerate(result.items, start=1):
        shown = "; ".join(f"{k}: {_value_text(v)}" for k, v in item.fields.items())
        note = "the held-out next item ✓" if item.item == target else ""
        lines.append(
            f"| {rank} | {item.item} | {_cell(_title(titles, item.item))} | {item.score:.3f} | "
            f"{_cell(shown)} | {note} |"
        )
    lines.append("")
    if target not in {i.item for i in result.items}:
        lines += [f"The held-out item {target} is not in this top-10.", ""]
    return lines


def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def imputation_rows(
    rec: Any, artifact: Artifact, users: list[int], names: list[str], limit: int = 15
) -> list[dict[str, Any]]:
    """Imputed values of ``names`` for history items that lack them, from
    :meth:`Recommender.recommend_batch` with imputations over the users' test histories, beside
    the value before the discard (None: missing in the source too). Discard-hidden values
    first; one row per (item, field)."""
    histories = [[artifact.item_names[int(i)] for i in artifact.sequence(u)[:-1]] for u in users]
    results = rec.recommend_batch(histories, k=1, imputations=True)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for u, result in zip(users, results, strict=True):
        for item in result.imputed or []:
            if item.item is None:
                continue
            for name, imp in item.fields.items():
                if name not in names or (item.item, name) in rows:
                    continue
                truth = truth_text(artifact, name, artifact.item_index[item.item])
                top = imp.candidates[0] if imp.candidates else None
                rows[(item.item, name)] = {
                    "user": artifact.user_names[u],
                    "item": item.item,
                    "field": name,
                    "imputed": _short_list(imp.predicted),
                    "top": f"{top.value} ({top.probability:.2f})" if top else "",
                    "truth": truth,
                    "correct": _correct(imp.predicted, truth, artifact.fields[name].kind),
                }
    ordered = sorted(rows.values(), key=lambda r: r["truth"] is None)
    return ordered[:limit]


def _short_list(values: list[Any], most: int = 6) -> str:
    """At most ``most`` values (a barely trained model puts many above 0.5)."""
    if not values:
        return "(none >= 0.5)"
    text = ", ".join(str(v) for v in values[:most])
    return text + (f" … (+{len(values) - most} more)" if len(values) > most else "")


def _correct(predicted: list[Any], truth: str | None, kind: FieldKind) -> str:
    if truth is None:
        return ""
    if kind == FieldKind.MULTI_CATEGORICAL:
        true = set(truth.split(", "))
        chosen = {str(v) for v in predicted}
        return f"{len(true & chosen)}/{len(true)} true, {len(chosen - true)} wrong"
    return "✓" if predicted and str(predicted[0]) == truth else "✗"


def imputation_section(rows: list[dict[str, Any]], titles: dict[str, str]) -> list[str]:
    lines = [
        "## Imputed side values of items that lack them",
        "",
        "From `Recommender.recommend_batch(histories, imputations=True)` over sample users' "
        "test histories (each item imputed in the context of its sequence). Truth: the value "
        "the discard hid (kept under the artifact's `truth/`), or *missing in the source*.",
        "",
        "| user | item | title | field | imputed | top candidate | truth | match |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        truth = "*missing in the source*" if r["truth"] is None else _cell(r["truth"])
        lines.append(
            f"| {r['user']} | {r['item']} | {_cell(_title(titles, r['item'], 40))} | "
            f"{r['field']} | {_cell(r['imputed'])} | {_cell(r['top'])} | {truth} | "
            f"{r['correct']} |"
        )
    if not rows:
        lines.append("| | | | | (no history item lacks these fields) | | | |")
    return [*lines, ""]


# ---------------------------------------------------------------------- report: assembly


def write_report(
    folder: Path,
    opts: DemoOptions,
    artifact: Artifact,
    results: dict[str, Any],
    imputation: dict[str, Any] | None,
    titles: dict[str, str],
) -> Path:
    """Write ``report.md`` and its PNGs (curves, metrics, attention) into ``folder``; every
    file through a temporary name and a rename."""
    from miir.atomic import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    curves = read_curves(opts.out)
    plot_curves(curves, folder / "curves.png")
    lines = _head(opts, artifact, results, curves, titles)
    lines += _metrics_part(opts, artifact, results, folder)
    if imputation is not None:
        from miir.evaluation.report import imputation_table

        n_users = min(opts.imputation_users or artifact.n_users, artifact.n_users)
        lines += [
            "## Imputation of the discard-hidden values",
            "",
            f"The test sequences of the first {n_users} of {artifact.n_users} users "
            "(`miir evaluate --imputation` scores them all); the references predict from the "
            "observed item tables and the training windows.",
            "",
        ]
        lines += [imputation_table(imputation), ""]
    lines += _examples_part(opts, artifact, folder, titles)
    lines += [
        "## Serve the trained model",
        "",
        "```bash",
        f"miir serve --run {opts.out}",
        "```",
        "",
    ]
    atomic_write_text(folder / "report.md", "\n".join(lines))
    return folder / "report.md"


def _head(
    opts: DemoOptions,
    artifact: Artifact,
    results: dict[str, Any],
    curves: dict[str, dict[int, float]],
    titles: dict[str, str],
) -> list[str]:
    counts = artifact.manifest["counts"]
    discard = artifact.manifest["config"].get("discard") or 0.0
    stage = next(iter(results.get("stages", {}).values()), {})
    epochs = len(curves["train/loss_epoch"]) or len(curves["valid/full/NDCG@10"])
    fields = demo_fields(artifact)
    return [
        "# MIIR demo",
        "",
        f"- Data: `{artifact.path}` ({artifact.name}: {counts['users']} users, "
        f"{counts['items']} items, {counts['interactions']} interactions), "
        + (f"{discard:.0%} of the side values discarded." if discard else "no discard."),
        f"- Model: MIIR, default recipe, fields: {', '.join(fields) if fields else 'all'}; "
        f"{epochs} epoch{'s' if epochs != 1 else ''} (`--epochs {opts.epochs}`), best validation epoch "
        f"{int(stage.get('epoch', -1)) + 1}, {results.get('train_seconds', 0):.0f} s of training.",
        f"- Run folder: `{opts.out}` (checkpoint `best/`, `results.json`, `imputation.json`).",
        "- Items are named by their ids; titles come from the raw source's item table"
        + (" (shown where it has them)." if titles else " (this source has none)."),
        "",
        "A short schedule: the recorded runs below trained to early stopping (their epochs are "
        "listed), so the demo's numbers are lower than a converged run's.",
        "",
        "## Training curves",
        "",
        "![training curves](curves.png)",
        "",
    ]


def _metrics_part(
    opts: DemoOptions, artifact: Artifact, results: dict[str, Any], folder: Path
) -> list[str]:
    try:  # the demo run's model config: its own label's records are matched to it
        own = json.loads((opts.out / "run.json").read_text(encoding="utf-8"))["model_config"]
    except (OSError, ValueError, KeyError):
        own = None
    base = load_baselines(opts.results_dir, artifact, own)
    rows = [(f"**this demo** (MIIR, --epochs {opts.epochs})", results)]
    rows += [(_label(k, v), v) for k, v in base.same.items()]
    other = [(f"{_label(k, v)} [discard {base.other_discard}]", v) for k, v in base.other.items()]
    plot_metrics(rows + other, folder / "metrics.png", f"test metrics on {artifact.name}")
    lines = ["## Test metrics under the three protocols", ""]
    lines += metrics_markdown(rows)
    lines += ["![test metrics](metrics.png)", ""]
    if not base.same:
        setting = " --only setting=D" if artifact.manifest["config"].get("discard") else ""
        lines += [
            f"No recorded benchmark run in `{opts.results_dir}` matches this artifact "
            f"(manifest or evaluation-case checksums and discard); `miir benchmark {GRID}"
            f"{setting}` records them.",
            "",
        ]
    if base.other:
        lines += [
            f"### Recorded runs in a different setting (discard {base.other_discard}): "
            "the same users, sequences and negatives, other side information: not directly "
            "comparable",
            "",
            *metrics_markdown([(_label(k, v), v) for k, v in base.other.items()]),
        ]
    return lines


def _label(name: str, rec: dict[str, Any]) -> str:
    epochs = "/".join(str(e) for e in rec["epochs"])
    return f"{name} ({rec['seeds']} seed{'s' if rec['seeds'] > 1 else ''}, epochs {epochs})"


def _examples_part(
    opts: DemoOptions, artifact: Artifact, folder: Path, titles: dict[str, str]
) -> list[str]:
    from miir.explain import explain_run
    from miir.recommender import Recommender

    names = shown_fields(artifact, demo_fields(artifact))
    users = sample_users(artifact, names, n=20)
    user = artifact.user_names[users[0]]
    explain_run(opts.out, folder, user=user, data=artifact.path)
    rec = Recommender.load(opts.out)
    lines = [
        f"## Case study and attention map (user {user})",
        "",
        "![attention](attention.png)",
        "",
        "The sequence with known, hidden and imputed values, the top-10 and the attention "
        "shares: [case_study.md](case_study.md) (from `miir explain`).",
        "",
    ]
    lines += recommendations_section(rec, artifact, users[0], titles)
    lines += imputation_section(imputation_rows(rec, artifact, users, names), titles)
    return lines
