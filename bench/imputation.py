"""Table 11 of the MIIR paper (Section 5.4): how well trained models impute the side values that
the discard hid, beside the most-frequent and co-occurrence references, on discard artifacts.

    python bench/imputation.py RUN [RUN ...] [--data ART] [--name NAME]
        [--imputers most-frequent,co-occurrence] [--stage test] [--max-users N]

Each run (of any model implementing the Imputer protocol: MIIR and its variants, LRMM) is
scored on the artifact it was trained on (or on ``--data``), over the discard-hidden cells of
the test windows (:mod:`miir.evaluation.imputation`). The references are fitted on each
artifact's observed training windows and scored over the same cells. Written to
``bench/results/imputation/NAME.{json,md}`` with the command, commit, machine and date, and
``NAME_position.png`` (quality by distance from the end of the window, 0 = the target);
with runs on artifacts of several discard rates (0.2, 0.5, 0.8), ``NAME_discard.png``
(quality vs discard rate). ``--max-users`` scores only the first users (smoke runs).

Runs that differ only in the seed (the same model, config and training options in their
``model.json``, on one artifact) form a seed group: its cells are each cell's mean over the
seeds, and the paired comparisons and the Table 11 reading treat it as one model. Every
difference is tested with its variance clustered by item and user, and a verdict needs it
beyond a floor: the larger seed standard deviation where both sides are groups, else the widest
gap between two seeds of one group on the artifact; with no group (one run each) the reading
says the verdict is not established (two runs of one MIIR differ by as much as the gaps
Table 11 is read on: ``bench/results/imputation/sports-d-seeds.md``).

Stored scorings. Run folders live on the machine that trained them, and a seed group can take
longer to train than one session has. ``--keep DIR`` writes each run's scoring (its summary and
per-cell scores, lossless, with the run's ``model.json`` and the identity of the artifact it was
scored on) to ``DIR/<artifact>/<run>.npz``; such a file may stand in for the run folder in a
later scoring, which reads it beside freshly scored runs as if it had been scored again (the
cells are the same: the artifact's sequences, split, discard and truth must match it exactly,
and the text truth to within float rounding). The committed ones are under
``bench/results/imputation/scores/``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import time
from pathlib import Path

from miir.atomic import atomic_figure
from miir.provenance import header_line

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "imputation"


def evaluate_all(args: argparse.Namespace) -> list[dict]:
    """One result per (run) and per (artifact, window length, reference), each labelled."""
    from miir.data.artifact import Artifact
    from miir.evaluation.imputation import evaluate_imputation, load_run_imputer, reference_imputer

    data = Artifact(args.data) if args.data else None
    references = [n.strip() for n in args.imputers.split(",") if n.strip()]
    kw = dict(stage=args.stage, batch_size=args.batch_size, max_users=args.max_users, cells=True)
    rows: list[dict] = []
    fitted: set[tuple[str, int]] = set()
    for run in args.runs:
        if Path(run).suffix == ".npz":
            res, artifact = load_scores(run, data, stage=args.stage, max_users=args.max_users)
            print(f"{res['label']} on {artifact.name}: stored scoring {run}", flush=True)
        else:
            imputer, artifact = load_run_imputer(run, data, args.device)
            started = time.perf_counter()
            res = evaluate_imputation(artifact, imputer, **kw)
            group, seed = run_identity(run)
            res.update(
                label=f"{imputer.name} ({Path(run).name})",
                config=run_config(run),
                run=str(run),
                kind="model",
                group=group,
                seed=seed,
                source="scored",
                trained=trained_summary(_results_json(run)),
            )
            print(
                f"{res['label']} on {artifact.name}: {time.perf_counter() - started:.1f} s",
                flush=True,
            )
            if args.keep:
                print(f"  kept in {save_scores(res, artifact, run, args.keep)}", flush=True)
        res["artifact"]["path"] = str(artifact.path.resolve())  # one spelling per artifact
        if any(r["label"] == res["label"] for r in rows):
            raise SystemExit(
                f"{res['label']} is given twice (a run folder and its stored scoring?)"
            )
        rows.append(res)
        key = (str(artifact.path.resolve()), res["max_len"])
        if key in fitted:
            continue
        fitted.add(key)
        for name in references:
            ref = reference_imputer(name, artifact, res["max_len"])
            r = evaluate_imputation(artifact, ref, fields=list(res["cells"]), **kw)
            r.update(label=name, run=None, kind="reference")
            r["artifact"]["path"] = str(artifact.path.resolve())
            rows.append(r)
            print(f"{name} on {artifact.name}: {r['seconds']:.1f} s", flush=True)
    return rows


# ---------------------------------------------------------------------- stored scorings


def artifact_identity(artifact) -> dict:
    """What a stored scoring must share with the artifact it is read beside: its identity
    (:func:`miir.evaluation.compare.identity_checksum`: every file but the text vectors, so
    the sequences, split, discard and truth byte for byte), and per text field the sum and the
    sum of squares of the true vectors (another encoder version may round their last bits
    differently; the vectors must still agree)."""
    import numpy as np

    from miir.data.schema import FieldKind
    from miir.evaluation.compare import identity_checksum

    vectors = {}
    for name, f in artifact.fields.items():
        if f.kind == FieldKind.TEXT:
            v = np.asarray(f.truth_values, dtype=np.float64)
            v = v[np.asarray(f.truth_present, dtype=bool)]
            vectors[name] = [float(v.sum()), float(np.square(v).sum())]
    return {"files": identity_checksum(artifact.manifest), "text": vectors}


def identity_mismatch(stored: dict, local: dict) -> str | None:
    """Why two :func:`artifact_identity` differ, or None when a scoring carries over."""
    import math

    if stored["files"] != local["files"]:
        return "its sequences, split, discard or truth differ (another preparation)"
    for name, (total, squares) in stored["text"].items():
        if name not in local["text"]:
            return f"it has no text field {name!r}"
        t, q = local["text"][name]
        if not (math.isclose(total, t, rel_tol=1e-5, abs_tol=1e-3) and
                math.isclose(squares, q, rel_tol=1e-5)):  # fmt: skip
            return f"the true vectors of {name!r} differ (sum {t:.6g} against {total:.6g})"
    return None


def _results_json(run: str | Path) -> dict | None:
    import json

    path = Path(run) / "results.json"
    return json.loads(path.read_text("utf-8")) if path.exists() else None


def trained_summary(results: dict | None) -> dict | None:
    """Best epoch (1-based), training minutes and test NDCG@10 under the three protocols of
    a run's ``results.json``; None without one."""
    if not results:
        return None
    test = results.get("test") or {}
    return {
        "best_epoch": None
        if results.get("checkpoint_epoch") is None
        else results["checkpoint_epoch"] + 1,
        "train_minutes": (
            None
            if results.get("train_seconds") is None
            else round(results["train_seconds"] / 60, 1)
        ),
        "ndcg10": {p: test[p]["NDCG@10"] for p in ("full", "full_masked", "sampled") if p in test},
    }


def _portable(path: Path) -> str:
    """``path`` relative to the checkout where it lies in it (artifacts/...), else absolute."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def save_scores(row: dict, artifact, run: str | Path, folder: Path) -> Path:
    """Write one run's scoring (``row`` of :func:`evaluate_all` with its cells) to
    ``folder/<artifact>-d<discard>/<run>.npz``, atomically: the cells' user rows, distances,
    items and per-metric values (float32, as scored), and a JSON ``meta`` array with the
    summary, the run's ``model.json`` (less the vocabularies), ``run.json`` and ``results.json``
    (command, wall time, test metrics), the artifact's identity and who scored it when."""
    import json

    import numpy as np

    from miir.atomic import atomic_npz
    from miir.provenance import git_commit
    from miir.training.checkpoint import checkpoint_dir

    meta = {k: v for k, v in row.items() if k != "cells"}
    meta["artifact"] = {**meta["artifact"], "path": _portable(artifact.path)}
    meta["identity"] = artifact_identity(artifact)
    model_json = json.loads((checkpoint_dir(run) / "model.json").read_text("utf-8"))
    model_json.pop("catalogue", None)  # the vocabularies: the artifact has them
    meta["model_json"] = model_json
    if (Path(run) / "run.json").exists():  # the command
        meta["run_json"] = json.loads((Path(run) / "run.json").read_text("utf-8"))
    meta["results_json"] = _results_json(run)  # wall time, best epoch, test metrics
    meta["scored"] = {**git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    arrays: dict[str, np.ndarray] = {}
    meta["stored_fields"] = []
    for i, (name, c) in enumerate(row["cells"].items()):
        meta["stored_fields"].append([name, list(c.metrics)])
        arrays[f"f{i}_rows"] = np.asarray(c.rows, dtype=np.int32)
        arrays[f"f{i}_distance"] = np.asarray(c.distance, dtype=np.int16)
        arrays[f"f{i}_items"] = np.asarray(c.items, dtype=np.int32)
        for j, v in enumerate(c.metrics.values()):
            arrays[f"f{i}_m{j}"] = np.asarray(v, dtype=np.float32)
    arrays["meta"] = np.array(json.dumps(meta))
    out = Path(folder) / f"{artifact.name}-d{meta['artifact']['discard']:g}"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{Path(run).name}.npz"
    atomic_npz(path, arrays, compressed=True)
    return path


def load_scores(
    path: str | Path, data=None, *, stage: str = "test", max_users: int | None = None
) -> tuple[dict, object]:
    """A stored scoring (:func:`save_scores`) as a row of :func:`evaluate_all` with its cells,
    and the local artifact it stands beside (``data``, else the one it names, relative to the
    checkout); refused, with the reason, where the artifact, stage or user count differ."""
    import json

    import numpy as np

    from miir.data.artifact import Artifact
    from miir.errors import ConfigError
    from miir.evaluation.imputation import Cells

    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        cells = {}
        for i, (name, metrics) in enumerate(meta.pop("stored_fields")):
            values = {m: z[f"f{i}_m{j}"] for j, m in enumerate(metrics)}
            cells[name] = Cells(
                z[f"f{i}_rows"].astype(np.int64),
                z[f"f{i}_distance"].astype(np.int64),
                z[f"f{i}_items"].astype(np.int64),
                values,
            )
    where = Path(meta["artifact"]["path"])
    where = where if where.is_absolute() else ROOT / where
    if data is None and not (where / "manifest.json").exists():
        raise ConfigError(
            f"{path}: scored on {meta['artifact']['path']}, which is not here; prepare it (the "
            "same source and --discard) or pass --data"
        )
    artifact = data if data is not None else Artifact(where)
    why = identity_mismatch(meta.pop("identity"), artifact_identity(artifact))
    if why:
        raise ConfigError(f"{path} was scored on another artifact than {artifact.path}: {why}")
    users = min(max_users, artifact.n_users) if max_users else artifact.n_users
    if (meta["stage"], meta["users"]) != (stage, users):
        raise ConfigError(
            f"{path}: scored on the {meta['stage']} stage of {meta['users']} users, not the "
            f"{stage} stage of {users}"
        )
    meta.update(
        cells=cells,
        source=f"stored {Path(path).name}",
        trained=trained_summary(meta.pop("results_json", None)),
    )
    meta.pop("run_json", None)  # the command: in the file, not in the table's record
    meta["config"] = (meta.pop("model_json", None) or {}).get("config")
    return meta, artifact


#: the paper's reading of Table 11 (Section 5.4): MIIR against LRMM, field metric -> the sign
#: the paper reports (+1: MIIR better, -1: MIIR worse); MSE is lower-is-better. "title" stands
#: for the data set's text field where it has no title (amazon-sports: keywords)
PAPER_TABLE11: dict[tuple[str, str], int] = {
    ("categories", "precision"): +1,
    ("title", "mse"): +1,
    ("categories", "recall"): -1,
    ("brand", "accuracy"): -1,
    # the same two claims on the informative values (the root category every item has left
    # out): an imputer that names the root category alone has precision 1 and inf_precision 0
    ("categories", "inf_precision"): +1,
    ("categories", "inf_recall"): -1,
}
LOWER_IS_BETTER = {"mse"}


#: train options that change nothing a run learns (the seed is what a seed group varies)
RUN_NEUTRAL = {
    *("seed", "progress", "threads", "num_workers", "accelerator", "devices", "num_nodes"),
    *("strategy", "precision", "eval_batch_size"),
}


def run_identity(run: str | Path) -> tuple[str, int | None]:
    """(identity, seed) of a run: runs of one model, config and training options that differ
    only in the seed share the identity (a seed group)."""
    import hashlib
    import json

    from miir.benchmark import keyed_config

    meta = _model_json(run)
    train = meta.get("train_config") or {}
    kept = keyed_config({k: v for k, v in train.items() if k not in RUN_NEUTRAL})
    # options added later, at their neutral value, as the grid's run keys leave them out
    key = json.dumps(
        [meta.get("model"), keyed_config(meta.get("config") or {}), kept], sort_keys=True
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16], train.get("seed")


def _model_json(run: str | Path) -> dict:
    """A run folder's ``model.json``: the one reader behind :func:`run_identity` and
    :func:`run_config`."""
    import json

    from miir.training.checkpoint import checkpoint_dir

    return json.loads((checkpoint_dir(run) / "model.json").read_text(encoding="utf-8"))


def run_config(run: str | Path) -> dict | None:
    """The model config of a run folder, which tells groups of one imputer apart."""
    return _model_json(run).get("config")


def _distinguish(groups: list[dict]) -> None:
    """Groups of one imputer name on one artifact (MIIR and MIIR with another loss weight, say)
    would read alike: name each by the model options in which it differs from the others
    (``MIIR (field_weights={...}; seeds 1, 2, 3: mean)``), or by its group id where their model
    configs are unknown or the same (the training options differ)."""
    import json

    from miir.options import NEUTRAL_OPTIONS

    by_name: dict[tuple[str, str], list[dict]] = {}
    for g in groups:
        by_name.setdefault((g["artifact"]["path"], g["imputer"]), []).append(g)
    for alike in by_name.values():
        if len(alike) < 2:
            continue
        # an option added after a run was recorded reads as its neutral value, not as null
        configs = [
            ({**NEUTRAL_OPTIONS, **c} if (c := g.pop("_config", None)) else {}) for g in alike
        ]
        keys = sorted({k for c in configs for k in c})
        differ = [
            k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1
        ]
        for g, c in zip(alike, configs, strict=True):
            what = (
                ", ".join(f"{k}={json.dumps(c.get(k), sort_keys=True)}" for k in differ)
                if differ and all(configs)
                else f"group {g['group']}"
            )
            g["label"] = f"{g['imputer']} ({what}; seeds {g['seeds']}: mean)"
    for g in groups:
        g.pop("_config", None)


def seed_groups(rows: list[dict]) -> list[dict]:
    """A row per group of two or more model runs that differ only in the seed (same artifact):
    its cells are each cell's mean over the seeds (cells matched by user row and distance),
    its ``fields`` the mean over the seeds of every summary metric, ``spread`` the gap between
    the seeds' highest and lowest summary value and ``sd`` their standard deviation."""
    import numpy as np

    from miir.evaluation.imputation import Cells

    by_key: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["kind"] == "model" and r.get("group"):
            by_key.setdefault((r["artifact"]["path"], r["group"]), []).append(r)
    groups = []
    for members in by_key.values():
        if len(members) < 2:
            continue
        # "seeds 1, 2, 3" whatever the order (a run without a recorded seed last)
        members = sorted(members, key=lambda r: (r["seed"] is None, r["seed"] or 0))
        first = members[0]
        cells = {}
        for name, c0 in first["cells"].items():
            index = c0.index()
            stacks = {m: [v] for m, v in c0.metrics.items()}
            for other in members[1:]:
                c = other["cells"][name]
                order = np.array([index[key] for key in c.index()])  # c's cells in c0's order
                for m, v in c.metrics.items():
                    aligned = np.full(len(c0.rows), np.nan)
                    aligned[order] = v
                    stacks[m].append(aligned)
            metrics = {m: np.mean(np.stack(vs), axis=0) for m, vs in stacks.items()}
            cells[name] = Cells(c0.rows, c0.distance, c0.items, metrics)
        fields, spread, sd = {}, {}, {}
        for name, f in first["fields"].items():
            fields[name] = {**f}
            spread[name], sd[name] = {}, {}
            for scope in ("all", "history", "target"):
                fields[name][scope] = {**f[scope]}
                for m in f["metrics"]:
                    vals = [r["fields"][name][scope][m] for r in members]
                    if any(v is None for v in vals):
                        fields[name][scope][m] = None
                        continue
                    fields[name][scope][m] = float(np.mean(vals))
                    if scope == "all":
                        spread[name][m] = float(max(vals) - min(vals))
                        sd[name][m] = float(np.std(vals, ddof=1))
        seeds = ", ".join(str(r["seed"]) for r in members)
        groups.append(
            {
                "label": f"{first['imputer']} (seeds {seeds}: mean)",
                "imputer": first["imputer"],
                "group": first["group"],
                "seeds": seeds,
                "_config": first.get("config"),
                "kind": "group",
                "artifact": first["artifact"],
                "members": [r["label"] for r in members],
                "fields": fields,
                "spread": spread,
                "sd": sd,
                "cells": cells,
            }
        )
    _distinguish(groups)
    return groups


def pair_results(rows: list[dict], groups: list[dict] | None = None) -> list[dict]:
    """Every model unit (a seed group, or a run in none) against every other unit and every
    reference on the same artifact, per field and metric, over the cells both scored
    (:func:`miir.evaluation.imputation.paired_cells`), with a floor for each difference: the
    larger seed standard deviation where both sides are seed groups, else the widest gap
    between two seeds of one group on the artifact (None: no group, one run each). Pops the
    per-cell arrays from the rows and groups (they are not JSON)."""
    from miir.evaluation.imputation import paired_cells

    groups = groups or []
    grouped = {label for g in groups for label in g["members"]}
    units = [*groups, *(r for r in rows if r["kind"] == "model" and r["label"] not in grouped)]
    references = [r for r in rows if r["kind"] == "reference"]

    def widest(path: str, field: str, metric: str) -> float | None:
        gaps = [
            g["spread"][field][metric]
            for g in groups
            if g["artifact"]["path"] == path and metric in g["spread"].get(field, {})
        ]
        return max(gaps) if gaps else None

    pairs = []
    for i, a in enumerate(units):
        path = a["artifact"]["path"]
        others = [u for u in units[i + 1 :] if u["artifact"]["path"] == path]
        for b in [*others, *(r for r in references if r["artifact"]["path"] == path)]:
            fields = {}
            for name in a["cells"]:
                if name not in b.get("cells", {}):
                    continue
                fields[name] = paired_cells(a["cells"][name], b["cells"][name])
                for metric, c in fields[name].items():
                    if a["kind"] == b["kind"] == "group":
                        c["floor"] = max(a["sd"][name][metric], b["sd"][name][metric])
                    else:
                        c["floor"] = widest(path, name, metric)
            pairs.append(
                {"a": a["label"], "b": b["label"], "artifact": a["artifact"], "fields": fields}
            )
    for r in [*rows, *groups]:
        r.pop("cells", None)
    return pairs


def _digits(metric: str) -> int:
    """Decimals shown: MSE per dimension is about 2e-3, its differences far smaller."""
    return 6 if metric in LOWER_IS_BETTER else 4


def _verdict(metric: str, diff: float | None, p: float | None, floor: float | None = None) -> str:
    """better / worse: a ahead of (behind) b with p < 0.05 and by more than ``floor`` (how far
    two seeds of one model land apart; None: unknown); else inside the noise."""
    if diff is None or p is None:
        return "not scored"
    better = -diff if metric in LOWER_IS_BETTER else diff
    if p >= 0.05 or better == 0 or (floor is not None and abs(better) <= floor):
        return "inside the noise"
    return "better" if better > 0 else "worse"


def _flipped(pair: dict) -> dict:
    """``pair`` read the other way round (b against a): the differences change sign."""
    fields = {
        f: {
            m: {**c, "a": c["b"], "b": c["a"], "diff": None if c["diff"] is None else -c["diff"]}
            for m, c in metrics.items()
        }
        for f, metrics in pair["fields"].items()
    }
    return {**pair, "a": pair["b"], "b": pair["a"], "fields": fields}


def pairs_markdown(record: dict, artifact_path: str) -> list[str]:
    pairs = [p for p in record.get("pairs", []) if p["artifact"]["path"] == artifact_path]
    if not pairs:
        return []
    lines = [
        "**Paired comparisons** (all scored cells both imputers share; difference of means, "
        "first minus second; `*`: p < 0.05 for that difference, its variance clustered by item "
        "and by user, since an item's hidden value is scored in every window that holds it; "
        "MSE: lower is better):",
        "",
    ]
    columns = [(f, m) for f, metrics in pairs[0]["fields"].items() for m in metrics]
    lines += ["| first | second | " + " | ".join(f"{f} {m}" for f, m in columns) + " |"]
    lines += ["|---|---|" + "---:|" * len(columns)]
    for pr in pairs:
        cells = []
        for f, m in columns:
            c = pr["fields"].get(f, {}).get(m)
            if c is None or c["diff"] is None:
                cells.append("–")
                continue
            star = "*" if c["p"] is not None and c["p"] < 0.05 else ""
            cells.append(f"{c['diff']:+.{_digits(m)}f}{star}")
        lines.append(f"| {pr['a']} | {pr['b']} | " + " | ".join(cells) + " |")
    lines.append("")
    claims = [p for p in pairs if p["a"].startswith("MIIR") and p["b"].startswith("LRMM")]
    claims += [
        _flipped(p) for p in pairs if p["a"].startswith("LRMM") and p["b"].startswith("MIIR")
    ]
    if claims:
        lines += [
            "**The paper's Table 11 reading, MIIR against LRMM** (paper: MIIR better on "
            "categories precision and title MSE, worse on categories recall and brand "
            "accuracy; held when ours goes the paper's way with p < 0.05, clustered by item "
            "and user, and by more than the floor: the larger seed standard deviation where "
            "both sides have seeds, else the widest gap between two seeds of one model here; "
            "`–`: no seeds, one run each, and the verdict is not established, since two runs "
            "of one model differ by as much as these gaps; `inf_`: the informative values, "
            "without the root category every item has):",
            "",
            "| MIIR | LRMM | field metric | paper | ours (difference, p) | floor | held? |",
            "|---|---|---|---|---|---|---|",
        ]
        for pr in claims:
            for (f, m), sign in PAPER_TABLE11.items():
                if f == "title" and f not in pr["fields"]:  # the data set's text field
                    f = next((g for g, ms in pr["fields"].items() if "mse" in ms), f)
                c = pr["fields"].get(f, {}).get(m)
                if c is None:
                    continue
                floor = c.get("floor")
                ours = _verdict(m, c["diff"], c["p"], floor)
                paper = "better" if sign > 0 else "worse"
                held = {"inside the noise": "inside the noise", "not scored": "not scored"}
                held = held.get(ours, "held" if ours == paper else "not held")
                if floor is None and held in ("held", "not held"):
                    held += " (one run each: not established)"
                p_text = "–" if c["p"] is None else f"{c['p']:.1e}"
                f_text = "–" if floor is None else f"{floor:.{_digits(m)}f}"
                lines.append(
                    f"| {pr['a']} | {pr['b']} | {f} {m} | {paper} | {ours} "
                    f"({c['diff']:+.{_digits(m)}f}, p {p_text}) | {f_text} | {held} |"
                )
        lines.append("")
    return lines


def markdown(record: dict) -> list[str]:
    from miir.evaluation.report import imputation_table

    lines = [
        f"# Imputation of discarded side values ({record['name']})",
        "",
        "MIIR paper Table 11 (Section 5.4). Cells: every side value the discard hid (present "
        "before the discard, absent after) in the test windows (the last max_len items up to "
        "the test target); values missing in the raw data are never scored. The target is "
        "imputed as the next-item query (its ID and fields hidden), from the history alone; "
        "history cells come from the same pass. Multi-valued: precision/recall/F1 of values "
        f"above {record['threshold']} and of the top-k (k = true set size); categorical: "
        "accuracy, top-5 accuracy; numeric: bucket accuracy; text: MSE per dimension (lower "
        "is better) and the rate at which the nearest catalogue text (cosine) is the true one. "
        "References are fitted on the observed (post-discard) training windows only.",
        "",
        f"- {header_line(record)}",
        f"- stage: {record['stage']}; users: {record['max_users'] or 'all'}",
        "",
    ]
    by_artifact: dict[str, list[dict]] = {}
    for r in record["results"]:
        by_artifact.setdefault(r["artifact"]["path"], []).append(r)
    models = [r for r in record["results"] if r["kind"] == "model"]
    if any("source" in r for r in models):
        lines += ["**Runs** (scored here, or read from a stored scoring of the run):", ""]
        lines += [
            "| run | seed | best epoch | training min | test NDCG@10 full / masked / sampled "
            "| source | scored at |",
            "|---|---:|---:|---:|---|---|---|",
        ]
        for r in models:
            at = r.get("scored") or {}
            when = f"{(at.get('commit') or 'no commit')[:10]}, {at['date']}" if at else "here"
            t = r.get("trained") or {}
            ndcg = " / ".join(f"{v:.4f}" for v in (t.get("ndcg10") or {}).values()) or "–"
            lines.append(
                f"| {r['label']} | {r.get('seed')} | {t.get('best_epoch', '–')} | "
                f"{t.get('train_minutes', '–')} | {ndcg} | {r.get('source')} | {when} |"
            )
        lines.append("")
    for rows in by_artifact.values():
        a = rows[0]["artifact"]
        groups = [g for g in record.get("groups", []) if g["artifact"]["path"] == a["path"]]
        lines += [f"## {a['name']} (discard {a['discard']:g})", "", imputation_table(rows), ""]
        if groups:
            lines += [
                "**Seed groups** (runs that differ only in the seed: the mean over the seeds, "
                "cell by cell; the comparisons below read a group as one model):",
                "",
                imputation_table(groups, scopes=("all",)),
                "",
            ]
        lines += pairs_markdown(record, a["path"])
    return lines


def _headline(result: dict, field: str) -> str:
    """The metric plotted for ``field``: F1 (multi-valued), accuracy, or MSE (text)."""
    from miir.data.schema import FieldKind
    from miir.evaluation.imputation import HEADLINE

    return HEADLINE[FieldKind(result["fields"][field]["kind"])]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(record: dict) -> dict[str, str]:
    """One colour per imputer name, the same in every panel and figure."""
    names = list(dict.fromkeys(r["imputer"] for r in record["results"]))
    return {n: f"C{i % 10}" for i, n in enumerate(names)}


def plot_positions(record: dict, path: Path) -> None:
    """Headline metric per field (columns) by distance from the end of the window (0 = the
    target), one row of panels per artifact, one line per result."""
    plt = _pyplot()
    fields = list(dict.fromkeys(f for r in record["results"] for f in r["fields"]))
    artifacts = sorted(
        {(r["artifact"]["discard"], r["artifact"]["path"]) for r in record["results"]}
    )
    colour = _colours(record)
    fig, axes = plt.subplots(
        len(artifacts), len(fields), figsize=(4 * len(fields), 3 * len(artifacts)), squeeze=False
    )
    for row, (discard, apath) in enumerate(artifacts):
        for ax, field in zip(axes[row], fields, strict=True):
            metric = ""
            for r in record["results"]:
                if r["artifact"]["path"] != apath or field not in r["by_position"]:
                    continue
                metric = _headline(r, field)
                pts = [
                    (p["distance"], p[metric])
                    for p in r["by_position"][field]
                    if p[metric] is not None
                ]
                if pts:
                    x, y = zip(*pts, strict=True)
                    ax.plot(x, y, marker="o", ms=3, color=colour[r["imputer"]], label=r["label"])
            ax.set_title(f"{field}: {metric} (discard {discard:g})", fontsize=9)
            ax.set_xlabel("distance from the end (0 = target)", fontsize=8)
            ax.ticklabel_format(axis="y", useOffset=False)
            ax.grid(alpha=0.3)
        axes[row][0].legend(fontsize=7)
    fig.tight_layout()
    atomic_figure(fig, path)


def plot_discard(record: dict, path: Path) -> bool:
    """Headline metric (all cells) per field against the discard rate, one line per imputer
    (the mean over its runs at a rate, e.g. seeds); drawn only with at least two rates."""
    if len({r["artifact"]["discard"] for r in record["results"]}) < 2:
        return False
    plt = _pyplot()
    fields = list(dict.fromkeys(f for r in record["results"] for f in r["fields"]))
    colour = _colours(record)
    fig, axes = plt.subplots(1, len(fields), figsize=(4 * len(fields), 3.4), squeeze=False)
    for ax, field in zip(axes[0], fields, strict=True):
        points: dict[str, dict[float, list[float]]] = {}
        metric = ""
        for r in record["results"]:
            if field in r["fields"]:
                metric = _headline(r, field)
                v = r["fields"][field]["all"][metric]
                if v is not None:
                    at = points.setdefault(r["imputer"], {})
                    at.setdefault(r["artifact"]["discard"], []).append(v)
        for name, at in points.items():
            x = sorted(at)
            ax.plot(
                x, [sum(at[d]) / len(at[d]) for d in x], marker="o", color=colour[name], label=name
            )
        ax.set_title(f"{field}: {metric}")
        ax.set_xlabel("discard rate")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    atomic_figure(fig, path)
    return True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "runs",
        nargs="+",
        help="Run folders of `miir train` (models with impute), or stored scorings (.npz).",
    )
    p.add_argument("--data", help="Score every run on this artifact (default: its own).")
    p.add_argument("--name", default="imputation", help="Base name of the result files.")
    p.add_argument("--imputers", default="most-frequent,co-occurrence", help="References.")
    p.add_argument("--stage", default="test", choices=("valid", "test"))
    p.add_argument("--max-users", type=int, default=None, help="Only the first users (smoke).")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=OUT, help="Result folder.")
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="Also store each run's scoring here (<artifact>/<run>.npz), for later scorings.",
    )
    args = p.parse_args(argv)

    from miir.provenance import run_record, write_result

    rows = evaluate_all(args)
    groups = seed_groups(rows)
    pairs = pair_results(rows, groups)
    record = run_record(
        command=None if argv is None else shlex.join(["python", "bench/imputation.py", *argv]),
        name=args.name,
        stage=args.stage,
        max_users=args.max_users,
        threshold=rows[0]["threshold"],
        results=rows,
        groups=groups,
        pairs=pairs,
    )
    write_result(args.out, args.name, record, markdown(record))
    plot_positions(record, args.out / f"{args.name}_position.png")
    drew = plot_discard(record, args.out / f"{args.name}_discard.png")
    written = [f"{args.name}.json", f"{args.name}.md", f"{args.name}_position.png"]
    written += [f"{args.name}_discard.png"] if drew else []
    print(f"wrote {', '.join(str(args.out / w) for w in written)}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
