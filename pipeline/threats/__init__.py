"""Threats other than evasion: model extraction and membership inference (issue 25).

Each threat trains the models it needs (surrogates, shadow models) with the product's own training
loop, measures saved runs on their stored splits through :mod:`pipeline.evaluation`, and writes its
results, report and MLflow run like an evaluation does. The package sits above evaluation (whose
scans, batches, attacks and intervals it uses) and below the dashboard.
"""
