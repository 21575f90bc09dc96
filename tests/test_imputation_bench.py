"""bench/imputation.py: the paper's Table 11 reading (MIIR against LRMM) names each claim held
or not from the paired comparisons, with the data set's text field standing for the paper's
title where there is none (amazon-sports: keywords)."""

from __future__ import annotations

from helpers import load_bench


def cell(diff: float, p: float) -> dict:
    return {"diff": diff, "p": p}


def test_the_table_11_reading_judges_each_claim_and_reads_the_text_field() -> None:
    bench = load_bench("imputation")
    art = {"path": "artifacts/sports-d"}
    pair = {
        "a": "MIIR (run)",
        "b": "LRMM (run)",
        "artifact": art,
        "fields": {
            "categories": {"precision": cell(0.09, 1e-9), "recall": cell(-0.15, 1e-9)},
            "brand": {"accuracy": cell(0.02, 1e-4)},  # the paper: MIIR worse
            "keywords": {"mse": cell(-1e-4, 1e-3), "nearest_hit": cell(0.0, 0.9)},
        },
    }
    lines = bench.pairs_markdown({"pairs": [pair]}, "artifacts/sports-d")
    rows = {line.split(" | ")[2]: line for line in lines if line.startswith("| MIIR (run) | LRMM")}
    assert rows["categories precision"].endswith("| held |")
    assert rows["categories recall"].endswith("| held |")
    assert rows["brand accuracy"].endswith("| not held |")
    assert rows["keywords mse"].endswith("| held |")  # lower MSE: MIIR better, as the paper's
    assert "title mse" not in rows
    # a text-free comparison states no text claim
    del pair["fields"]["keywords"]
    lines = bench.pairs_markdown({"pairs": [pair]}, "artifacts/sports-d")
    assert not any("mse" in line for line in lines if line.startswith("| MIIR (run) | LRMM"))


def test_the_reading_does_not_depend_on_the_order_the_runs_are_given() -> None:
    """LRMM listed before MIIR: the same claims, the differences turned round; the
    informative precision is judged beside the plain one."""
    bench = load_bench("imputation")
    art = {"path": "artifacts/sports-d"}
    fields = {
        "categories": {
            "precision": {"a": 0.88, "b": 1.0, **cell(-0.12, 1e-9)},
            "inf_precision": {"a": 0.30, "b": 0.0, **cell(0.30, 1e-9)},
        }
    }
    pair = {"a": "LRMM (run)", "b": "MIIR (run)", "artifact": art, "fields": fields}
    lines = bench.pairs_markdown({"pairs": [pair]}, "artifacts/sports-d")
    rows = {line.split(" | ")[2]: line for line in lines if line.startswith("| MIIR (run) | LRMM")}
    assert "(+0.1200, p 1.0e-09) | held |" in rows["categories precision"]
    assert "(-0.3000, p 1.0e-09) | not held |" in rows["categories inf_precision"]
