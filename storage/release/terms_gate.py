"""The terms gate: whether the teachers' terms allow the use a release states.

A release names its intended use (research, internal, commercial, competing-model). Rows are
grouped by teacher, model and terms tag; a tag whose registry entry permits the use goes in,
with its obligations for the card. Any other tag — including ``unknown`` and tags the registry
no longer has, which are treated as restricted — blocks the export unless the user accepts it
explicitly (recorded with the date, for the card) or leaves its rows out (counted in the card).
Entries reviewed longer ago than a configurable age are flagged as stale, not blocked: an old
summary is a reason to re-read the terms, not proof that they changed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import date

import duckdb
from rich.console import Console

from distillery.generators.terms import UNKNOWN_TAG, TermsEntry, Use, entry_for_tag
from distillery.render import print_table
from distillery.storage.export import select_samples

#: Stale after half a year: vendors revise their terms about that often.
DEFAULT_MAX_AGE_DAYS = 180


@dataclass(frozen=True)
class TagRows:
    """One (teacher, model, tag) group of the rows to export."""

    teacher: str
    model: str
    tag: str
    rows: int


def tag_rows(con: duckdb.DuckDBPyConnection, where_sql: str | None) -> list[TagRows]:
    """The samples to export (``where_sql`` filters them, as the export's ``--where`` does),
    counted per teacher, requested model and terms tag; rows without a tag count as unknown."""
    found = select_samples(
        con,
        "teacher_name, teacher_model, "
        f"coalesce(nullif(usage_terms, ''), '{UNKNOWN_TAG}') AS tag, count(*)",
        where_sql,
        "GROUP BY ALL ORDER BY 1, 2, 3",
    )
    return [TagRows(str(t), str(m), str(tag), int(n)) for t, m, tag, n in found]


@dataclass
class GateDecision:
    use: Use
    included: list[TagRows] = field(default_factory=list)  # exported (permitted or accepted)
    accepted: dict[str, date] = field(default_factory=dict)  # tags accepted explicitly, when
    excluded: list[TagRows] = field(default_factory=list)  # left out (--exclude-restricted)
    blocking: list[TagRows] = field(default_factory=list)  # forbid the use, neither of those
    obligations: dict[str, list[str]] = field(default_factory=dict)  # per included tag
    entries: dict[str, TermsEntry] = field(default_factory=dict)  # per tag that has one
    stale: list[str] = field(default_factory=list)  # reviewed longer ago than the max age

    @property
    def refused(self) -> bool:
        return bool(self.blocking)

    def excluded_tags(self) -> set[str]:
        return {group.tag for group in self.excluded}


def decide(
    groups: list[TagRows],
    entries: list[TermsEntry],
    use: Use,
    accept: set[str],
    exclude_restricted: bool,
    today: date,
    max_age_days: int = DEFAULT_MAX_AGE_DAYS,
) -> GateDecision:
    """Sort each group into included, excluded or blocking for ``use``.

    An acceptance is recorded only for a tag it let in (one the terms do not already permit),
    so the card never claims a user signed off on terms that needed no sign-off.
    """
    decision = GateDecision(use=use)
    for group in groups:
        entry = entry_for_tag(entries, group.tag)
        if entry is not None:
            decision.entries[group.tag] = entry
        if entry is not None and use in entry.permits:
            decision.included.append(group)
        elif group.tag in accept:
            decision.included.append(group)
            decision.accepted[group.tag] = today
        elif exclude_restricted:
            decision.excluded.append(group)
        else:
            decision.blocking.append(group)
    for group in decision.included:
        entry = decision.entries.get(group.tag)
        decision.obligations[group.tag] = list(entry.obligations) if entry else []
    decision.stale = sorted(
        tag
        for tag, entry in decision.entries.items()
        if (today - entry.reviewed).days > max_age_days
    )
    return decision


def refusal_table(decision: GateDecision, width: int = 80) -> str:
    """What blocks the export, as a user reads it at ``width`` columns: teacher, model, tag,
    rows and the URL of the terms (a block per row when a table would not fit), then how to
    proceed."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    rows = [
        (
            group.teacher,
            group.model,
            group.tag,
            str(group.rows),
            _url(decision.entries.get(group.tag)),
        )
        for group in decision.blocking
    ]
    total = sum(group.rows for group in decision.blocking)
    title = f"terms forbid --use {decision.use} for {total} row{'s' if total != 1 else ''}"
    print_table(
        console,
        title,
        ["teacher", "model", "tag", "rows", "url"],
        rows,
        right=frozenset({"rows"}),
    )
    console.print(
        "Leave these rows out with --exclude-restricted, or accept a tag with --accept-terms TAG "
        "after reading its terms (recorded in the card with today's date)."
    )
    return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())


def _url(entry: TermsEntry | None) -> str:
    if entry is None:
        return "(no terms entry)"
    return entry.url or "(no URL: review the model's license)"
