"""Plain-text tables of evaluation results."""

from __future__ import annotations

from typing import Any

from miir.evaluation.evaluate import PROTOCOLS


def metrics_table(results: dict[str, Any]) -> str:
    """One row per (stage, protocol), one column per metric."""
    rows = []
    names: list[str] = []
    for stage in ("valid", "test"):
        for protocol in PROTOCOLS:
            metrics = results.get(stage, {}).get(protocol)
            if metrics:
                names = names or list(metrics)
                rows.append((f"{stage}/{protocol}", metrics))
    if not rows:
        return "(no metrics)"
    head = f"{'':<22}" + "".join(f"{n:>10}" for n in names)
    lines = [f"{results.get('variant', '')}".strip(), head] if results.get("variant") else [head]
    for label, metrics in rows:
        lines.append(f"{label:<22}" + "".join(f"{metrics[n]:>10.4f}" for n in names))
    return "\n".join(lines)


def compare_table(result: dict[str, Any]) -> str:
    """The paired comparison of :func:`miir.evaluation.compare.compare_runs` as text."""
    a, b = result["a"], result["b"]
    lines = [
        f"A: {a['run']} ({a.get('variant')})",
        f"B: {b['run']} ({b.get('variant')})",
        f"{result['stage']}, paired two-sided t-test per user (n = {result['rows'][0]['n']}), "
        "p not corrected for multiple tests",
        f"{'':<22}{'A':>10}{'B':>10}{'A - B':>10}{'t':>9}{'p':>11}",
    ]
    for r in result["rows"]:
        label = f"{r['protocol']}/{r['metric']}"
        lines.append(
            f"{label:<22}{r['mean_a']:>10.4f}{r['mean_b']:>10.4f}{r['diff']:>+10.4f}"
            f"{r['t']:>9.2f}{r['p']:>11.2e}"
        )
    return "\n".join(lines)


def imputation_table(
    results: dict[str, Any] | list[dict[str, Any]],
    scopes: tuple[str, ...] = ("all", "history", "target"),
) -> str:
    """Markdown tables of imputation results (:func:`miir.evaluation.imputation.evaluate_imputation`,
    or a run's ``{"results": [...]}``): one table per scope, a row per imputer (its ``label``
    if set), a column per field and metric; the cells scored per field in the last column."""
    rows = results["results"] if isinstance(results, dict) else results
    if not rows:
        return "(no imputation results)"
    fields: dict[str, list[str]] = {}
    for r in rows:
        for name, f in r["fields"].items():
            fields.setdefault(name, list(f["metrics"]))
    columns = [(name, m) for name, metrics in fields.items() for m in metrics]
    out: list[str] = []
    for scope in scopes:
        head = ["imputer", *[f"{name} {m}" for name, m in columns], "cells"]
        out += [f"**{scope}**", "", "| " + " | ".join(head) + " |"]
        out.append("|" + "---|" * len(head))
        for r in rows:
            cells = []
            for name, m in columns:
                v = r["fields"].get(name, {}).get(scope, {}).get(m)
                digits = 6 if m == "mse" else 4  # MSE per dimension: about 2e-3
                cells.append("–" if v is None else f"{v:.{digits}f}")
            counts = "/".join(
                str(r["fields"][n][scope]["cells"]) for n in fields if n in r["fields"]
            )
            out.append("| " + " | ".join([r.get("label", r["imputer"]), *cells, counts]) + " |")
        out.append("")
    out.append("cells: scored cells per field (" + ", ".join(fields) + ")")
    return "\n".join(out)
