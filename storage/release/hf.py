"""``distillery export --format hf``: a dataset folder a team may release, or nothing.

In order: the inputs are checked (output folder, ``--where``, splits, evaluation files), the
terms gate decides on the stated use (refusing, it names the rows that block it), the rows are
streamed into ``data/`` of a hidden sibling folder (``.NAME.partial``) with the
decontamination table, then the plots and the card are written from DuckDB aggregates over the
same selection, and only then is the sibling renamed to ``FOLDER``. A failure removes the
sibling; a kill leaves it hidden, and the next export removes it. ``FOLDER`` itself is never
half-written: it is absent, the old release, or the new one.

With ``--overwrite`` the old folder is moved aside (``.NAME.old``), the new one renamed in, the
old one deleted; a kill between the two renames leaves ``.NAME.old``, which the next export
puts back before it starts.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb

from distillery import __version__
from distillery.errors import UserInputError
from distillery.generators.terms import USES, Use, load_terms
from distillery.storage.catalog import open_catalog
from distillery.storage.export import EXPORTABLE, ReasoningStyle
from distillery.storage.failpoints import failpoint
from distillery.storage.location import Location
from distillery.storage.release.card import Card, Decontamination, EvalSetResult, render_card
from distillery.storage.release.decontam import DEFAULT_NGRAM, Contamination, EvalSet
from distillery.storage.release.facts import TAG_SQL, gather_facts, sql_string
from distillery.storage.release.layout import (
    DECONTAMINATION_FILE,
    SHARD_BYTES,
    SHARD_ROWS,
    RowPlan,
    Written,
    write_rows,
)
from distillery.storage.release.terms_gate import GateDecision, decide, refusal_table, tag_rows


class TermsRefused(UserInputError):
    """The gate refused: ``table`` names the rows whose terms forbid the stated use."""

    def __init__(self, table: str) -> None:
        super().__init__(table)
        self.table = table


@dataclass(frozen=True)
class HfOptions:
    use: str
    splits: dict[str, float]
    reasoning: ReasoningStyle | None = None
    reasoning_key: str = "reasoning"
    where: str | None = None
    eval_sets: list[EvalSet] = field(default_factory=list)
    ngram: int = DEFAULT_NGRAM
    accept: frozenset[str] = frozenset()
    exclude_restricted: bool = False
    terms_max_age_days: int = 180
    #: The job's own ``terms_file:`` (its entries come first, as in the run that tagged rows).
    terms_file: Path | None = None
    overwrite: bool = False
    today: date | None = None  # None: the day of the export
    shard_rows: int = SHARD_ROWS
    shard_bytes: int = SHARD_BYTES


@dataclass
class HfResult:
    folder: Path
    written: Written
    gate: GateDecision
    skipped: Counter[str]  # reasoning visibility -> rows without a usable trace


def check_use(use: str) -> Use:
    for known in USES:
        if use == known:
            return known
    raise UserInputError(f"--use {use!r}: not an intended use (one of: {', '.join(USES)})")


def check_folder(folder: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty folder unless ``overwrite``; recover a killed swap."""
    old = _sibling(folder, "old")
    if old.is_dir() and not folder.exists():
        old.rename(folder)  # a kill between the two renames of an overwrite: undo it
    shutil.rmtree(old, ignore_errors=True)  # a kill after them: the old release, replaced
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"--output {folder}: is a file, not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise UserInputError(
            f"--output {folder}: exists and is not empty (add --overwrite to replace it)"
        )


def check_eval_sets(sets: list[EvalSet]) -> None:
    """Each evaluation file opens (before the gate and the build, which take time)."""
    for eval_set in sets:
        try:
            with eval_set.path.open("rb"):
                pass
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise UserInputError(
                f"--decontaminate {eval_set.path}: cannot read it ({reason})"
            ) from None


def _sibling(folder: Path, kind: str) -> Path:
    return folder.with_name(f".{folder.name}.{kind}")


def _and(*conditions: str | None) -> str:
    return " AND ".join(f"({c})" for c in conditions if c) or "TRUE"


def _selection(con: duckdb.DuckDBPyConnection, options: HfOptions) -> tuple[str, str]:
    """The rows a release may hold: the user's ``--where``, answers only (not the
    instructions and rewrites recipes feed to later stages); and of those, the ones with a
    usable trace if asked (the rest are counted as skipped)."""
    from distillery.generators.recipes.base import INTERMEDIATE_STAGES

    stages = ", ".join(sql_string(stage) for stage in INTERMEDIATE_STAGES)
    base = _and(options.where, f"coalesce(stage, '') NOT IN ({stages})")
    try:
        _count(con, base)
    except duckdb.Error as exc:
        raise UserInputError(f"--where {options.where!r}: {str(exc).splitlines()[0]}") from exc
    if options.reasoning is None:
        return base, base
    usable = ", ".join(sql_string(v) for v in EXPORTABLE)
    return base, _and(base, f"reasoning_visibility IN ({usable})")


def _count(con: duckdb.DuckDBPyConnection, where: str) -> int:
    (count,) = con.execute(f"SELECT count(*) FROM samples WHERE {where}").fetchall()[0]
    return int(count)


def _skipped(con: duckdb.DuckDBPyConnection, options: HfOptions, where: str) -> Counter[str]:
    if options.reasoning is None:
        return Counter()
    usable = ", ".join(sql_string(v) for v in EXPORTABLE)
    rows = con.execute(
        f"SELECT coalesce(reasoning_visibility, 'none'), count(*) FROM samples "
        f"WHERE {where} AND coalesce(reasoning_visibility, 'none') NOT IN ({usable}) "
        "GROUP BY ALL"
    ).fetchall()
    return Counter({str(k): int(n) for k, n in rows})


def export_hf(dataset: Path | str | Location, folder: Path, options: HfOptions) -> HfResult:
    """Write the release of ``dataset`` into ``folder`` (see the module docstring)."""
    use = check_use(options.use)
    check_folder(folder, options.overwrite)
    check_eval_sets(options.eval_sets)
    con = open_catalog(dataset)
    base, selection = _selection(con, options)
    if not _count(con, selection):
        chosen = f" with --where {options.where!r}" if options.where else ""
        usable = " and a usable reasoning trace" if options.reasoning else ""
        raise UserInputError(f"--data {dataset}: no samples{chosen}{usable} to export")
    decision = decide(
        tag_rows(con, selection),
        load_terms(options.terms_file),
        use,
        set(options.accept),
        options.exclude_restricted,
        options.today or datetime.now(UTC).date(),
        options.terms_max_age_days,
    )
    if decision.refused:
        raise TermsRefused(refusal_table(decision))
    contamination = (
        Contamination.build(options.eval_sets, options.ngram) if options.eval_sets else None
    )
    excluded = ", ".join(sql_string(tag) for tag in sorted(decision.excluded_tags()))
    where = _and(selection, f"{TAG_SQL} NOT IN ({excluded})" if excluded else None)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(folder, "partial")
    shutil.rmtree(staging, ignore_errors=True)  # a killed export's leftover
    staging.mkdir()
    try:
        written = write_rows(
            con,
            staging,
            RowPlan(
                splits=options.splits,
                where=where,
                reasoning=options.reasoning,
                reasoning_key=options.reasoning_key,
                contamination=contamination,
                shard_rows=options.shard_rows,
                shard_bytes=options.shard_bytes,
            ),
        )
        if not sum(written.rows.values()):
            raise UserInputError(
                f"--decontaminate: all {written.decontaminated_rows:,} rows share an n-gram with "
                "an evaluation item; nothing to release (is --ngram too small?)"
            )
        released = where
        if contamination is not None:
            listed = str(staging / DECONTAMINATION_FILE).replace("'", "''")
            con.execute(
                "CREATE OR REPLACE TEMP TABLE release_decontaminated AS "
                f"SELECT DISTINCT sample_id FROM read_parquet('{listed}')"
            )
            released = _and(
                where, "sample_id NOT IN (SELECT sample_id FROM release_decontaminated)"
            )
        facts = gather_facts(
            con,
            released,
            _and(options.where, f"{TAG_SQL} NOT IN ({excluded})" if excluded else None),
        )
        from distillery.storage.release.plots import draw_plots  # matplotlib: 1-2 s to import

        plots, skipped = draw_plots(con, released, facts, staging, options.reasoning is not None)
        card = Card(
            name=folder.name,
            # Its name only: a local path says nothing to readers and may say too much.
            source=dataset.uri if isinstance(dataset, Location) else Path(dataset).name,
            where=options.where,
            reasoning=_reasoning_note(options),
            facts=facts,
            gate=decision,
            max_age_days=options.terms_max_age_days,
            shares=options.splits,
            rows=written.rows,
            files=written.files,
            plots=plots,
            skipped=skipped,
            decontamination=_decontamination(options, contamination, written),
            exported_at=datetime.now(UTC),
            version=__version__,
        )
        (staging / "README.md").write_text(render_card(card), encoding="utf-8")
        _sync_tree(staging)
        failpoint("export-hf:before-publish")
        _publish(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return HfResult(folder, written, decision, _skipped(con, options, base))


def _reasoning_note(options: HfOptions) -> str | None:
    if options.reasoning is None:
        return None
    if options.reasoning == "think":
        return "in a `<think>` block before the answer"
    return f"in the assistant message's `{options.reasoning_key}` field"


def _decontamination(
    options: HfOptions, contamination: Contamination | None, written: Written
) -> Decontamination | None:
    if contamination is None:
        return None
    return Decontamination(
        ngram=options.ngram,
        sets=[
            EvalSetResult(
                s.name,
                str(s.path),
                s.field,
                contamination.counts.get(s.name, 0),
                contamination.skipped.get(s.name, 0),
                written.decontaminated[s.name],
            )
            for s in options.eval_sets
        ],
        rows=written.decontaminated_rows,
    )


def _sync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` before it is renamed into place."""
    for directory, _, files in os.walk(root):
        for name in files:
            with (Path(directory) / name).open("rb") as handle:
                os.fsync(handle.fileno())
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _publish(staging: Path, folder: Path) -> None:
    """Rename the finished folder into place, moving an old one aside first."""
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    if not folder.exists():
        staging.rename(folder)
        return
    old = _sibling(folder, "old")
    shutil.rmtree(old, ignore_errors=True)
    folder.rename(old)
    failpoint("export-hf:swapped-out")
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
