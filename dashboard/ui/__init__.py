"""Shared dashboard widgets: settings, cached resources, image views, figures and controls.

Nothing here does ML math; it turns what :mod:`pipeline` returns into things a person reads.
"""
