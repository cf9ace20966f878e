"""What ``distillery submissions`` prints: a run's provider submissions, as its Prefect
artifact shows them, at 80 columns; and the one line per run that lists which runs have any.

Apart from the command so the words stay in one place, as :mod:`distillery.plan_report` is for
``plan``. The table is for reading (counts without the zeros a provider pads them with, ages
as ``3h12m``); ``--format csv`` and ``json`` carry every field of
:class:`~distillery.storage.submissions.SubmissionSummary` unrounded, ages in seconds.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.markup import escape

from distillery.storage.location import Location
from distillery.storage.submissions import TABLE_DIR, Step, SubmissionSummary

#: How the total line names a submission at each step, in the order a submission takes them.
STEP_WORDS: dict[Step, str] = {
    "prepared": "prepared, not sent",
    "uploaded": "uploaded, not started",
    "created": "at the provider",
    "ended": "ended, to collect",
    "collected": "collected",
    "abandoned": "abandoned",
}

#: The fields of ``--format csv`` and ``json``: the run, then every field of a summary row.
RECORD_FIELDS: tuple[str, ...] = ("run_id", *SubmissionSummary.__annotations__)


def now() -> datetime:
    """The instant ages are measured to (a function of this module, so tests can set it)."""
    return datetime.now(UTC)


def runs_with_submissions(output: Location) -> list[str]:
    """The run ids with a folder in the output's submissions table, sorted (a folder need not
    hold a record: the caller reads it to know)."""
    from distillery.names import run_id_of_folder

    folders = output.child(TABLE_DIR).subdirs()
    return sorted(run for name in folders if (run := run_id_of_folder(name)) is not None)


def age(seconds: float) -> str:
    """``45s``, ``12m05s``, ``3h12m``, ``2d04h``: two units are enough to tell ages apart."""
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def counts_text(counts: dict[str, int]) -> str:
    """The provider's counts in its own order, without the zeros (``succeeded 40, errored 2``)."""
    return ", ".join(f"{k} {v:,}" for k, v in counts.items() if v) or "-"


def step_text(row: SubmissionSummary) -> str:
    """Our step, and the provider's own word for its state when it says more."""
    state = row["provider_state"]
    return row["step"] if not state or state == row["step"] else f"{row['step']} ({state})"


def submission_table(
    rows: Sequence[SubmissionSummary],
) -> tuple[list[str], list[tuple[str, ...]]]:
    """The columns and rows of the table (an ``error`` column only when a row has one), each
    cell escaped: a provider's message in brackets is text, not rich markup."""
    errors = any(row["error"] for row in rows)
    columns = ["submission", "teacher", "batch id", "step", "counts", "requests", "~USD", "age"]
    cells = [
        (
            row["submission_id"],
            row["teacher"],
            row["provider_batch_id"] or "-",
            step_text(row),
            counts_text(row["counts"]),
            f"{row['requests']:,}",
            f"{row['estimated_cost_usd']:,.4f}",
            age(row["age_s"]),
            *([row["error"] or "-"] if errors else []),
        )
        for row in rows
    ]
    table = [tuple(escape(cell) for cell in row) for row in cells]
    return [*columns, *(["error"] if errors else [])], table


def total_line(rows: Sequence[SubmissionSummary]) -> str:
    """``3 submissions, 12 requests, ~$0.0123: 2 collected, 1 at the provider``."""
    steps = Counter(row["step"] for row in rows)
    requests = sum(row["requests"] for row in rows)
    cost = sum(row["estimated_cost_usd"] for row in rows)
    where = ", ".join(f"{steps[step]} {words}" for step, words in STEP_WORDS.items() if steps[step])
    plural = "" if len(rows) == 1 else "s"
    return f"{len(rows)} submission{plural}, {requests:,} requests, ~${cost:,.4f}: {where}"


def submission_records(
    run_id: str, rows: Sequence[SubmissionSummary], fmt: str
) -> list[tuple[Any, ...]]:
    """The rows of ``--format csv`` or ``json`` (fields :data:`RECORD_FIELDS`): every field,
    unrounded; the counts a JSON object (in CSV, its JSON text, so a pipe can parse the cell)."""
    records = []
    for row in rows:
        record: dict[str, Any] = {"run_id": run_id, **row}
        if fmt == "csv":
            record["counts"] = json.dumps(row["counts"])
        records.append(tuple(record[name] for name in RECORD_FIELDS))
    return records
