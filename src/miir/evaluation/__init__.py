"""Evaluation: ranking of the target item and the metrics computed from its rank."""
