"""Training-ready exports of a dataset: chat JSONL for supervised fine-tuning.

Each kept sample becomes one line ``{"messages": [...prompt turns, assistant], "sample_id"}``
(the id leads back to the sample's lineage); a conversation's line holds all its turns. With
reasoning, the teacher's trace goes where common trainers and chat templates look for it:

- ``think``: inside the assistant's content, ``<think>\\n{trace}\\n</think>\\n\\n{answer}``
  (DeepSeek-R1 / Qwen3-style SFT data);
- ``field``: a separate key of the assistant message (``reasoning`` by default;
  ``reasoning_content`` for Qwen3's chat template, ``thinking`` for gpt-oss's).

A sample whose trace was redacted or hidden, or that has none, cannot teach reasoning: it is
skipped and counted by its ``reasoning_visibility``, never exported half-empty.
The dataset is read through the catalog, so only committed shards are exported.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb

from distillery.errors import UserInputError
from distillery.storage.catalog import open_catalog
from distillery.storage.location import Location

ReasoningStyle = Literal["think", "field"]
#: Visibilities whose text is a usable trace (a summary is one, though not the raw thinking).
EXPORTABLE = ("full", "summary")


@dataclass
class ExportResult:
    written: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


def assistant_message(
    answer: str,
    trace: str | None,
    style: ReasoningStyle | None,
    key: str = "reasoning",
) -> dict[str, str]:
    """The assistant turn of one sample, with its trace in the chosen place (or none)."""
    if trace is None or style is None:
        return {"role": "assistant", "content": answer}
    if style == "think":
        return {"role": "assistant", "content": f"<think>\n{trace}\n</think>\n\n{answer}"}
    return {"role": "assistant", "content": answer, key: trace}


def training_messages(
    messages: list[dict[str, Any]] | None,
    conversation: list[dict[str, Any]] | None,
    answer: str,
    trace: str | None,
    style: ReasoningStyle | None,
    key: str = "reasoning",
) -> list[dict[str, Any]]:
    """The chat of one sample as trainers read it: its prompt turns, then the answer.

    A conversation (recipe ``conversation``) is the whole chat, whose last assistant turn is
    the answer (``response_text``): every turn is kept, the trace goes on that last one.
    """
    turns = conversation or messages or []
    if conversation and conversation[-1]["role"] == "assistant":
        turns = conversation[:-1]
    shaped: list[dict[str, Any]] = [{"role": m["role"], "content": m["content"]} for m in turns]
    shaped.append(assistant_message(answer, trace, style, key))
    return shaped


def select_samples(
    con: duckdb.DuckDBPyConnection, columns: str, where: str | None, rest: str = ""
) -> list[tuple[Any, ...]]:
    """``SELECT columns FROM samples [WHERE where] rest``: the rows an export reads, filtered
    by the user's ``--where`` (whose SQL error becomes their one-line error)."""
    sql = f"SELECT {columns} FROM samples" + (f" WHERE {where}" if where else "") + f" {rest}"
    try:
        return con.execute(sql).fetchall()
    except duckdb.Error as exc:
        raise UserInputError(f"--where {where!r}: {str(exc).splitlines()[0]}") from exc


def export_chat_jsonl(
    dataset: Path | str | Location,
    target: Path,
    *,
    reasoning: ReasoningStyle | None = None,
    reasoning_key: str = "reasoning",
    where: str | None = None,
) -> ExportResult:
    """Write ``target`` from the dataset's ``samples``; ``reasoning`` None exports plain chat.

    The file is written next to ``target`` and renamed into place, so a failed export never
    leaves a truncated file behind.
    """
    if not target.parent.is_dir():
        raise UserInputError(f"--output {target}: directory {target.parent} does not exist")
    con = open_catalog(dataset)
    columns = {row[0] for row in con.execute("DESCRIBE samples").fetchall()}
    trace_columns = (
        "reasoning_text, reasoning_visibility"
        if "reasoning_visibility" in columns
        else "NULL AS reasoning_text, NULL AS reasoning_visibility"
    )
    rows = select_samples(
        con,
        f"sample_id, messages, conversation, response_text, {trace_columns}",
        where,
        "ORDER BY run_id, prompt_id, teacher_name, sample_index",
    )
    result = ExportResult()
    partial = target.with_name(f".{target.name}.partial")
    with partial.open("w", encoding="utf-8") as handle:
        for sample_id, messages, conversation, answer, trace, shown in rows:
            if reasoning is not None and (shown or "none") not in EXPORTABLE:
                result.skipped[shown or "none"] += 1
                continue
            turns = training_messages(
                messages, conversation, answer or "", trace, reasoning, reasoning_key
            )
            line = {"messages": turns, "sample_id": sample_id}
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
            result.written += 1
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(target)
    return result
