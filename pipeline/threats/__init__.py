"""Threats beyond one attacked scan: poisoned training data, a stolen model, membership inference (issue 25).

Each threat trains the models it needs (a poisoned twin, surrogates, shadow models) with the product's own
training loop, measures saved runs on their stored splits through :mod:`pipeline.evaluation`, and writes
its results, report and MLflow run as a job folder under ``threats/``; see each module's docstring. The
package sits above evaluation (whose scans, batches, attacks and intervals it uses) and below the dashboard.
"""
