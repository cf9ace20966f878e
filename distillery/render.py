"""Rows on a terminal: a table when it reads at the terminal's width, one block per row when not.

Why one place: `query` and `plan` both print rows a user reads at 80 columns, and a table that
folds every column to three letters ("reques…") reads worse than a block per row, as psql's
``\\x`` knows. CSV and JSON are for pipes and keep every digit.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table


def cell(value: object) -> str:
    """A value as a table shows it: floats without binary noise (0.0007797, not
    0.0007797000000000001); --format csv and json keep every digit."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


def print_rows(
    console: Console, columns: list[str], rows: Sequence[tuple[Any, ...]], fmt: str
) -> None:
    """`rows` as `fmt` (table, csv or json); a table falls back to blocks when too wide."""
    if fmt == "json":
        records = [dict(zip(columns, row, strict=True)) for row in rows]
        sys.stdout.write(json.dumps(records, default=str, ensure_ascii=False, indent=1) + "\n")
        return
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        sys.stdout.write(buffer.getvalue())
        return
    texts = [tuple(cell(v) for v in row) for row in rows]
    table = Table()
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in texts:
        table.add_row(*row)
    if _fits(console, columns, texts):
        console.print(table)
    else:
        print_blocks(console, columns, texts, [f"row {n}" for n in range(1, len(texts) + 1)])
        if not texts:
            console.print("  ".join(columns))
    console.print(f"{len(rows)} row{'s' if len(rows) != 1 else ''}", style="dim")


def print_table(
    console: Console,
    title: str,
    columns: list[str],
    rows: Sequence[tuple[str, ...]],
    *,
    right: frozenset[str] = frozenset(),
) -> None:
    """A titled report table (plan's), borderless so that eight columns fit in 80; when its
    natural width is still wider than the terminal, one block per row titled by its first
    cell."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    if natural <= console.width:
        console.print(table)
        return
    console.print(title)
    print_blocks(console, columns[1:], [row[1:] for row in rows], [row[0] for row in rows])


def print_blocks(
    console: Console, columns: list[str], rows: Sequence[tuple[str, ...]], titles: list[str]
) -> None:
    """Each row as a block, a column a line."""
    for title, row in zip(titles, rows, strict=True):
        block = Table(
            title=title, title_style="bold", show_header=False, box=None, title_justify="left"
        )
        block.add_column(style="bold", no_wrap=True)
        block.add_column(overflow="fold")
        for column, value in zip(columns, row, strict=True):
            block.add_row(column.replace("\n", " "), value)
        console.print(block)


def _fits(console: Console, columns: list[str], rows: Sequence[tuple[str, ...]]) -> bool:
    """Whether a table of these columns reads at the terminal's width: each column as wide as
    its name or its widest value up to 12 characters, plus borders."""
    widths = [
        min(12, max([len(name), *(len(row[i]) for row in rows[:50])]))
        for i, name in enumerate(columns)
    ]
    return sum(widths) + 3 * len(columns) + 1 <= console.width
