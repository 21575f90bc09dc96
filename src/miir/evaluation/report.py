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
