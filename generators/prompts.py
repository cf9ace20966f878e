"""Prompt sources: JSONL, Parquet or CSV records — or a DuckDB query over an earlier output
(:mod:`.seeds`) — into :class:`Prompt` objects.

A record holds ``prompt`` (a string) or ``messages`` (a chat list), optionally an ``id``; every
other field is kept as metadata and offered to the Jinja template. Without an ``id`` the prompt id
is a hash of the final messages, so the same prompt keeps the same id across runs and files —
the basis of idempotent sample ids.

Errors name the file and the line (JSONL, CSV) or row (Parquet) at fault.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distillery.config import PromptsConfig
from distillery.errors import UserInputError
from distillery.storage.rows import LineageColumns

Message = dict[str, str]
_ROLES = {"system", "user", "assistant", "developer"}


@dataclass(frozen=True)
class Prompt:
    """One prompt, ready to send: its stable id, chat messages and the record's other fields.

    ``lineage`` holds the recipe columns of the rows it leads to (``recipe``, ``stage``,
    ``parent_sample_id``, ...): a prompt a recipe derived from an earlier answer carries them.
    """

    prompt_id: str
    messages: list[Message]
    meta: dict[str, Any] = field(default_factory=dict)
    lineage: LineageColumns = field(default_factory=LineageColumns)

    @property
    def text(self) -> str | None:
        """The single user message, when the prompt is one (stored in the ``prompt`` column)."""
        users = [m for m in self.messages if m["role"] == "user"]
        return users[0]["content"] if len(users) == 1 else None


def hash_messages(messages: list[Message]) -> str:
    canonical = json.dumps(messages, sort_keys=True, ensure_ascii=False)
    return hashlib.blake2b(canonical.encode(), digest_size=10).hexdigest()


def template_hash(config: PromptsConfig) -> str | None:
    """Fingerprint of the template and system prompt: lineage for how prompts were built."""
    if config.template is None and config.system is None:
        return None
    text = json.dumps([config.template, config.system])
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def records(path: Path, what: str = "prompts") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, record) pairs; location is what an error message points at.

    ``what`` names the file's role in the error for a file that cannot be opened; other
    readers of record files (evaluation sets, :mod:`storage.release.decontam`) pass their own.
    """
    suffix = path.suffix.lower()
    try:
        if suffix in {".jsonl", ".ndjson", ".json"}:
            for number, line in _text_lines(path):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserInputError(f"{where}: not valid JSON ({exc.msg})") from exc
                if not isinstance(record, dict):
                    raise UserInputError(f"{where}: expected a JSON object per line")
                yield where, record
        elif suffix == ".csv":
            lines = (line for _, line in _text_lines(path, split_cr=True))
            reader = csv.DictReader(lines)
            try:
                for number, row in enumerate(reader, start=2):
                    yield f"{path}:{number}", dict(row)
            except csv.Error as exc:
                raise UserInputError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from exc
        elif suffix in {".parquet", ".pq"}:
            number = 0
            for batch in _parquet_batches(path):
                for row in batch:
                    yield f"{path} row {number}", row
                    number += 1
        else:
            raise UserInputError(
                f"{path}: unsupported prompt file type (use .jsonl, .parquet, .csv)"
            )
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read {what} ({exc.strerror or exc})") from exc


#: Rows of a Parquet prompt file converted to Python at a time.
PARQUET_BATCH_ROWS = 4096


def _parquet_batches(path: Path) -> Iterator[list[dict[str, Any]]]:
    """A Parquet file's rows, a batch of Python dicts at a time (never the whole file)."""
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
            yield batch.to_pylist()
    except (pa.ArrowException, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserInputError(f"{path}: not a readable Parquet file ({first})") from exc


_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _text_lines(path: Path, split_cr: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, a leading byte-order mark dropped.

    Excel's "CSV UTF-8" and many Windows tools start files with a BOM; it is not part of the
    first record. Bytes that are not UTF-8 are an error naming the line and the byte offset in
    the file, raised when that line is reached — a text-mode file decodes in 8 KB chunks and
    would report neither. ``split_cr`` also ends lines at a lone ``\\r`` (old Mac files), as
    ``open(newline="")`` does for the csv module; a UTF-8 byte sequence never contains 0x0A or
    0x0D, so splitting bytes first is safe.
    """
    offset = 0
    number = 0
    with path.open("rb") as handle:
        for raw_line in handle:
            pieces = raw_line.splitlines(keepends=True) if split_cr else [raw_line]
            for raw in pieces:
                number += 1
                start = 0
                if offset == 0 and raw.startswith(_BOM):
                    start = len(_BOM)
                try:
                    text = raw[start:].decode("utf-8")
                except UnicodeDecodeError as exc:
                    at = offset + start + exc.start
                    hint = ""
                    if offset == 0 and raw.startswith(_UTF16_BOMS):
                        hint = "; the file is UTF-16: save it as UTF-8"
                    raise UserInputError(
                        f"{path}:{number}: not valid UTF-8 (byte 0x{raw[start + exc.start]:02x} "
                        f"at offset {at}{hint})"
                    ) from exc
                offset += len(raw)
                yield number, text


def _compile_template(config: PromptsConfig) -> jinja2.Template | None:
    if config.template is None:
        return None
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    try:
        return environment.from_string(config.template)
    except jinja2.TemplateSyntaxError as exc:
        raise UserInputError(f"prompts.template: {exc.message} (line {exc.lineno})") from exc


def _messages_of(
    where: str, record: dict[str, Any], template: jinja2.Template | None
) -> list[Message]:
    if template is not None:
        try:
            return [{"role": "user", "content": template.render(**record)}]
        except jinja2.TemplateError as exc:
            raise UserInputError(f"{where}: prompts.template: {exc}") from exc
    if "messages" in record and record["messages"] is not None:
        raw = record["messages"]
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise UserInputError(f"{where}: messages is not valid JSON") from exc
        if not isinstance(raw, list) or not raw:
            raise UserInputError(f"{where}: messages must be a non-empty list")
        messages: list[Message] = []
        for index, item in enumerate(raw):
            if (
                not isinstance(item, dict)
                or item.get("role") not in _ROLES
                or not isinstance(item.get("content"), str)
            ):
                raise UserInputError(
                    f"{where}: messages[{index}] needs a role ({'/'.join(sorted(_ROLES))}) "
                    "and a string content"
                )
            messages.append({"role": item["role"], "content": item["content"]})
        return messages
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserInputError(f"{where}: needs a non-empty 'prompt' string or a 'messages' list")
    return [{"role": "user", "content": prompt}]


def iter_prompts(config: PromptsConfig) -> Generator[Prompt]:
    """The prompts of a job, one at a time in file order, with repeats of a prompt skipped.

    Nothing but the current record is held, plus 24 bytes per prompt read to tell a repeat
    (skipped) from an id reused for other messages (an input error: their samples would be
    indistinguishable) — a run of a million prompts streams them (BENCHMARKS.md, "Memory of
    a run"). Each call reads the source again from the start, with the same result.
    """
    seen = _SeenIds()
    count = 0
    for where, prompt_id, messages, record in _identified(config):
        known = seen.add(prompt_id, messages)
        if known == "repeat":
            continue
        if known == "conflict":
            earlier = _first_location(config, prompt_id)
            raise UserInputError(f"{where}: id {prompt_id!r} already used at {earlier}")
        meta = {k: v for k, v in record.items() if k not in {"id", "prompt", "messages"}}
        yield Prompt(prompt_id=prompt_id, messages=messages, meta=meta)
        count += 1
        if config.limit is not None and count >= config.limit:
            break
    if not count:
        raise UserInputError(f"{config.source}: no prompts found")


def load_prompts(config: PromptsConfig) -> list[Prompt]:
    """All prompts of a job, in file order, with duplicates of the same prompt removed (see
    :func:`iter_prompts`; a run streams them instead of holding this list)."""
    return list(iter_prompts(config))


def check_prompts(config: PromptsConfig) -> int:
    """How many prompts the job has, reading them all and keeping none: every input error a run
    would meet, found before it starts."""
    return sum(1 for _ in iter_prompts(config))


class PromptSource:
    """A job's prompts as a run reads them: iterable any number of times, each time from the
    source (the file, or the seed query), never held whole. ``counted`` is how many prompts
    the last complete read found."""

    def __init__(self, config: PromptsConfig) -> None:
        self.config = config
        self.counted = 0

    def __iter__(self) -> Iterator[Prompt]:
        count = 0
        for prompt in iter_prompts(self.config):
            count += 1
            yield prompt
        self.counted = count

    def check_start(self) -> None:
        """Read up to the first prompt: a source that can not be read, or has no prompt, is an
        error before the run does anything else (later records are checked as they are read)."""
        with contextlib.closing(iter_prompts(self.config)) as prompts:
            next(prompts)


def _identified(config: PromptsConfig) -> Iterator[tuple[str, str, list[Message], dict[str, Any]]]:
    """(location, prompt id, final messages, record) of every record of the source."""
    template = _compile_template(config)
    if config.path is not None:
        source = records(config.path)
    else:
        from distillery.generators.seeds import query_records

        assert config.query is not None and config.data is not None  # PromptsConfig checks
        source = query_records(config.query, config.data)
    for where, record in source:
        messages = _messages_of(where, record, template)
        if config.system is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": config.system}, *messages]
        raw_id = record.get("id")
        prompt_id = str(raw_id) if raw_id not in (None, "") else hash_messages(messages)
        yield where, prompt_id, messages, record


def _first_location(config: PromptsConfig, prompt_id: str) -> str:
    """Where ``prompt_id`` was first read: read again from the source, as :class:`_SeenIds`
    keeps digests, not locations, and this runs only on the way to an input error."""
    return next(where for where, other, _, _ in _identified(config) if other == prompt_id)


class _SeenIds:
    """The prompt ids read so far, each with a digest of its messages: 24 bytes a prompt.

    Python objects for a million ids would cost ~150 MB. The latest ids sit in a dict; every
    ``_FOLD`` of them are merged into three parallel numpy arrays sorted by the id digest's
    first half, searched by bisection. Ids and messages are compared by digest (128 bits for
    the id, 64 for the messages): two sharing one is as unlikely as two sample ids colliding.
    """

    _FOLD = 65536

    def __init__(self) -> None:
        self._hi = np.empty(0, dtype=np.uint64)
        self._lo = np.empty(0, dtype=np.uint64)
        self._messages = np.empty(0, dtype=np.uint64)
        self._recent: dict[tuple[int, int], int] = {}

    def add(self, prompt_id: str, messages: list[Message]) -> Literal["new", "repeat", "conflict"]:
        """Record the id: ``new``, or read before with the same messages (``repeat``) or with
        other ones (``conflict``)."""
        digest = hashlib.blake2b(prompt_id.encode(), digest_size=16).digest()
        key = (int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little"))
        value = int(hash_messages(messages)[:16], 16)
        earlier = self._recent.get(key)
        if earlier is None:
            earlier = self._in_sorted(*key)
        if earlier is not None:
            return "repeat" if earlier == value else "conflict"
        self._recent[key] = value
        if len(self._recent) >= self._FOLD:
            self._fold()
        return "new"

    def _in_sorted(self, hi: int, lo: int) -> int | None:
        """The messages digest stored with the id digest (hi, lo), if it was folded in."""
        at = int(np.searchsorted(self._hi, np.uint64(hi)))
        while at < self._hi.size and int(self._hi[at]) == hi:
            if int(self._lo[at]) == lo:
                return int(self._messages[at])
            at += 1
        return None

    def _fold(self) -> None:
        keys = sorted(self._recent)
        hi = np.array([k[0] for k in keys], dtype=np.uint64)
        at = np.searchsorted(self._hi, hi)
        self._hi = np.insert(self._hi, at, hi)
        self._lo = np.insert(self._lo, at, np.array([k[1] for k in keys], dtype=np.uint64))
        values = np.array([self._recent[k] for k in keys], dtype=np.uint64)
        self._messages = np.insert(self._messages, at, values)
        self._recent.clear()
