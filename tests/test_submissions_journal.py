"""The journal of provider submissions (``storage/submissions.py``): records and items round
trip, caps cut submissions, and a kill at every step of the protocol leaves a journal that
repair makes consistent — no record naming torn files, no complete record lost, the open
sample ids exact, and a resume that plans only what no record holds.

Kills are real: a fresh interpreter ends at a named failpoint (``storage/failpoints.py``:
``os._exit``, as ``kill -9`` would — no ``finally``, no flush), and the journal is then read
by this process, which never touched it before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from distillery.config import TeacherConfig
from distillery.generators.batch import WorkItem
from distillery.generators.prompts import Prompt
from distillery.generators.providers.base import SubmissionLimits
from distillery.generators.records import _json
from distillery.storage.failpoints import ENV, KILLED
from distillery.storage.location import Location, as_location
from distillery.storage.submissions import (
    Entry,
    Journal,
    JournalError,
    SubmissionItem,
    SubmissionRecord,
)

from .test_object_storage import bucket, s3, s3_endpoint  # noqa: F401  (fixtures)

RUN = "r1"


def item(custom_id: str, text: str = "hello") -> SubmissionItem:
    return SubmissionItem(
        custom_id=custom_id,
        prompt_id=f"p-{custom_id}",
        sample_index=0,
        teacher="gpt",
        messages=[{"role": "user", "content": text}],
    )


def entry(custom_id: str, line: bytes | None = None, cost: float = 0.0) -> Entry:
    body = line if line is not None else json.dumps({"custom_id": custom_id}).encode()
    return Entry(custom_id, body, item(custom_id), cost)


def write_all(
    journal: Journal, entries: Iterable[Entry], limits: SubmissionLimits
) -> list[SubmissionRecord]:
    return list(journal.new_submission("gpt", "openai", "gpt-x", limits).write(entries))


def file_names(directory: Location) -> set[str]:
    return set(directory.names())


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_records_and_items_round_trip(tmp_path: Path) -> None:
    teacher = TeacherConfig(name="gpt", provider="openai", model="gpt-x", base_url="http://x/v1")
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    prompt = Prompt(
        "p1",
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "héllo\nthere"}],
        {"source": "a.jsonl", "n": 3, "when": when},
        {"recipe": "evol", "stage": "s1", "generation": 2, "parent_sample_id": "x"},
    )
    work = WorkItem(prompt, teacher, sample_index=2, route="fallback", route_step=1)
    clock = Clock()
    journal = Journal(tmp_path, RUN, clock=clock)
    line = b'{"custom_id": "%s", "body": {"x": "\\u00e9"}}' % work.sample_id.encode()
    [record] = write_all(
        journal,
        [Entry(work.sample_id, line, SubmissionItem.of(work), 0.25)],
        SubmissionLimits(10, 10_000),
    )
    assert (record.step, record.requests, record.bytes) == ("prepared", 1, len(line) + 1)
    assert record.estimated_cost_usd == 0.25
    assert journal.requests_location(record.submission_id).read_bytes() == line + b"\n"

    [back] = journal.items_of(record.submission_id)
    assert (back.custom_id, back.sample_index, back.teacher) == (work.sample_id, 2, "gpt")
    assert (back.route, back.route_step) == ("fallback", 1)
    rebuilt = back.prompt()
    assert (rebuilt.prompt_id, rebuilt.messages, rebuilt.lineage) == (
        prompt.prompt_id,
        prompt.messages,
        prompt.lineage,
    )
    # A value JSON cannot hold comes back as the text the row's prompt_meta column stores.
    assert rebuilt.meta["when"] == str(when)
    assert _json(rebuilt.meta) == _json(prompt.meta)

    clock.now += timedelta(minutes=5)
    uploaded = journal.advance(record, "uploaded", file_id="file-1")
    clock.now += timedelta(minutes=5)
    created = journal.advance(uploaded, "created", provider_batch_id="batch_1")
    clock.now += timedelta(minutes=5)
    polled = journal.advance(
        created, "created", provider_state="in_progress", counts={"completed": 0, "total": 1}
    )
    assert polled.timestamps["created"] == created.timestamps["created"]
    assert Journal(tmp_path, RUN).records() == [polled]

    [row] = journal.summary(now=clock.now + timedelta(minutes=1))
    assert row["provider_batch_id"] == "batch_1" and row["provider_state"] == "in_progress"
    assert (row["step"], row["counts"], row["requests"]) == ("created", polled.counts, 1)
    assert (row["age_s"], row["step_age_s"]) == (16 * 60.0, 6 * 60.0)

    with pytest.raises(JournalError, match="at created, cannot go back to uploaded"):
        journal.advance(polled, "uploaded", file_id="file-2")
    with pytest.raises(ValueError, match="provider_batch_id"):
        journal.advance(record, "ended", provider_batch_id=None)
    done = journal.advance(polled, "collected", counts={"succeeded": 1})
    with pytest.raises(JournalError, match="already collected"):
        journal.advance(done, "abandoned", error="late")


def test_caps_cut_submissions_at_requests_and_at_bytes(tmp_path: Path) -> None:
    journal = Journal(tmp_path, RUN)
    by_count = write_all(journal, [entry(f"a{i}") for i in range(7)], SubmissionLimits(3, 10**6))
    assert [r.requests for r in by_count] == [3, 3, 1]
    assert [[i.custom_id for i in journal.items_of(r.submission_id)] for r in by_count] == [
        ["a0", "a1", "a2"],
        ["a3", "a4", "a5"],
        ["a6"],
    ]

    # Lines of 10 bytes with their newline: a 25-byte cap holds two, never a third.
    lines = [entry(f"b{i}", b"x" * 8 + str(i).encode()) for i in range(5)]
    by_bytes = write_all(journal, lines, SubmissionLimits(100, 25))
    assert [(r.requests, r.bytes) for r in by_bytes] == [(2, 20), (2, 20), (1, 10)]
    exact = write_all(journal, lines[:3], SubmissionLimits(100, 30))  # exactly at the cap fits
    assert [(r.requests, r.bytes) for r in exact] == [(3, 30)]
    for record in [*by_count, *by_bytes, *exact]:
        content = journal.requests_location(record.submission_id).read_bytes()
        assert content is not None and len(content) == record.bytes
        assert content.count(b"\n") == record.requests

    numbers = [r.submission_id[:6] for r in journal.records()]
    assert numbers == [f"s{n:05d}" for n in range(7)]

    with pytest.raises(ValueError, match="request big: 31 bytes, more than a submission may"):
        write_all(journal, [entry("big", b"y" * 30)], SubmissionLimits(100, 30))
    with pytest.raises(ValueError, match="a line break inside"):
        write_all(journal, [entry("nl", b"a\nb")], SubmissionLimits(100, 30))


def test_open_sample_ids_and_lookup(tmp_path: Path) -> None:
    journal = Journal(tmp_path, RUN)
    records = write_all(journal, [entry(f"c{i:02d}") for i in range(9)], SubmissionLimits(3, 10**6))
    journal.advance(records[0], "collected", provider_batch_id="b0")
    journal.advance(records[1], "abandoned", error="validation failed: bad model")
    journal.advance(records[2], "created", provider_batch_id="b2")
    opened = journal.open_sample_ids()
    assert len(opened) == 3 and all(f"c{i:02d}" in opened for i in (6, 7, 8))
    assert "c00" not in opened and "c03" not in opened

    with journal.lookup(records[2].submission_id) as lookup:
        assert len(lookup) == 3
        for custom_id in ("c08", "c06", "c07"):  # results come in any order
            assert lookup[custom_id] == item(custom_id)
        assert lookup.get("c00") is None and "c00" not in lookup


def test_a_corrupt_record_is_one_line_naming_the_file(tmp_path: Path) -> None:
    journal = Journal(tmp_path, RUN)
    [record] = write_all(journal, [entry("d0")], SubmissionLimits(3, 10**6))
    where = journal.record_location(record.submission_id)
    data = json.loads(where.read_bytes() or b"")
    where.replace(json.dumps({**data, "requests": "many"}).encode())
    with pytest.raises(JournalError) as caught:
        journal.records()
    [message] = str(caught.value).splitlines()
    assert str(where) in message and "requests" in message

    where.replace(b'{"submission_id": "s00000-')  # torn by hand: the protocol never does this
    with pytest.raises(JournalError, match=f"^{where}: not a valid submission record"):
        journal.read(record.submission_id)

    items = journal.items_location(record.submission_id)
    items.replace(b'{"custom_id": 3}\n')
    with pytest.raises(JournalError, match=f"^{items}:1: not a submission item"):
        list(journal.items_of(record.submission_id))


# --- kills -----------------------------------------------------------------------------------

# Ten requests, four a submission (s0: k00-k03, s1: k04-k07, s2: k08-k09), then each taken
# through its steps: s0 to collected, s1 to created, s2 abandoned after its upload. Saves, in
# order: 1-3 prepared s0 s1 s2; 4-5 s0 uploaded, created; 6-7 s1 uploaded, created; 8-9 s2
# uploaded, abandoned; 10-11 s0 ended, collected.
DRIVER = """
import sys
from distillery.storage.submissions import Entry, Journal, SubmissionItem
from distillery.generators.providers.base import SubmissionLimits
journal = Journal(sys.argv[1], "r1")
def entries():
    for i in range(10):
        cid = f"k{i:02d}"
        item = SubmissionItem(custom_id=cid, prompt_id="p", sample_index=i, teacher="gpt",
                              messages=[{"role": "user", "content": "q" * 50}])
        yield Entry(cid, b'{"custom_id": "%s"}' % cid.encode(), item, 0.5)
writer = journal.new_submission("gpt", "openai", "gpt-x", SubmissionLimits(4, 10**6))
s0, s1, s2 = writer.write(entries())
def step(record, *steps):
    for name, changes in steps:
        record = journal.advance(record, name, **changes)
    return record
s0 = step(s0, ("uploaded", {"file_id": "f0"}), ("created", {"provider_batch_id": "b0"}))
step(s1, ("uploaded", {"file_id": "f1"}), ("created", {"provider_batch_id": "b1"}))
step(s2, ("uploaded", {"file_id": "f2"}), ("abandoned", {"error": "failed"}))
step(s0, ("ended", {"provider_state": "completed"}), ("collected", {}))
"""
IDS = [f"k{i:02d}" for i in range(10)]
S0, S1, S2 = IDS[:4], IDS[4:8], IDS[8:]

# (failpoint, steps of the records left, ids still open, orphan files, temporaries deleted)
KILLS = [
    # Mid-write of s1's files (two of its lines written): s1 leaves torn, recordless files.
    ("submissions:line@6", ["prepared"], S0, 2, 0),
    # s1's files complete and fsynced, its record not yet saved.
    ("submissions:files-synced@2", ["prepared"], S0, 2, 0),
    # s1's record written to its temporary and fsynced, not renamed into place.
    ("location:replace-synced@2", ["prepared"], S0, 2, 1),
    # Every submission prepared, none uploaded.
    ("submissions:saved-prepared@3", ["prepared"] * 3, IDS, 0, 0),
    # s0 uploaded; its 'created' record torn before the rename.
    ("location:replace-synced@5", ["uploaded", "prepared", "prepared"], IDS, 0, 1),
    # s0 and s1 created, s2 still prepared.
    ("submissions:saved-created@2", ["created", "created", "prepared"], IDS, 0, 0),
    # s2 abandoned (its ids free to plan again), s0 and s1 in flight.
    ("submissions:saved-abandoned", ["created", "created", "abandoned"], S0 + S1, 0, 0),
    # s0 ended, not collected: still open.
    ("submissions:saved-ended", ["ended", "created", "abandoned"], S0 + S1, 0, 0),
    # The last step: s0's answers collected.
    ("submissions:saved-collected", ["collected", "created", "abandoned"], S1, 0, 0),
]


def kill_at(point: str, output: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, output],
        env={**os.environ, ENV: point},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == KILLED, result.stderr  # it did reach the point


def consistent(journal: Journal) -> None:
    """Every file is a record's, and every record's files are whole: as many items as it
    says, exactly the bytes it says."""
    records = {r.submission_id: r for r in journal.records()}
    for name in file_names(journal.directory):
        assert name.split(".", 1)[0] in records, name
    for submission_id, record in records.items():
        items = [i.custom_id for i in journal.items_of(submission_id)]
        assert len(items) == len(set(items)) == record.requests
        content = journal.requests_location(submission_id).read_bytes()
        assert content is not None and len(content) == record.bytes


def check_after_kill(
    output: str | Path, steps: list[str], still_open: list[str], orphans: int, temporaries: int
) -> None:
    journal = Journal(output, RUN)
    repaired = journal.repair()
    assert (len(repaired.orphan_files), len(repaired.temporaries)) == (orphans, temporaries)
    assert [r.step for r in journal.records()] == steps  # no complete record lost
    consistent(journal)
    opened = journal.open_sample_ids()
    assert len(opened) == len(still_open) and all(i in opened for i in still_open)
    assert journal.repair() == type(repaired)([], [])  # a second repair finds nothing

    # The resume plans what no live record holds (abandoned ids may be planned again), and
    # writes them into new submissions beside the old: each id bought once.
    held = {
        i.custom_id
        for r in journal.records()
        if r.step != "abandoned"
        for i in journal.items_of(r.submission_id)
    }
    fresh = [entry(i) for i in IDS if i not in held]
    write_all(journal, fresh, SubmissionLimits(4, 10**6))
    consistent(journal)
    bought = [
        i.custom_id
        for r in journal.records()
        if r.step != "abandoned"
        for i in journal.items_of(r.submission_id)
    ]
    assert sorted(bought) == IDS


@pytest.mark.parametrize(("point", "steps", "still_open", "orphans", "temporaries"), KILLS)
def test_a_kill_at_each_step_loses_nothing_and_buys_nothing_twice(
    tmp_path: Path,
    point: str,
    steps: list[str],
    still_open: list[str],
    orphans: int,
    temporaries: int,
) -> None:
    kill_at(point, str(tmp_path))
    check_after_kill(tmp_path, steps, still_open, orphans, temporaries)


def test_without_a_kill_the_driver_ends_where_the_last_kill_would(tmp_path: Path) -> None:
    # The same driver run whole: the kill cases above are points of a real sequence.
    subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path)], check=True, timeout=120)
    check_after_kill(tmp_path, ["collected", "created", "abandoned"], S1, 0, 0)


# --- object storage --------------------------------------------------------------------------


def test_the_journal_works_on_object_storage(bucket: str) -> None:  # noqa: F811
    output = f"s3://{bucket}/data"
    journal = Journal(output, RUN)
    records = write_all(journal, [entry(f"e{i}") for i in range(5)], SubmissionLimits(2, 10**6))
    assert [r.requests for r in records] == [2, 2, 1]
    journal.advance(records[0], "created", provider_batch_id="b0")
    fresh = Journal(as_location(output), RUN)
    assert [r.step for r in fresh.records()] == ["created", "prepared", "prepared"]
    assert [i.custom_id for i in fresh.items_of(records[1].submission_id)] == ["e2", "e3"]
    assert len(fresh.open_sample_ids()) == 5
    with fresh.lookup(records[0].submission_id) as lookup:
        assert lookup["e1"] == item("e1") and lookup.get("e2") is None
        copy = lookup.path
    assert not copy.exists()  # the local copy of the items goes with the lookup

    # A writer that died mid-submission (files streamed, no record) is what repair deletes.
    def dying() -> Iterator[Entry]:
        yield from (entry("f0"), entry("f1"), entry("f2"))
        raise RuntimeError("the producer died")

    with pytest.raises(RuntimeError, match="producer died"):
        # f0 and f1 are prepared; f2's submission is open when the error comes.
        write_all(journal, dying(), SubmissionLimits(2, 10**6))
    assert len(fresh.repair().orphan_files) == 2
    consistent(fresh)
    assert len(fresh.records()) == 4
