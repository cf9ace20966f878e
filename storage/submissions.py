"""The journal of a run's provider submissions: ``kill -9`` at any point loses nothing and buys
nothing twice.

A *submission* is one request file given to a provider's batch API (the word "batch" already
names a Prefect task's prompt batch). It is paid for once the provider has it, and its answers
arrive up to a day later, maybe in another process: so each one is written down before it is
made and after every step, under the output next to the run's partitions::

    OUTPUT/submissions/run_id=<R>/<submission_id>.json            the record (one step at a time)
    OUTPUT/submissions/run_id=<R>/<submission_id>.requests.jsonl  the provider's request lines
    OUTPUT/submissions/run_id=<R>/<submission_id>.items.jsonl     ours: what rebuilds each row

The protocol, in order:

1. :meth:`SubmissionWriter.write` streams request lines and items into the two ``.jsonl``
   files, cutting a new submission before either cap (requests, bytes) would be exceeded;
2. the files are fsynced (object storage: the streamed upload completes; the object appears
   whole or not at all), and only then
3. the record is saved as ``prepared`` — replaced atomically (temp + fsync + rename; one PUT).
   Every later step (``uploaded`` → ``created`` → ``ended`` → ``collected``, or ``abandoned``)
   is one more atomic replace of the record, by :meth:`Journal.advance`.

So a record never names files that are not complete. A crash before 3 leaves files without a
record: nothing was sent, the ids are planned again, and :meth:`Journal.repair` deletes the
files. A crash after 3 leaves a record at the step it reached, which a resume takes from there
(uploaded again if it never got a file id, adopted through the provider's listing if it was
created just before the crash — that is the flow's part). Every step is killed in turn by
``tests/test_submissions_journal.py``.

**Concurrency**: the journal takes no lock of its own. It relies on the run's writer lock
(:mod:`distillery.storage.run_lock`), which every process writing a run holds: one writer per
run, so numbering submissions and repairing torn files cannot race another writer.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, NamedTuple, TypedDict, cast

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from distillery.errors import FatalRunError
from distillery.storage.done_ids import DoneIds
from distillery.storage.failpoints import failpoint
from distillery.storage.location import Location, as_location, fsync_dir
from distillery.storage.spool import spool_root

if TYPE_CHECKING:
    from distillery.generators.batch import WorkItem
    from distillery.generators.prompts import Prompt
    from distillery.generators.providers.base import SubmissionLimits

TABLE_DIR = "submissions"
Step = Literal["prepared", "uploaded", "created", "ended", "collected", "abandoned"]
#: The steps in the order a submission takes them; ``abandoned`` may follow any but the last.
STEPS: tuple[Step, ...] = ("prepared", "uploaded", "created", "ended", "collected")
#: Steps after which a submission's samples are settled: no longer in flight.
SETTLED: frozenset[Step] = frozenset({"collected", "abandoned"})
_RECORD = re.compile(r"^(s\d{5}-[0-9a-f]{8})\.json$")
_FILES = re.compile(r"^(s\d{5}-[0-9a-f]{8})\.(?:requests|items)\.jsonl$")
_NUMBER = re.compile(r"^s(\d{5})-")


class JournalError(FatalRunError):
    """A journal file is unreadable or contradicts the protocol: one line naming the file."""


class SubmissionRecord(BaseModel):
    """What is known of one submission, as saved after its latest step."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    submission_id: str = Field(pattern=r"^s\d{5}-[0-9a-f]{8}$")
    run_id: str
    teacher: str
    provider: str
    model: str
    step: Step
    requests: int = Field(ge=1)
    bytes: int = Field(ge=1)
    #: The budget reserved for it when it was made (batch prices, from the items' estimates).
    estimated_cost_usd: float = Field(ge=0)
    file_id: str | None = None
    provider_batch_id: str | None = None
    #: The provider's own word for the state (``in_progress``, ``ended``, ``JOB_STATE_…``).
    provider_state: str | None = None
    #: The provider's counts as it reports them (succeeded, errored, expired, ...).
    counts: dict[str, int] = Field(default_factory=dict)
    error: str | None = None
    #: Set just before the provider is asked to create the batch (unix seconds, by the clock
    #: the provider's creation times are compared with; kept through later attempts): a
    #: record holding it may have a batch the crash kept it from naming, which a resume looks
    #: for (``SubmissionApi.find``) before creating one.
    create_started_at: float | None = None
    #: When each step was reached (UTC).
    timestamps: dict[Step, datetime]

    @model_validator(mode="after")
    def _consistent(self) -> SubmissionRecord:
        if self.step not in self.timestamps:
            raise ValueError(f"timestamps: no time for its step {self.step!r}")
        if self.step in ("created", "ended", "collected") and not self.provider_batch_id:
            raise ValueError(f"provider_batch_id: required at step {self.step!r}")
        if self.step == "uploaded" and not self.file_id:
            raise ValueError("file_id: required at step 'uploaded'")
        if self.step == "abandoned" and not self.error:
            raise ValueError("error: required at step 'abandoned' (why it was given up)")
        return self

    @property
    def settled(self) -> bool:
        """Collected or abandoned: its samples are no longer in flight."""
        return self.step in SETTLED


class SubmissionItem(BaseModel):
    """Our side of one request: what rebuilds its row when the answer comes.

    ``custom_id`` is the sample id. The prompt is kept as the flow's
    :class:`~distillery.generators.prompts.Prompt` holds it; ``meta`` values JSON cannot hold
    are kept as ``str()`` of them, which is what the row's ``prompt_meta`` column stores anyway.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    custom_id: str
    prompt_id: str
    sample_index: int
    teacher: str
    route: str = "all"
    route_step: int = 0
    messages: list[dict[str, str]]
    meta: dict[str, Any] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)
    #: The fingerprint of the request body sent (``client.request_hash``), for the row.
    request_hash: str | None = None

    @classmethod
    def of(cls, work: WorkItem, request_hash: str | None = None) -> SubmissionItem:
        """The item of a flow's work item (its sample id becomes the custom id)."""
        return cls(
            custom_id=work.sample_id,
            prompt_id=work.prompt.prompt_id,
            sample_index=work.sample_index,
            teacher=work.teacher.name,
            route=work.route,
            route_step=work.route_step,
            messages=[dict(m) for m in work.prompt.messages],
            meta=dict(work.prompt.meta),
            lineage=dict(work.prompt.lineage),
            request_hash=request_hash,
        )

    def prompt(self) -> Prompt:
        """The prompt back, as the flow's model holds it."""
        # Imported here: storage sits below generators, which imports it.
        from distillery.generators.prompts import Prompt
        from distillery.storage.rows import LineageColumns

        return Prompt(
            self.prompt_id, list(self.messages), dict(self.meta), cast(LineageColumns, self.lineage)
        )

    def line(self) -> bytes:
        return _dumps(self.model_dump()) + b"\n"


class Entry(NamedTuple):
    """One request for :meth:`SubmissionWriter.write`: the exact line the provider gets (the
    writer adds the newline), our item, and the request's estimated cost at batch prices."""

    custom_id: str
    line: bytes
    item: SubmissionItem
    estimated_cost_usd: float = 0.0


class SubmissionSummary(TypedDict):
    """One row of a run's ``submissions`` listing (the CLI command, the Prefect artifact)."""

    submission_id: str
    teacher: str
    provider: str
    model: str
    provider_batch_id: str | None
    step: Step
    provider_state: str | None
    counts: dict[str, int]
    requests: int
    bytes: int
    estimated_cost_usd: float
    age_s: float
    step_age_s: float
    error: str | None


@dataclass(frozen=True)
class Repaired:
    """What :meth:`Journal.repair` deleted: torn files no record names, and temporaries."""

    orphan_files: list[str]
    temporaries: list[str]


class Journal:
    """The submissions of one run in ``output`` (a local directory or an ``s3://`` prefix).

    ``clock`` gives the step timestamps (injectable, so tests decide ages).
    """

    def __init__(
        self,
        output: Path | str | Location,
        run_id: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.output = as_location(output)
        self.run_id = run_id
        self.directory = self.output.child(TABLE_DIR, f"run_id={run_id}")
        self.clock = clock

    # --- records -----------------------------------------------------------------------------

    def record_location(self, submission_id: str) -> Location:
        return self.directory.child(f"{submission_id}.json")

    def requests_location(self, submission_id: str) -> Location:
        """The request lines, exactly the bytes uploaded to the provider."""
        return self.directory.child(f"{submission_id}.requests.jsonl")

    def items_location(self, submission_id: str) -> Location:
        return self.directory.child(f"{submission_id}.items.jsonl")

    def records(self) -> list[SubmissionRecord]:
        """Every record of the run, in the order the submissions were made."""
        ids = sorted(m.group(1) for n in self.directory.names() if (m := _RECORD.match(n)))
        return [self.read(submission_id) for submission_id in ids]

    def read(self, submission_id: str) -> SubmissionRecord:
        """One record; :class:`JournalError` (one line, naming the file) if it is not valid."""
        location = self.record_location(submission_id)
        content = location.read_bytes()
        if content is None:
            raise JournalError(f"{location}: no such submission record")
        try:
            record = SubmissionRecord.model_validate_json(content)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"]) or "record"
            raise JournalError(
                f"{location}: not a valid submission record ({where}: {error['msg']})"
            ) from None
        if record.submission_id != submission_id or record.run_id != self.run_id:
            raise JournalError(
                f"{location}: holds submission {record.submission_id!r} of run "
                f"{record.run_id!r}, not {submission_id!r} of run {self.run_id!r}"
            )
        return record

    def save(self, record: SubmissionRecord) -> None:
        """Replace the record atomically: a reader sees the previous step or this one."""
        self.directory.ensure_dir()
        content = record.model_dump_json(indent=1).encode()
        self.record_location(record.submission_id).replace(content)
        failpoint(f"submissions:saved-{record.step}")

    def advance(self, record: SubmissionRecord, step: Step, **changes: Any) -> SubmissionRecord:
        """Save ``record`` at ``step`` with ``changes`` (file id, provider batch id, state,
        counts, error); returns the saved record. A step never goes back; staying at the same
        step updates the facts (polling) and keeps its time. Steps may be skipped (a provider
        without an upload goes from ``prepared`` to ``created``)."""
        if record.settled:
            raise JournalError(
                f"{self.record_location(record.submission_id)}: already {record.step}, "
                f"cannot become {step}"
            )
        if step != "abandoned" and STEPS.index(step) < STEPS.index(record.step):
            raise JournalError(
                f"{self.record_location(record.submission_id)}: at {record.step}, "
                f"cannot go back to {step}"
            )
        timestamps = dict(record.timestamps)
        timestamps.setdefault(step, self.clock())
        data = {**record.model_dump(), **changes, "step": step, "timestamps": timestamps}
        saved = SubmissionRecord.model_validate(data)
        self.save(saved)
        return saved

    # --- writing -----------------------------------------------------------------------------

    def new_submission(
        self, teacher: str, provider: str, model: str, limits: SubmissionLimits
    ) -> SubmissionWriter:
        """A writer of one teacher's requests into as many submissions as its caps need."""
        if (limits.max_requests is not None and limits.max_requests < 1) or limits.max_bytes < 1:
            raise ValueError(f"submission limits must be positive, not {limits}")
        return SubmissionWriter(self, teacher, provider, model, limits)

    def _next_number(self) -> int:
        numbers = [int(m.group(1)) for n in self.directory.names() if (m := _NUMBER.match(n))]
        return max(numbers, default=-1) + 1

    # --- reading items -----------------------------------------------------------------------

    def items_of(self, submission_id: str) -> Iterator[SubmissionItem]:
        """The submission's items in the order they were written, a line at a time."""
        location = self.items_location(submission_id)
        for number, line in enumerate(_lines(location), start=1):
            yield _item(location, number, line)

    def open_sample_ids(self) -> DoneIds:
        """The custom ids (sample ids) of every submission neither collected nor abandoned:
        paid for or about to be, so a resume must not plan them again.

        Held as :class:`~distillery.storage.done_ids.DoneIds` (32 bytes an id, sorted): the
        ids of one submission at a time are a list, bounded by its request cap."""
        parts = [
            np.array(list(self._custom_ids(record.submission_id)), dtype="S")
            for record in self.records()
            if not record.settled
        ]
        parts = [part for part in parts if part.size]
        return DoneIds(np.concatenate(parts) if parts else None)

    def _custom_ids(self, submission_id: str) -> Iterator[str]:
        location = self.items_location(submission_id)
        for number, line in enumerate(_lines(location), start=1):
            try:
                yield str(orjson.loads(line)["custom_id"])
            except (ValueError, KeyError, TypeError):
                raise JournalError(f"{location}:{number}: not a submission item") from None

    @contextlib.contextmanager
    def local_requests(self, submission_id: str) -> Iterator[Path]:
        """The request lines as a local file, for an upload: the file itself when the output
        is local, else a copy in the spool, deleted afterwards."""
        location = self.requests_location(submission_id)
        if location.local_path is not None:
            yield location.local_path
            return
        path = self._local_copy(location)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def lookup(self, submission_id: str) -> ItemLookup:
        """custom id -> item of one submission, for results that come in any order.

        Kept on disk: an index of ids and byte offsets (~40 bytes an item) over a local copy of
        the items file (the file itself when the output is local), so a submission of 100,000
        long prompts costs 4 MB, not its prompts. Use it as a context manager (it holds the
        file open)."""
        location = self.items_location(submission_id)
        if location.local_path is not None:
            return ItemLookup(location.local_path, str(location))
        return ItemLookup(self._local_copy(location), str(location), delete=True)

    def _local_copy(self, location: Location) -> Path:
        """A copy of a journal file of object storage in the run's spool (the caller deletes
        it), streamed a MiB at a time."""
        cache = spool_root(self.output) / TABLE_DIR / f"run_id={self.run_id}"
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / location.name
        source = location.filesystem.open_input_stream(location.fs_path)
        with source, path.open("wb") as target:
            shutil.copyfileobj(cast(IO[bytes], source), target, 1 << 20)
        return path

    # --- after a crash -----------------------------------------------------------------------

    def repair(self) -> Repaired:
        """Delete what a crash left that no record names: request and items files written
        before their record was saved (nothing was sent), and torn record temporaries. A record
        is never deleted. Only run it while holding the run's writer lock: a submission being
        written looks exactly like one whose writer died."""
        names = self.directory.names()
        recorded = {m.group(1) for n in names if (m := _RECORD.match(n))}
        orphans = sorted(
            n for n in names if (m := _FILES.match(n)) is not None and m.group(1) not in recorded
        )
        temporaries = sorted(n for n in names if n.startswith(".") and n.endswith(".tmp"))
        for name in (*orphans, *temporaries):
            self.directory.child(name).delete()
        for submission_id in sorted(recorded):
            record = self.read(submission_id)
            needed = [] if record.settled else [self.items_location(submission_id)]
            if record.step == "prepared":
                needed.append(self.requests_location(submission_id))
            for location in needed:
                if location.name not in names:
                    raise JournalError(f"{location}: missing, but submission is {record.step}")
        return Repaired(orphans, temporaries)

    # --- listing -----------------------------------------------------------------------------

    def summary(self, now: datetime | None = None) -> list[SubmissionSummary]:
        return summarise(self.records(), now or self.clock())


def summarise(records: Iterable[SubmissionRecord], now: datetime) -> list[SubmissionSummary]:
    """Rows of a ``submissions`` listing: ``age_s`` since it was prepared, ``step_age_s`` since
    its latest step."""
    return [
        {
            "submission_id": r.submission_id,
            "teacher": r.teacher,
            "provider": r.provider,
            "model": r.model,
            "provider_batch_id": r.provider_batch_id,
            "step": r.step,
            "provider_state": r.provider_state,
            "counts": dict(r.counts),
            "requests": r.requests,
            "bytes": r.bytes,
            "estimated_cost_usd": r.estimated_cost_usd,
            "age_s": (now - r.timestamps["prepared"]).total_seconds(),
            "step_age_s": (now - r.timestamps[r.step]).total_seconds(),
            "error": r.error,
        }
        for r in records
    ]


@dataclass(frozen=True)
class SubmissionWriter:
    """Streams one teacher's requests into submissions no bigger than its limits."""

    journal: Journal
    teacher: str
    provider: str
    model: str
    limits: SubmissionLimits

    def write(self, entries: Iterable[Entry]) -> Iterator[SubmissionRecord]:
        """Write ``entries`` and yield each submission's record once it is saved as
        ``prepared``. Nothing is held but the line at hand; a line that fits no submission
        (bigger than ``max_bytes``) is a ValueError naming its custom id."""
        current: _Open | None = None
        try:
            for entry in entries:
                line = entry.line if entry.line.endswith(b"\n") else entry.line + b"\n"
                if b"\n" in line[:-1]:
                    raise ValueError(f"request {entry.custom_id}: a line break inside its line")
                if entry.item.custom_id != entry.custom_id:
                    raise ValueError(
                        f"request {entry.custom_id}: its item is {entry.item.custom_id!r}"
                    )
                if len(line) > self.limits.max_bytes:
                    raise ValueError(
                        f"request {entry.custom_id}: {len(line)} bytes, more than a "
                        f"submission may hold ({self.limits.max_bytes})"
                    )
                if current is not None and not current.fits(line, self.limits):
                    full, current = current, None
                    yield self._close(full)
                if current is None:
                    current = self._open()
                current.add(line, entry)
                failpoint("submissions:line")
            if current is not None:
                last, current = current, None
                yield self._close(last)
        finally:
            if current is not None:  # an error: the files stay torn and recordless for repair
                current.abort()

    def _open(self) -> _Open:
        directory = self.journal.directory
        directory.ensure_dir()
        number = self.journal._next_number()
        submission_id = f"s{number:05d}-{secrets.token_hex(4)}"
        return _Open(
            submission_id,
            _Sink(self.journal.requests_location(submission_id)),
            _Sink(self.journal.items_location(submission_id)),
        )

    def _close(self, current: _Open) -> SubmissionRecord:
        current.requests.finish()
        current.items.finish()
        if self.journal.directory.local_path is not None:
            fsync_dir(self.journal.directory.local_path)
        failpoint("submissions:files-synced")
        record = SubmissionRecord(
            submission_id=current.submission_id,
            run_id=self.journal.run_id,
            teacher=self.teacher,
            provider=self.provider,
            model=self.model,
            step="prepared",
            requests=current.count,
            bytes=current.bytes,
            estimated_cost_usd=current.cost,
            timestamps={"prepared": self.journal.clock()},
        )
        self.journal.save(record)
        return record


class _Open:
    """A submission being written: its two files and what they hold so far."""

    def __init__(self, submission_id: str, requests: _Sink, items: _Sink) -> None:
        self.submission_id = submission_id
        self.requests = requests
        self.items = items
        self.count = 0
        self.bytes = 0
        self.cost = 0.0

    def fits(self, line: bytes, limits: SubmissionLimits) -> bool:
        requests_fit = limits.max_requests is None or self.count + 1 <= limits.max_requests
        return requests_fit and self.bytes + len(line) <= limits.max_bytes

    def add(self, line: bytes, entry: Entry) -> None:
        self.requests.write(line)
        self.items.write(entry.item.line())
        self.count += 1
        self.bytes += len(line)
        self.cost += entry.estimated_cost_usd

    def abort(self) -> None:
        for sink in (self.requests, self.items):
            with contextlib.suppress(OSError):
                sink.abandon()


class _Sink:
    """A file written front to back: locally straight to its name, fsynced when finished; in
    object storage a streamed (multipart) upload that appears whole when finished."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self._handle: IO[bytes]
        if location.local_path is not None:
            self._handle = location.local_path.open("wb")
        else:
            stream = location.filesystem.open_output_stream(location.fs_path)
            self._handle = cast(IO[bytes], io.BufferedWriter(cast(io.RawIOBase, stream), 1 << 20))

    def write(self, data: bytes) -> None:
        self._handle.write(data)

    def finish(self) -> None:
        self._handle.flush()
        if self.location.local_path is not None:
            os.fsync(self._handle.fileno())
        self._handle.close()

    def abandon(self) -> None:
        # Closing an object-store stream would complete its upload: still recordless, so
        # repair deletes it (pyarrow offers no abort).
        self._handle.close()


class ItemLookup:
    """custom id -> item of one submission, from a sorted index of ids and byte offsets."""

    def __init__(self, path: Path, name: str, delete: bool = False) -> None:
        self.path = path
        self.name = name
        self._delete = delete
        ids: list[bytes] = []
        offsets: list[int] = []
        with path.open("rb") as handle:
            offset = 0
            for number, line in enumerate(handle, start=1):
                ids.append(_item(self.name, number, line).custom_id.encode())
                offsets.append(offset)
                offset += len(line)
        keys = np.array(ids, dtype="S")
        order = np.argsort(keys, kind="stable")
        self._ids = keys[order]
        self._offsets = np.array(offsets, dtype=np.int64)[order]
        self._handle: IO[bytes] | None = path.open("rb")

    def __enter__(self) -> ItemLookup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()
        if self._delete:
            self.path.unlink(missing_ok=True)

    def position(self, custom_id: str) -> int | None:
        """Where ``custom_id`` is in the index (0 .. ``len - 1``; None if absent): a caller
        marking the ids it has seen needs a byte an item, not a set of strings."""
        return self._at(custom_id)

    def _at(self, custom_id: str) -> int | None:
        key = custom_id.encode()
        at = int(np.searchsorted(self._ids, key))
        return at if at < self._ids.size and bytes(self._ids[at]) == key else None

    def __contains__(self, custom_id: object) -> bool:
        return isinstance(custom_id, str) and self._at(custom_id) is not None

    def __len__(self) -> int:
        return int(self._ids.size)

    def get(self, custom_id: str) -> SubmissionItem | None:
        """The item of ``custom_id``, or None if the submission has no such request (a
        provider's line we never sent)."""
        at = self._at(custom_id)
        if at is None:
            return None
        assert self._handle is not None, "lookup already closed"
        self._handle.seek(int(self._offsets[at]))
        return _item(self.name, None, self._handle.readline())

    def __getitem__(self, custom_id: str) -> SubmissionItem:
        item = self.get(custom_id)
        if item is None:
            raise KeyError(custom_id)
        return item


def _lines(location: Location) -> Iterator[bytes]:
    """The lines of a journal file, read a buffer at a time."""
    try:
        if location.local_path is not None:
            handle: IO[bytes] = location.local_path.open("rb")
        else:
            stream = location.filesystem.open_input_stream(location.fs_path)
            handle = cast(IO[bytes], io.BufferedReader(cast(io.RawIOBase, stream), 1 << 20))
    except FileNotFoundError:
        raise JournalError(f"{location}: missing") from None
    with handle:
        yield from handle


def _item(where: object, number: int | None, line: bytes) -> SubmissionItem:
    try:
        return SubmissionItem.model_validate_json(line)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "item"
        at = f"{where}:{number}" if number is not None else str(where)
        raise JournalError(f"{at}: not a submission item ({field}: {error['msg']})") from None


# Dates and dataclasses go to ``str()`` too, as ``json`` would take them (orjson's own forms
# differ: ``isoformat`` has a "T" where ``str`` has a space).
_PASSTHROUGH = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _dumps(value: Mapping[str, Any]) -> bytes:
    """orjson as the spool uses it; ``str()`` of what JSON cannot hold, as ``prompt_meta``
    stores it (non-string keys and huge integers fall back to ``json``)."""
    try:
        return orjson.dumps(value, default=str, option=_PASSTHROUGH)
    except TypeError:
        return json.dumps(value, default=str, ensure_ascii=False).encode()
