"""The batch APIs' state: uploaded files and batch jobs, on a compressed and injectable clock.

A provider's batch runs for up to 24 hours; here it runs for ``batch_seconds`` (the compressed
24-hour window). No timer drives a job: its phase and progress are a pure function of the
clock, computed when a client looks, so a test that injects its own clock moves batches along
without sleeping, and an idle emulator does no batch work at all. The one piece of background
work is writing an ended job's results, started by the first look after its end (the job shows
as finalizing, or cancelling, until they are written: :meth:`BatchStore.settle`).

The timeline of a job created at ``t0`` with window ``W``:

- ``[t0, t0 + 0.1 W)`` validating (OpenAI), pending (Gemini); a bad input ends here, failed;
- ``[t0 + 0.1 W, t0 + 0.9 W)`` in progress: lines finish at an even pace, in a shuffled order
  (the order results are written in: never the input order, as the providers warn);
- ``[t0 + 0.9 W, t0 + W)`` finalizing;
- ``t0 + W`` (``expires_at``) the end: completed, or, for a job drawn to expire
  (``batch_expire_rate``), expired with the first half of its lines done.

A cancel at ``tc`` freezes the lines done by then; the job is cancelling for ``0.1 W`` more,
then cancelled. Each line's fate apart from time (a per-line error, drawn like an online fault
with ``fault_rate``) is decided when the job is created, so a run is reproducible.

Files live on disk in a temporary directory (uploads can be 2 GB, results as large), and so do
the jobs' request bodies (:class:`Spool`): the emulator's memory holds only per-line
bookkeeping, measured at under 0.4 KB a line.
"""

from __future__ import annotations

import asyncio
import math
import random
import shutil
import string
import tempfile
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from distillery.emulator.completion import Answer, ChatRequest, complete
from distillery.emulator.faults import FLAGGED, HTTP_ERRORS, Fault, FaultPicker, flag
from distillery.emulator.options import EmulatorOptions

#: Wall-clock seconds (unix time), the unit every provider reports its timestamps in.
Clock = Callable[[], float]

# Shares of the window (see the module docstring).
VALIDATING_SHARE = 0.1
FINALIZING_SHARE = 0.9
CANCELLING_SHARE = 0.1
#: Share of its lines an expiring job has done when it expires.
EXPIRED_DONE_SHARE = 0.5

_ids = random.Random()  # ids need uniqueness, not secrecy


def new_id(prefix: str, length: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    """A fresh id in a provider's style, e.g. ``new_id("batch_", 24)``."""
    return prefix + "".join(_ids.choices(alphabet, k=length))


class Phase(Enum):
    """Where a job is; each provider names these its own way."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Phase.FAILED, Phase.COMPLETED, Phase.EXPIRED, Phase.CANCELLED})


class Outcome(Enum):
    """How one line ended."""

    SUCCEEDED = "succeeded"  # an answer (a flagged one included: it is a 200)
    ERRORED = "errored"  # an error response: invalid request or an injected fault
    EXPIRED = "expired"  # not done when the job expired
    CANCELED = "canceled"  # not done when the job was cancelled


@dataclass(frozen=True, slots=True)
class Rendered:
    """An HTTP answer as a batch result carries it: status, JSON body and request id."""

    status: int
    body: Any
    request_id: str


#: Where a request's JSON body sits in its job's :class:`Spool`: (offset, length).
Spooled = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Line:
    """One request of a job: its id, where its body is spooled or why it is invalid, and its
    fault. The parsed request is not kept: at ~1 KB a request it would hold 200 MB for
    200,000 of them, so the body is read and parsed again when the answer is written."""

    custom_id: str
    spooled: Spooled | None
    #: The error response of an invalid request (then ``spooled`` is None).
    invalid: Rendered | None = None
    fault: Fault | None = None


class Spool:
    """An append-only file of a job's request bodies, written while the job is parsed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = path.open("wb")
        self._size = 0

    def add(self, raw: bytes) -> Spooled:
        self._handle.write(raw)
        self._size += len(raw)
        return self._size - len(raw), len(raw)

    def close(self) -> None:
        self._handle.close()


@dataclass(frozen=True, slots=True)
class Result:
    """One line's result, in the provider-neutral form the provider modules render."""

    index: int
    line: Line
    outcome: Outcome
    #: The request (None for an invalid one or one never done) and, if it succeeded, its answer.
    chat: ChatRequest | None = None
    answer: Answer | None = None
    #: The fault an errored line got (None for an invalid request: see ``line.invalid``).
    fault: Fault | None = None


@dataclass(eq=False)
class Job:
    """One batch: its lines and schedule; everything else (status, counts) derives from them."""

    id: str
    lines: list[Line]
    created: float
    window_s: float
    #: Completion order: line indices as they finish (and as results are written).
    order: list[int]
    expires: bool = False
    #: Why validation failed (provider-shaped); non-empty: the job ends failed.
    problems: list[dict[str, Any]] = field(default_factory=list)
    cancelled_at: float | None = None
    #: Provider-specific facts: endpoint, metadata, model, display name, output file ids, ...
    info: dict[str, Any] = field(default_factory=dict)
    #: The request bodies (see :class:`Line`) and how to parse one, as when the job was made.
    spool: Path | None = None
    read: Callable[[bytes], ChatRequest] | None = None
    #: Set once the results have been written (see :meth:`BatchStore.settle`).
    settled: bool = False
    _writing: asyncio.Task[None] | None = None

    @property
    def started(self) -> float:
        return self.created + VALIDATING_SHARE * self.window_s

    @property
    def finalizing(self) -> float:
        return self.created + FINALIZING_SHARE * self.window_s

    @property
    def deadline(self) -> float:
        """When it expires (``expires_at``): the end of its compressed 24-hour window."""
        return self.created + self.window_s

    @property
    def ended(self) -> float | None:
        """When processing ended (or will end), whatever the reason."""
        if self.problems:
            return self.started
        if self.cancelled_at is not None:
            return min(self.cancelled_at + CANCELLING_SHARE * self.window_s, self.deadline)
        return self.deadline

    def phase(self, now: float) -> Phase:
        """What a client sees at ``now``: the :meth:`scheduled` phase, except that an ended
        job is still finalizing (or cancelling) until its results are written."""
        phase = self.scheduled(now)
        if phase in TERMINAL and phase is not Phase.FAILED and not self.settled:
            return Phase.CANCELLING if self.cancelled_at is not None else Phase.FINALIZING
        return phase

    def scheduled(self, now: float) -> Phase:
        """The phase the clock puts the job in (see the module docstring)."""
        if self.problems:
            return Phase.VALIDATING if now < self.started else Phase.FAILED
        if self.cancelled_at is not None:
            ended = self.ended
            return Phase.CANCELLING if ended is not None and now < ended else Phase.CANCELLED
        if now < self.started:
            return Phase.VALIDATING
        if now < self.finalizing:
            return Phase.IN_PROGRESS
        if now < self.deadline:
            return Phase.FINALIZING
        return Phase.EXPIRED if self.expires else Phase.COMPLETED

    def done(self, now: float) -> int:
        """How many lines have finished (answered or errored) by ``now``."""
        if self.problems:
            return 0
        if self.cancelled_at is not None:
            now = min(now, self.cancelled_at)
        total = len(self.lines)
        cap = math.floor(total * EXPIRED_DONE_SHARE) if self.expires else total
        span = self.finalizing - self.started
        share = 1.0 if span <= 0 else (now - self.started) / span
        return min(cap, max(0, math.floor(total * min(share, 1.0))))

    def errored(self, index: int) -> bool:
        """Whether line ``index`` ends with an error response when it is done."""
        line = self.lines[index]
        return line.invalid is not None or (line.fault is not None and line.fault not in FLAGGED)

    def counts(self, now: float) -> tuple[int, int]:
        """(succeeded, errored) among the lines done by ``now``."""
        done = self.order[: self.done(now)]
        failed = sum(1 for index in done if self.errored(index))
        return len(done) - failed, failed

    def results(self, now: float, seed: int, input_order: bool = False) -> Iterator[Result]:
        """Every line's result once terminal: in completion order (lines never done last), or
        in ``input_order`` (Gemini's).

        Generates each answer as it goes: the caller writes them out without holding them all.
        """
        phase = self.scheduled(now)
        if phase not in TERMINAL or phase is Phase.FAILED:
            return
        done = self.done(now)
        unfinished = Outcome.EXPIRED if phase is Phase.EXPIRED else Outcome.CANCELED
        position = {index: rank for rank, index in enumerate(self.order)}
        with self.spool.open("rb") if self.spool is not None else nullcontext() as bodies:
            for index in range(len(self.lines)) if input_order else self.order:
                line = self.lines[index]
                if position[index] >= done:
                    yield Result(index, line, unfinished)
                    continue
                if line.spooled is None or bodies is None or self.read is None:
                    yield Result(index, line, Outcome.ERRORED)
                    continue
                offset, length = line.spooled
                bodies.seek(offset)
                chat = self.read(bodies.read(length))
                if line.fault is not None and line.fault not in FLAGGED:
                    # A file holds no hang or reset: transport faults become a server error.
                    fault = line.fault if line.fault in HTTP_ERRORS else Fault.INTERNAL
                    yield Result(index, line, Outcome.ERRORED, fault=fault, chat=chat)
                    continue
                answer = complete(chat, seed)
                if line.fault is not None:
                    answer = flag(answer, line.fault, chat)
                yield Result(index, line, Outcome.SUCCEEDED, chat=chat, answer=answer)


@dataclass(eq=False)
class StoredFile:
    """An uploaded or generated file, its bytes on disk."""

    id: str
    path: Path
    size: int
    created: float
    #: Provider-specific facts: filename, purpose, MIME type, display name, ...
    info: dict[str, Any] = field(default_factory=dict)


class BatchStore:
    """Every file and job of one emulator, for all three providers (ids never collide)."""

    def __init__(self, options: EmulatorOptions, clock: Clock) -> None:
        self.options = options
        self.clock = clock
        self.files: dict[str, StoredFile] = {}
        self.jobs: dict[str, Job] = {}
        self._dir: Path | None = None
        self._closing = False
        # Separate streams from the online route's, so batches leave its fault draws alone.
        self._picker = (
            FaultPicker(options.fault_rate, options.faults, options.seed)
            if options.fault_rate > 0
            else None
        )
        self._rng = random.Random(f"batches/{options.seed}")

    @property
    def directory(self) -> Path:
        """Where file bytes go; made on first use, removed by :meth:`close`."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="distillery-emulator-batches-"))
        return self._dir

    def close(self) -> None:
        """Stop result writers at their next line and remove every file."""
        self._closing = True
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def new_path(self) -> Path:
        return self.directory / new_id("", 16, string.ascii_lowercase + string.digits)

    def add_file(self, file_id: str, path: Path, info: dict[str, Any]) -> StoredFile:
        stored = StoredFile(file_id, path, path.stat().st_size, self.clock(), info)
        self.files[file_id] = stored
        return stored

    def fault(self) -> Fault | None:
        """The fault of the next line (see :class:`.faults.FaultPicker`), or None."""
        return None if self._picker is None else self._picker.pick()

    def add_job(
        self,
        job_id: str,
        lines: list[Line],
        info: dict[str, Any],
        problems: list[dict[str, Any]] | None = None,
        spool: Path | None = None,
        read: Callable[[bytes], ChatRequest] | None = None,
    ) -> Job:
        order = list(range(len(lines)))
        self._rng.shuffle(order)
        expires = self._rng.random() < self.options.batch_expire_rate
        job = Job(
            id=job_id,
            lines=lines,
            created=self.clock(),
            window_s=self.options.batch_seconds,
            order=order,
            expires=expires,
            problems=problems or [],
            info=info,
            spool=spool,
            read=read,
        )
        self.jobs[job_id] = job
        return job

    def forget(self, job: Job) -> None:
        """Delete ``job`` and its spooled requests (its result files stay, as files do)."""
        del self.jobs[job.id]
        if job.spool is not None:
            job.spool.unlink(missing_ok=True)

    def newest_first(self, prefix: str) -> list[Job]:
        """The jobs whose id starts with ``prefix`` (one provider's), newest first."""
        return [job for job in reversed(self.jobs.values()) if job.id.startswith(prefix)]

    def settle(self, job: Job, write: Callable[[Job, float], None]) -> None:
        """Once ``job`` has ended by the clock, start ``write`` (which writes its results),
        once; the job shows as finalizing until it is done (:meth:`Job.phase`).

        ``write`` runs in a worker thread and nobody waits for it: generating tens of
        thousands of answers (about a minute for 50,000) must neither stall the event loop nor
        hold a client's poll open, just as a provider finalizes while clients poll.
        """
        if job.settled or job._writing is not None:
            return
        now = self.clock()
        if job.scheduled(now) not in TERMINAL:
            return
        job._writing = asyncio.create_task(self._write(job, write, now))

    async def _write(self, job: Job, write: Callable[[Job, float], None], now: float) -> None:
        await asyncio.to_thread(write, job, now)
        job.settled = True

    def results(self, job: Job, now: float, input_order: bool = False) -> Iterator[Result]:
        """:meth:`Job.results` under this emulator's seed, cut short if the emulator stops."""
        for result in job.results(now, self.options.seed, input_order):
            if self._closing:
                return
            yield result
