"""The rows of a release in the Hugging Face dataset layout: ``data/{split}-0000i-of-0000N``.

Rows are read from the ``samples`` view in Arrow record batches and written split by split
with one pyarrow ``ParquetWriter`` open per split, so memory holds one batch per split however
large the dataset is. A shard is closed at ``shard_rows`` rows or about ``shard_bytes`` bytes
(Arrow's in-memory size, a bound on the compressed file), and the shards are numbered
``-of-N`` once every row is written: until then N is not known.

Each row is ``messages`` (the chat as TRL's SFTTrainer reads it, shaped by
:func:`distillery.storage.export.training_messages`) and ``sample_id`` (the way back to the
sample's lineage). Rows whose prompt or answer shares an n-gram with an evaluation item are
left out and listed in ``decontamination.parquet`` (sample_id, eval_set, side).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from distillery.errors import UserInputError
from distillery.storage.export import ReasoningStyle, training_messages
from distillery.storage.failpoints import failpoint
from distillery.storage.release.splits import FAMILY_KEY_SQL, split_of

if TYPE_CHECKING:
    from distillery.storage.release.decontam import Contamination

SHARD_ROWS = 250_000
SHARD_BYTES = 500 * 2**20
BATCH_ROWS = 5_000
DECONTAMINATION_FILE = "decontamination.parquet"
DECONTAMINATION_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("eval_set", pa.string(), nullable=False),
        pa.field("side", pa.string(), nullable=False),  # prompt | answer
    ]
)


@dataclass(frozen=True)
class RowPlan:
    """What rows to write and how: the selection is already decided (gate, stages, where)."""

    splits: dict[str, float]
    where: str
    reasoning: ReasoningStyle | None = None
    reasoning_key: str = "reasoning"
    contamination: Contamination | None = None
    shard_rows: int = SHARD_ROWS
    shard_bytes: int = SHARD_BYTES


@dataclass
class Written:
    rows: Counter[str] = field(default_factory=Counter)  # split -> rows written
    files: dict[str, list[str]] = field(default_factory=dict)  # split -> data/... file names
    decontaminated: Counter[str] = field(default_factory=Counter)  # eval set -> rows left out
    decontaminated_rows: int = 0


def row_schema(reasoning: ReasoningStyle | None, key: str) -> pa.Schema:
    """``messages`` (list of role/content structs, plus the trace key in the field style)."""
    fields = [pa.field("role", pa.string()), pa.field("content", pa.string())]
    if reasoning == "field":
        fields.append(pa.field(key, pa.string()))
    return pa.schema(
        [
            pa.field("messages", pa.list_(pa.struct(fields))),
            pa.field("sample_id", pa.string(), nullable=False),
        ]
    )


class _SplitWriter:
    """The shards of one split, rotated at the row and byte bounds."""

    def __init__(self, data: Path, split: str, schema: pa.Schema, plan: RowPlan) -> None:
        self.data, self.split, self.schema, self.plan = data, split, schema, plan
        self.paths: list[Path] = []
        self.writer: pq.ParquetWriter | None = None
        self.rows = self.bytes = 0

    def write(self, rows: list[dict[str, Any]]) -> None:
        table = pa.Table.from_pylist(rows, schema=self.schema)
        while table.num_rows:
            if self.writer is None or (
                self.rows >= self.plan.shard_rows or self.bytes >= self.plan.shard_bytes
            ):
                self._open()
            assert self.writer is not None
            part = table.slice(0, self.plan.shard_rows - self.rows)
            self.writer.write_table(part)
            self.rows += part.num_rows
            self.bytes += part.nbytes
            table = table.slice(part.num_rows)

    def _open(self) -> None:
        self.close()
        path = self.data / f"{self.split}-{len(self.paths):05d}.parquet.partial"
        self.paths.append(path)
        self.writer = pq.ParquetWriter(path, self.schema, compression="zstd")
        self.rows = self.bytes = 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def publish(self) -> list[str]:
        """Give the shards their final ``-of-N`` names; returns them, relative to the folder."""
        self.close()
        names = []
        for index, path in enumerate(self.paths):
            name = f"{self.split}-{index:05d}-of-{len(self.paths):05d}.parquet"
            path.rename(self.data / name)
            names.append(f"data/{name}")
        return names


def _select(plan: RowPlan) -> str:
    """The rows in the order of the committed shards (DuckDB preserves a scan's order), not
    sorted: an ORDER BY would hold every row's text in DuckDB before the first came out."""
    return f"""SELECT sample_id, {FAMILY_KEY_SQL} AS family, messages, conversation,
                      response_text, reasoning_text
               FROM samples WHERE {plan.where}"""


def write_rows(con: duckdb.DuckDBPyConnection, folder: Path, plan: RowPlan) -> Written:
    """Write the selected rows into ``folder/data`` (and the decontamination table)."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    schema = row_schema(plan.reasoning, plan.reasoning_key)
    writers = {name: _SplitWriter(data, name, schema, plan) for name in plan.splits}
    written = Written()
    try:
        reader = con.sql(_select(plan)).to_arrow_reader(BATCH_ROWS)
    except duckdb.Error as exc:
        raise UserInputError(f"--where: {str(exc).splitlines()[0]}") from exc
    contaminated: pq.ParquetWriter | None = None
    if plan.contamination is not None:
        contaminated = pq.ParquetWriter(folder / DECONTAMINATION_FILE, DECONTAMINATION_SCHEMA)
    try:
        for batch in reader:
            rows = batch.to_pylist()
            hits = _contamination(plan.contamination, rows)
            pending: dict[str, list[dict[str, Any]]] = {name: [] for name in plan.splits}
            found: list[dict[str, str]] = []
            for row, (prompt_sets, answer_sets) in zip(rows, hits, strict=True):
                if prompt_sets or answer_sets:
                    found += _listing(row["sample_id"], prompt_sets, answer_sets)
                    written.decontaminated.update(set(prompt_sets) | set(answer_sets))
                    written.decontaminated_rows += 1
                    continue
                messages = training_messages(
                    row["messages"],
                    row["conversation"],
                    row["response_text"] or "",
                    row["reasoning_text"],
                    plan.reasoning,
                    plan.reasoning_key,
                )
                split = split_of(row["family"], plan.splits)
                pending[split].append({"messages": messages, "sample_id": row["sample_id"]})
            for name, chunk in pending.items():
                if chunk:
                    writers[name].write(chunk)
                    written.rows[name] += len(chunk)
            if contaminated is not None and found:
                contaminated.write_table(pa.Table.from_pylist(found, DECONTAMINATION_SCHEMA))
            failpoint("export-hf:batch")
    finally:
        for writer in writers.values():
            writer.close()
        if contaminated is not None:
            contaminated.close()
    for name, writer in writers.items():
        written.files[name] = writer.publish()
    return written


def _contamination(
    contamination: Contamination | None, rows: list[dict[str, Any]]
) -> Sequence[tuple[list[str], list[str]]]:
    """Per row, the eval sets its prompt side and its answer side share an n-gram with."""
    if contamination is None:
        return [([], [])] * len(rows)
    prompts, answers = [], []
    for row in rows:
        turns = training_messages(
            row["messages"], row["conversation"], row["response_text"] or "", None, None
        )
        prompts.append("\n".join(t["content"] or "" for t in turns if t["role"] != "assistant"))
        answers.append("\n".join(t["content"] or "" for t in turns if t["role"] == "assistant"))
    return list(zip(contamination.matches(prompts), contamination.matches(answers), strict=True))


def _listing(
    sample_id: str, prompt_sets: list[str], answer_sets: list[str]
) -> list[dict[str, str]]:
    return [
        {"sample_id": sample_id, "eval_set": name, "side": side}
        for side, names in (("prompt", prompt_sets), ("answer", answer_sets))
        for name in sorted(set(names))
    ]
