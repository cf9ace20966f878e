"""The dataset card's plots: PNG files in ``FOLDER/plots/``, linked from the card.

Each plot is drawn from a DuckDB aggregate over the released rows (histogram bins, sums), never
from the rows themselves, so drawing costs no memory whatever the dataset's size. A plot with
nothing to show (no reasoning traces, nothing rejected) is not drawn; the card says why.
Figures are matplotlib ``Figure`` objects saved by its Agg canvas, never pyplot's: no display,
no GUI toolkit, no global figure state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
from matplotlib.figure import Figure

from distillery.storage.release.facts import Facts

#: Histogram bins per decade of characters (log scale: lengths span 1 to 10^5 and more).
BINS_PER_DECADE = 10


@dataclass(frozen=True)
class Plot:
    file: str  # relative to the folder: plots/NAME.png
    title: str


@dataclass(frozen=True)
class Skipped:
    title: str
    why: str


def draw_plots(
    con: duckdb.DuckDBPyConnection, where: str, facts: Facts, folder: Path, reasoning: bool
) -> tuple[list[Plot], list[Skipped]]:
    """Draw every plot that has something to show into ``folder/plots``; the reasoning
    traces' only if the rows carry them (``reasoning``: exported with their traces)."""
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    drawn: list[Plot] = []
    skipped: list[Skipped] = []
    for plot in (
        _lengths(con, where, "response_text", folder, "response_length", "Response length"),
        _per_teacher(facts, folder),
        _rejections(facts, folder),
        _lengths(con, where, "reasoning_text", folder, "reasoning_length", "Reasoning length")
        if reasoning
        else Skipped("Reasoning length per teacher", "exported without traces (--with-reasoning)"),
    ):
        if isinstance(plot, Plot):
            drawn.append(plot)
        else:
            skipped.append(plot)
    return drawn, skipped


def _save(figure: Figure, folder: Path, name: str, title: str) -> Plot:
    figure.savefig(folder / "plots" / f"{name}.png", dpi=100)
    return Plot(f"plots/{name}.png", title)


def _lengths(
    con: duckdb.DuckDBPyConnection, where: str, column: str, folder: Path, name: str, title: str
) -> Plot | Skipped:
    """A length histogram (characters, log bins) per teacher, as step lines."""
    bins = con.execute(
        f"""SELECT teacher_name,
                   floor(log10(greatest(length({column}), 1)) * {BINS_PER_DECADE})::INT AS bin,
                   count(*)
            FROM samples WHERE ({where}) AND coalesce(length({column}), 0) > 0
            GROUP BY ALL ORDER BY 1, 2"""
    ).fetchall()
    if not bins:
        return Skipped(f"{title} per teacher", f"no row has a {column.replace('_', ' ')}")
    figure = Figure(figsize=(7, 4), layout="tight")
    axes = figure.subplots()
    low = min(int(index) for _, index, _ in bins)
    high = max(int(index) for _, index, _ in bins) + 1
    edges = [10 ** (i / BINS_PER_DECADE) for i in range(low, high + 1)]
    by_teacher: dict[str, list[float]] = {}
    for teacher, index, count in bins:
        by_teacher.setdefault(str(teacher), [0.0] * (high - low))[int(index) - low] = count
    for teacher, counts in by_teacher.items():
        total = sum(counts)
        axes.stairs([100 * c / total for c in counts], edges, label=teacher, linewidth=1.5)
    axes.set_xscale("log")
    axes.set_xlabel("characters")
    axes.set_ylabel("% of the teacher's rows")
    axes.set_title(f"{title} per teacher")
    axes.legend(fontsize="small")
    return _save(figure, folder, name, f"{title} per teacher")


def _per_teacher(facts: Facts, folder: Path) -> Plot | Skipped:
    title = "Rows and cost per teacher"
    if not facts.teachers:
        return Skipped(title, "no rows were released")
    names = [t.name for t in facts.teachers]
    figure = Figure(figsize=(9, max(2.5, 0.4 * len(names) + 1.5)), layout="tight")
    rows, cost = figure.subplots(1, 2)
    rows.barh(names, [t.rows for t in facts.teachers], color="tab:blue")
    rows.set_xlabel("rows")
    cost.barh(names, [t.cost_usd for t in facts.teachers], color="tab:green")
    cost.set_xlabel("cost (USD)")
    cost.set_yticks(range(len(names)), [""] * len(names))
    figure.suptitle(title)
    return _save(figure, folder, "teachers", title)


def _rejections(facts: Facts, folder: Path) -> Plot | Skipped:
    title = "Rejections by reason"
    if not facts.rejections:
        return Skipped(title, "filters and dedup rejected nothing")
    labels = [f"{r.filter}: {r.reason}" for r in facts.rejections]
    figure = Figure(figsize=(7, max(2.5, 0.4 * len(labels) + 1.5)), layout="tight")
    axes = figure.subplots()
    axes.barh(labels, [r.rows for r in facts.rejections], color="tab:red")
    axes.invert_yaxis()
    axes.set_xlabel("rows")
    axes.set_title(title)
    return _save(figure, folder, "rejections", title)
