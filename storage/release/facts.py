"""The facts a dataset card states, gathered once for both cards that show them.

The release card (``README.md`` of an exported folder) and the Prefect run's dataset-card
artifact state the same things — per teacher: provider, requested model, the versions the API
returned, rows, tokens, cost, terms tag; the runs with their dates, config hashes and
distillery version; what filters and dedup rejected, by reason — read here from the DuckDB
views, for whatever rows a SQL condition selects (a run's, or an export's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb

from distillery.generators.terms import UNKNOWN_TAG


@dataclass(frozen=True)
class TeacherFacts:
    name: str
    provider: str
    model: str
    versions: list[str]
    tags: list[str]
    rows: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    first_at: datetime | None
    last_at: datetime | None


@dataclass(frozen=True)
class RunFacts:
    run_id: str
    dataset: str | None
    config_hash: str | None
    distillery_version: str | None
    started_at: datetime | None
    ended_at: datetime | None
    status: str | None


@dataclass(frozen=True)
class Rejection:
    filter: str
    reason: str
    rows: int


@dataclass
class Facts:
    teachers: list[TeacherFacts]
    runs: list[RunFacts]
    rejections: list[Rejection]
    #: Languages every run's language filter allowed (empty: not known).
    languages: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.teachers)

    @property
    def rejected(self) -> int:
        return sum(r.rows for r in self.rejections)

    @property
    def cost_usd(self) -> float:
        return sum(t.cost_usd for t in self.teachers)

    @property
    def tags(self) -> list[str]:
        return sorted({tag for t in self.teachers for tag in t.tags})


def sql_string(value: str) -> str:
    """A SQL string literal (for conditions built from values, such as a run id)."""
    return "'" + value.replace("'", "''") + "'"


#: A row's terms tag as the gate counts it: no tag (null or empty) is unknown terms.
TAG_SQL = f"coalesce(nullif(usage_terms, ''), {sql_string(UNKNOWN_TAG)})"


def _where(condition: str | None) -> str:
    return f" WHERE {condition}" if condition else ""


def gather_facts(
    con: duckdb.DuckDBPyConnection, samples_where: str | None, rejected_where: str | None
) -> Facts:
    """The facts of the samples ``samples_where`` selects, and of the rejected rows
    ``rejected_where`` selects (both SQL conditions over the views, None for all)."""
    teachers = [
        TeacherFacts(
            name=row[0],
            provider=row[1],
            model=row[2],
            versions=[str(v) for v in row[3] if v is not None],
            tags=list(row[4]),
            rows=int(row[5]),
            prompt_tokens=int(row[6] or 0),
            completion_tokens=int(row[7] or 0),
            cost_usd=float(row[8] or 0.0),
            first_at=row[9],
            last_at=row[10],
        )
        for row in con.execute(
            f"""SELECT teacher_name, teacher_provider, teacher_model,
                       list(DISTINCT teacher_model_version ORDER BY teacher_model_version),
                       list(DISTINCT {TAG_SQL} ORDER BY {TAG_SQL}),
                       count(*), sum(prompt_tokens), sum(completion_tokens), sum(cost_usd),
                       min(created_at), max(created_at)
                FROM samples{_where(samples_where)}
                GROUP BY ALL ORDER BY teacher_name, teacher_provider, teacher_model"""
        ).fetchall()
    ]
    runs = [
        RunFacts(*row)
        for row in con.execute(
            f"""SELECT run_id, arg_max(dataset, ended_at), arg_max(config_hash, ended_at),
                       arg_max(distillery_version, ended_at), min(started_at), max(ended_at),
                       arg_max(status, ended_at)
                FROM run_log
                WHERE run_id IN (SELECT DISTINCT run_id FROM samples{_where(samples_where)})
                GROUP BY run_id ORDER BY min(started_at), run_id"""
        ).fetchall()
    ]
    rejections = [
        Rejection(str(f), str(r), int(n))
        for f, r, n in con.execute(
            f"""SELECT filter, reason, count(*) FROM rejected{_where(rejected_where)}
                GROUP BY ALL ORDER BY 3 DESC, 1, 2"""
        ).fetchall()
    ]
    return Facts(teachers, runs, rejections, _languages(con, [r.run_id for r in runs]))


def _languages(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> list[str]:
    """The languages a language filter allowed, if every run had one (else: not known).

    Read from each run's ``job_shape`` (the job's curation as it ran); a run without a
    language filter may hold any language, so one such run makes the answer unknown.
    """
    if not run_ids:
        return []
    shapes = con.execute(
        "SELECT run_id, arg_max(job_shape, ended_at) FROM run_log "
        "WHERE run_id IN (SELECT unnest($ids)) GROUP BY run_id",
        {"ids": run_ids},
    ).fetchall()
    allowed: set[str] = set()
    for _, shape in shapes:
        found = _filter_languages(shape)
        if not found:
            return []
        allowed |= set(found)
    return sorted(allowed) if len(shapes) == len(run_ids) else []


def _filter_languages(shape: str | None) -> list[str]:
    try:
        filters: Any = json.loads(shape or "{}").get("curation", {}).get("filters", [])
    except (ValueError, AttributeError):
        return []
    for options in filters if isinstance(filters, list) else []:
        if isinstance(options, dict) and options.get("type") == "language":
            return [str(code) for code in options.get("languages") or []]
    return []
