"""What a run shows in the Prefect UI: live progress, a per-teacher table, a dataset card.

All three are built from the run's committed shards (through the same DuckDB views users
query), so the UI and ``distillery query`` can never disagree.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from uuid import UUID

from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)

from distillery.generators.terms import TermsEntry, entry_for_tag, load_terms
from distillery.storage.catalog import open_catalog
from distillery.storage.location import Location
from distillery.storage.release.card import render_facts
from distillery.storage.release.facts import gather_facts, sql_string

EXAMPLES = 3


def artifact_key(dataset: str, kind: str) -> str:
    """Prefect keys allow lower-case letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{dataset}-{kind}".lower()).strip("-")


class Progress:
    """A progress artifact updated as batches finish."""

    def __init__(self, dataset: str, planned: int) -> None:
        self.dataset = dataset
        self.planned = planned
        self.done = 0
        self.artifact: UUID | None = None
        # Batches finish concurrently; unserialised updates can land out of order.
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self.artifact = await acreate_progress_artifact(
            0.0 if self.planned else 100.0,
            key=artifact_key(self.dataset, "progress"),
            description=f"{self.planned} requests to send",
        )

    async def advance(self, requests: int) -> None:
        async with self._lock:
            self.done += requests
            if self.artifact is not None and self.planned:
                await aupdate_progress_artifact(
                    self.artifact, min(100.0, 100.0 * self.done / self.planned)
                )


async def publish_run_artifacts(output: Path | str | Location, dataset: str, run_id: str) -> None:
    """The per-teacher table and the dataset card of one run."""
    con = open_catalog(output)
    per_teacher = con.execute(
        """
        WITH attempts AS (
            SELECT teacher_name, attempt_statuses FROM samples WHERE run_id = $run
            UNION ALL
            SELECT teacher_name, attempt_statuses FROM failures WHERE run_id = $run
        ),
        limited AS (
            SELECT teacher_name,
                   sum(len(list_filter(attempt_statuses, lambda s: s = '429'))) AS http_429
            FROM attempts GROUP BY ALL
        ),
        kept AS (
            SELECT teacher_name, count(*) AS samples, sum(prompt_tokens) AS prompt_tokens,
                   sum(completion_tokens) AS completion_tokens,
                   round(sum(cost_usd), 6) AS cost_usd
            FROM samples WHERE run_id = $run GROUP BY ALL
        ),
        failed AS (
            SELECT teacher_name,
                   string_agg(error_class || ' ' || n, ', ' ORDER BY error_class) AS failures
            FROM (SELECT teacher_name, error_class, count(*) AS n FROM failures
                  WHERE run_id = $run GROUP BY ALL)
            GROUP BY ALL
        )
        SELECT limited.teacher_name AS teacher, coalesce(samples, 0) AS samples,
               coalesce(prompt_tokens, 0) AS prompt_tokens,
               coalesce(completion_tokens, 0) AS completion_tokens,
               coalesce(cost_usd, 0) AS cost_usd, http_429, coalesce(failures, '') AS failures
        FROM limited LEFT JOIN kept USING (teacher_name) LEFT JOIN failed USING (teacher_name)
        ORDER BY teacher
        """,
        {"run": run_id},
    )
    columns = [d[0] for d in per_teacher.description or []]
    rows = [dict(zip(columns, row, strict=True)) for row in per_teacher.fetchall()]
    await acreate_table_artifact(
        rows, key=artifact_key(dataset, "teachers"), description=f"run {run_id}, per teacher"
    )
    await acreate_markdown_artifact(
        _dataset_card(con, dataset, run_id, rows),
        key=artifact_key(dataset, "card"),
        description=f"dataset card, run {run_id}",
    )


def _dataset_card(con: object, dataset: str, run_id: str, rows: list[dict[str, object]]) -> str:
    """The run's card: the facts a release card states (storage/release/facts.py, the same
    template), for this run's rows, plus its failures and a few examples."""
    import duckdb

    assert isinstance(con, duckdb.DuckDBPyConnection)
    this_run = f"run_id = {sql_string(run_id)}"
    facts = gather_facts(con, this_run, this_run)
    entries = load_terms()
    terms: dict[str, TermsEntry | None] = {tag: entry_for_tag(entries, tag) for tag in facts.tags}
    examples = con.execute(
        "SELECT teacher_name, prompt, response_text FROM samples WHERE run_id = ? "
        "ORDER BY sample_id LIMIT ?",
        [run_id, EXAMPLES],
    ).fetchall()
    lines = [f"# {dataset} — run `{run_id}`", "", render_facts(facts, terms).strip(), ""]
    failures = [f"- {r['teacher']}: {r['failures']}" for r in rows if r["failures"]]
    if failures:
        lines += ["## Failures", "", *failures, ""]
    lines += ["## Examples", ""]
    for teacher, prompt, response in examples:
        lines += [f"**{teacher}** — {_clip(str(prompt))}", "", f"> {_clip(str(response), 400)}", ""]
    return "\n".join(lines)


def _clip(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
