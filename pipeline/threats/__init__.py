"""Threats beyond one attacked scan: poisoned training data, a stolen model, membership inference.

Each threat is a module that uses training, attacks, evaluation's measures and the store, and writes
its results as a job folder under ``<runs>/threats/``; see each module's docstring.
"""
