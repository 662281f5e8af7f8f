"""Evaluation: metrics, evaluators, reports, plots, comparison with published tables."""
