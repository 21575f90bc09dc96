"""Plain-text tables of evaluation results."""

from __future__ import annotations

from typing import Any


def metrics_table(results: dict[str, Any]) -> str:
    """One row per (stage, protocol), one column per metric."""
    rows = []
    names: list[str] = []
    for stage in ("valid", "test"):
        for protocol in ("sampled", "full"):
            metrics = results.get(stage, {}).get(protocol)
            if metrics:
                names = names or list(metrics)
                rows.append((f"{stage}/{protocol}", metrics))
    if not rows:
        return "(no metrics)"
    head = f"{'':<16}" + "".join(f"{n:>10}" for n in names)
    lines = [f"{results.get('variant', '')}".strip(), head] if results.get("variant") else [head]
    for label, metrics in rows:
        lines.append(f"{label:<16}" + "".join(f"{metrics[n]:>10.4f}" for n in names))
    return "\n".join(lines)
