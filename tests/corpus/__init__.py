"""A corpus of hostile and broken inputs, made by code, and the table of what each entry point did.

``build_corpus(root)`` writes every input under ``root`` (no binary is committed); the tests in
``tests/test_corpus.py`` run each one through every entry point that takes it and record one
row per (input, entry point) in ``ROWS``; ``tests/conftest.py`` prints them as a table at the
end of the session, so CI logs show what happened to every input.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from tests.corpus.build import (
    ACCEPTED,
    CHECKPOINT,
    CLI,
    CONFIG,
    FOLDER,
    KINDS,
    OUTCOMES,
    PATIENT_MARKERS,
    REAL,
    REFUSED,
    RUN_ZIP,
    SCAN,
    SKIPPED,
    CorpusItem,
    build_corpus,
)


@dataclass(frozen=True)
class Row:
    """What one entry point did with one input; ``ok`` is False when it was not handled."""

    item: str
    entry_point: str
    outcome: str
    detail: str
    ok: bool
    #: What a refusal of this input must name (the corpus item's ``reason``); counted per real file.
    reason: str = ""


#: Filled by the corpus tests, printed by the ``pytest_terminal_summary`` hook in ``tests/conftest.py``.
ROWS: list[Row] = []


def format_table(rows: list[Row], *, width: int = 96) -> str:
    """Rows as a fixed-width text table: input | entry point | outcome | message (shortened)."""
    if not rows:
        return ""
    name_w = max(len("input"), *(len(row.item) for row in rows))
    entry_w = max(len("entry point"), *(len(row.entry_point) for row in rows))
    outcome_w = max(len("outcome"), *(len(row.outcome) + (0 if row.ok else 8) for row in rows))
    lines = [f"{'input':<{name_w}}  {'entry point':<{entry_w}}  {'outcome':<{outcome_w}}  message"]
    lines.append("-" * len(lines[0]) + "-" * 20)
    for row in sorted(rows, key=lambda row: (row.item, row.entry_point)):
        outcome = row.outcome if row.ok else f"FAILED: {row.outcome}"
        detail = " ".join(row.detail.split())
        detail = detail if len(detail) <= width else detail[: width - 3] + "..."
        lines.append(f"{row.item:<{name_w}}  {row.entry_point:<{entry_w}}  {outcome:<{outcome_w}}  {detail}")
    handled = sum(row.ok for row in rows)
    outcomes = Counter(row.outcome for row in rows)
    lines.append(f"{handled}/{len(rows)} (input, entry point) pairs handled; "
                 f"{len({row.item for row in rows})} inputs; "
                 + ", ".join(f"{outcome}: {count}" for outcome, count in sorted(outcomes.items())))
    lines += real_file_counts(rows)
    return "\n".join(lines)


def real_file_counts(rows: list[Row]) -> list[str]:
    """Per group of real files (pydicom's test set, the re-encoded CT), how many were read and how many
    refused, by reason; one line per group and entry point, counted over inputs."""
    lines = []
    groups = sorted({(row.item.split("/")[1], row.entry_point) for row in rows if row.item.startswith("real/")})
    for group, entry in groups:
        chosen = [row for row in rows if row.item.startswith(f"real/{group}/") and row.entry_point == entry]
        read = sum(row.outcome == ACCEPTED for row in chosen)
        refused = Counter(row.reason or "no reason given" for row in chosen if row.outcome == REFUSED)
        other = len(chosen) - read - sum(refused.values())
        text = f"real files, {group} ({len(chosen)}) via {entry}: read {read}, refused {sum(refused.values())}"
        if refused:
            text += " (" + ", ".join(f"{reason!r}: {count}" for reason, count in refused.most_common()) + ")"
        lines.append(text + (f", not handled {other}" if other else ""))
    return lines


__all__ = [
    "ACCEPTED", "CHECKPOINT", "CLI", "CONFIG", "FOLDER", "KINDS", "OUTCOMES", "PATIENT_MARKERS", "REAL", "REFUSED",
    "ROWS", "RUN_ZIP", "SCAN", "SKIPPED", "CorpusItem", "Row", "build_corpus", "format_table", "real_file_counts",
]
