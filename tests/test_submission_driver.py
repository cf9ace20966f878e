"""The batch-delivery driver (``generators/submissions_driver.py``): work items to rows through
each provider's batch API, over real HTTP on loopback against the emulator, resumable from
the journal at every step.

Batch time is the emulator's injected clock (:class:`FakeClock`): the driver's waits advance
it, so a submission's whole window passes without sleeping; the only real waits are the
emulator's own thread writing an ended batch's result files (milliseconds).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from contextlib import aclosing
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from distillery.generators.batch import WorkItem
from distillery.generators.client import Outcome, TeacherClient, TeacherUnusable
from distillery.generators.pricing import PriceEntry, answer_cost, cost_usd
from distillery.generators.prompts import Prompt
from distillery.generators.providers import gemini_submissions
from distillery.generators.records import RunContext, TeacherFacts
from distillery.generators.routing import sample_teacher
from distillery.generators.submissions_driver import (
    CollectedRows,
    advance,
    collect,
    prepare,
    wait_for,
)
from distillery.storage.location import as_location
from distillery.storage.spool import spool_root
from distillery.storage.submissions import (
    Journal,
    JournalError,
    SubmissionItem,
    SubmissionRecord,
)
from tests.test_emulator_batches import FakeClock
from tests.test_object_storage import bucket, keys, s3, s3_endpoint  # noqa: F401  (fixtures)
from tests.test_submission_api import (  # noqa: F401  (_key: the autouse key fixture)
    _SERVER_ERROR,
    KEY,
    KEY_ENV,
    MODES,
    PROVIDERS,
    WINDOW_S,
    LosesCreateAnswer,
    Rig,
    _key,
    _messages,
    _run,
    provider_of,
)

PRICE = PriceEntry(
    provider="*", model="*", input=2.0, output=8.0, batch_discount=0.5, as_of=date(2026, 1, 1)
)
RUN = "r1"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _items(rig: Rig, count: int) -> list[WorkItem]:
    return [WorkItem(Prompt(f"p{i}", _messages(i)), rig.teacher) for i in range(count)]


def _journal(rig: Rig) -> Journal:
    return Journal(rig.tmp / "out", RUN)


def _ctx() -> RunContext:
    return RunContext(RUN, "cfg", None, teachers={"t": TeacherFacts("tag", PRICE)})


def _prepare(rig: Rig, items: Iterable[WorkItem]) -> list[SubmissionRecord]:
    return prepare(_journal(rig), rig.teacher, rig.provider, rig.api, items, PRICE)


async def _wait(rig: Rig, records: list[SubmissionRecord]) -> list[SubmissionRecord]:
    """Every record to its end; each wait moves batch time on (and lets the emulator's
    thread write the result files)."""

    async def sleep(seconds: float) -> None:
        rig.clock.advance(seconds)
        await asyncio.sleep(0.01)

    return await wait_for(
        _journal(rig), {"t": rig.api}, records, WINDOW_S / 10, 50 * WINDOW_S, rig.clock, sleep
    )


async def _collect(
    rig: Rig, record: SubmissionRecord, done: frozenset[str] = frozenset(), chunk: int = 500
) -> list[CollectedRows]:
    teacher = rig.teacher

    def teacher_for(item: SubmissionItem) -> Any:
        return teacher

    gen = collect(_journal(rig), rig.api, record, _ctx(), teacher_for, done, chunk)
    return [rows async for rows in gen]


def _rows(chunks: list[CollectedRows]) -> tuple[list[Any], list[Any]]:
    return [r for c in chunks for r in c.samples], [r for c in chunks for r in c.failures]


async def _online(rig: Rig, index: int) -> Outcome:
    outcome = await TeacherClient(rig.teacher, rig.provider, rig.http).complete(_messages(index))
    assert outcome.completion is not None, outcome.failure
    return outcome


# The whole way, for each provider


@pytest.mark.parametrize("mode", MODES)
def test_items_become_the_online_rows_at_the_batch_price(
    mode: str, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = provider_of(mode, monkeypatch)

    async def scenario(rig: Rig) -> None:
        items = _items(rig, 4)
        records = _prepare(rig, items)
        assert [(r.step, r.requests) for r in records] == [("prepared", 4)]
        estimates = [
            cost_usd(PRICE, rig.provider.prompt_tokens(_messages(i), rig.teacher.model), 300)
            for i in range(4)
        ]  # prompt tokens and max_tokens, online; the record holds them at the batch price
        assert records[0].estimated_cost_usd == pytest.approx(sum(estimates) / 2)  # type: ignore[arg-type]
        lines = _journal(rig).requests_location(records[0].submission_id).read_bytes()
        assert lines is not None and KEY.encode() not in lines

        started = clock.now
        [ended] = await _wait(rig, records)
        assert ended.step == "ended" and ended.provider_batch_id
        assert ended.counts["succeeded"] == 4
        assert (ended.file_id is None) == (mode in ("anthropic", "gemini-inline"))
        assert clock.now - started >= WINDOW_S  # the waits were batch time, not real time

        samples, failures = _rows(await _collect(rig, ended))
        assert failures == []
        assert sorted(r["sample_id"] for r in samples) == sorted(i.sample_id for i in items)
        for row in samples:
            index = int(row["prompt_id"][1:])
            online = await _online(rig, index)
            completion = online.completion
            assert completion is not None
            assert row["response_text"] == completion.text and row["response_text"]
            assert row["teacher_model_version"] == completion.model_version
            assert (row["prompt_tokens"], row["completion_tokens"]) == (
                completion.prompt_tokens,
                completion.completion_tokens,
            )
            assert row["delivery"] == "batch"
            assert row["provider_batch_id"] == ended.provider_batch_id
            batch_cost = answer_cost(PRICE, completion, "batch")
            assert batch_cost and row["cost_usd"] == batch_cost
            assert batch_cost == pytest.approx(answer_cost(PRICE, completion) / 2)  # type: ignore[operator]
            assert row["request_hash"] == online.request_hash
            assert (row["attempts"], row["attempt_statuses"]) == (1, ["200"])
            assert row["created_at"] == ended.timestamps["created"]
            assert row["route"] == "all" and row["route_step"] == 0
        assert len(rig.listed()) == 1

    _run(provider, clock, tmp_path, scenario)


# What a batch that ran out of time kept


@pytest.mark.parametrize("provider", PROVIDERS)
def test_expiry_keeps_the_finished_answers_and_fails_the_rest_as_expired(
    provider: str, clock: FakeClock, tmp_path: Path
) -> None:
    async def scenario(rig: Rig) -> tuple[list[Any], list[Any]]:
        [ended] = await _wait(rig, _prepare(rig, _items(rig, 10)))
        assert ended.step == "ended" and ended.provider_state is not None
        return _rows(await _collect(rig, ended))

    samples, failures = _run(provider, clock, tmp_path, scenario, batch_expire_rate=1.0)

    answered = 0 if provider == "gemini" else 5  # an expired Gemini batch returns nothing
    assert len(samples) == answered and all(r["response_text"] for r in samples)
    assert len(failures) == 10 - answered
    assert {r["error_class"] for r in failures} == {"expired"}
    assert {r["delivery"] for r in (*samples, *failures)} == {"batch"}
    ids = [r["sample_id"] for r in (*samples, *failures)]
    assert len(set(ids)) == 10


# A crash between creating a batch and recording its id


async def _marked(rig: Rig, count: int) -> tuple[Journal, SubmissionRecord]:
    """A submission of ``count`` requests, uploaded where the provider takes a file, and
    marked as advance marks it just before it creates: where a crash may leave it."""
    journal = _journal(rig)
    [record] = _prepare(rig, _items(rig, count))
    if rig.provider.name == "openai":
        record = await advance(journal, rig.api, record, rig.clock.now)
        assert record.step == "uploaded" and record.file_id
    marked = journal.advance(
        record, record.step, provider_state="creating", create_started_at=rig.clock.now
    )
    return journal, marked


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_batch_created_before_a_crash_is_adopted_not_bought_twice(
    provider: str, clock: FakeClock, tmp_path: Path
) -> None:
    async def scenario(rig: Rig) -> None:
        journal, record = await _marked(rig, 3)
        sid = record.submission_id  # the create whose answer the crash lost:
        with journal.local_requests(sid) as lines:
            made = await rig.api.create(sid, lines, record.file_id, record.model)
        clock.advance(5)

        resumed = await advance(journal, rig.api, journal.read(sid), clock.now)
        assert (resumed.step, resumed.provider_batch_id) == ("created", made)
        assert len(rig.listed()) == 1
        [ended] = await _wait(rig, [resumed])
        samples, failures = _rows(await _collect(rig, ended))
        assert (len(samples), failures) == (3, [])

    _run(provider, clock, tmp_path, scenario)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_crash_before_the_create_was_sent_creates_one_batch(
    provider: str, clock: FakeClock, tmp_path: Path
) -> None:
    async def scenario(rig: Rig) -> None:
        journal, record = await _marked(rig, 2)
        resumed = await advance(journal, rig.api, journal.read(record.submission_id), clock.now)
        assert resumed.step == "created" and resumed.create_started_at == record.create_started_at
        assert len(rig.listed()) == 1

    _run(provider, clock, tmp_path, scenario)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_lost_create_answer_is_adopted_by_the_next_round(
    provider: str, clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(rig: Rig) -> None:
        [ended] = await _wait(rig, _prepare(rig, _items(rig, 3)))
        assert ended.step == "ended" and ended.create_started_at is not None
        assert len(rig.listed()) == 1
        samples, failures = _rows(await _collect(rig, ended))
        assert (len(samples), failures) == (3, [])

    _run(provider, clock, tmp_path, scenario, wrap=LosesCreateAnswer)
    # OpenAI and Gemini find their batch inside create; Anthropic's caller does, a round later.
    tried_again = [r for r in caplog.records if "tried again" in r.getMessage()]
    assert len(tried_again) == (provider == "anthropic")


# Rows of requests that failed on their own


@pytest.mark.parametrize("provider", PROVIDERS)
def test_per_request_errors_become_failure_rows_classed_as_online(
    provider: str, clock: FakeClock, tmp_path: Path
) -> None:
    async def scenario(rig: Rig) -> tuple[list[Any], list[Any]]:
        [ended] = await _wait(rig, _prepare(rig, _items(rig, 16)))
        return _rows(await _collect(rig, ended))

    samples, failures = _run(provider, clock, tmp_path, scenario, fault_rate=0.5, faults="500")

    assert samples and failures and len(samples) + len(failures) == 16
    assert {(r["error_class"], r["http_status"]) for r in failures} == {_SERVER_ERROR[provider]}
    assert {tuple(r["attempt_statuses"]) for r in failures} == {("500",)}
    assert all(r["message"] and r["delivery"] == "batch" for r in failures)


# A collection that stopped halfway


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_a_collection_resumed_after_a_crash_writes_no_row_twice(
    provider: str, clock: FakeClock, tmp_path: Path
) -> None:
    async def scenario(rig: Rig) -> None:
        items = _items(rig, 12)
        [ended] = await _wait(rig, _prepare(rig, items))
        teacher = rig.teacher
        committed: list[str] = []
        gen = collect(_journal(rig), rig.api, ended, _ctx(), lambda item: teacher, (), 5)
        async with aclosing(gen) as chunks:
            async for chunk in chunks:  # the first chunk commits; the process dies
                assert len(chunk) == 5
                committed += [r["sample_id"] for r in (*chunk.samples, *chunk.failures)]
                break
        again = await _collect(rig, ended, frozenset(committed), chunk=5)
        assert [len(c) for c in again] == [5, 2]
        samples, failures = _rows(again)
        rest = [r["sample_id"] for r in (*samples, *failures)]
        assert not set(rest) & set(committed)
        assert sorted(committed + rest) == sorted(i.sample_id for i in items)
        if provider == "gemini":  # all expired, some of them committed before the crash
            assert samples == [] and {r["error_class"] for r in failures} == {"expired"}
        else:
            assert len(samples) + len(committed) >= 6 and failures

    _run(provider, clock, tmp_path, scenario, batch_expire_rate=1.0)


# A submission the provider refuses as a whole


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_validation_failure_abandons_the_submission(
    provider: str, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(rig: Rig) -> SubmissionRecord:
        items = _items(rig, 3)
        if provider == "gemini":
            monkeypatch.setattr(gemini_submissions, "INLINE_MAX_REQUESTS", 1)
            [record] = _prepare(rig, items)
            lines = _journal(rig).requests_location(record.submission_id).local_path
            assert lines is not None
            with lines.open("ab") as handle:  # a line the provider cannot read
                handle.write(b"{not json\n")
        else:
            [record] = _prepare(rig, [*items, items[0]])  # the same custom id twice
        [done] = await _wait(rig, [record])
        assert len(_journal(rig).open_sample_ids()) == 0  # its ids are planned again
        return done

    record = _run(provider, clock, tmp_path, scenario)
    assert record.step == "abandoned" and record.error
    expected = {"openai": "duplicate_custom_id", "anthropic": "Duplicate custom_id"}
    assert expected.get(provider, "Line 4") in record.error
    assert (record.provider_batch_id is None) == (provider == "anthropic")


# A key that does not work


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_bad_key_stops_the_run_and_is_never_shown(
    provider: str, clock: FakeClock, tmp_path: Path
) -> None:
    wrong = "sk-wrong-key-that-must-not-leak"

    async def scenario(rig: Rig) -> tuple[str, SubmissionRecord]:
        [record] = _prepare(rig, _items(rig, 2))
        with pytest.raises(TeacherUnusable) as fatal:
            await _wait(rig, [record])
        return str(fatal.value), _journal(rig).read(record.submission_id)

    message, record = _run(provider, clock, tmp_path, scenario, key=wrong, require_key=KEY)
    assert wrong not in message and KEY not in message and KEY_ENV in message
    assert record.step == "prepared" and record.provider_batch_id is None


# A teacher asked with each sample's own parameters


def test_each_samples_parameters_make_its_row_and_a_changed_teacher_is_refused(
    clock: FakeClock, tmp_path: Path
) -> None:
    async def scenario(rig: Rig) -> tuple[list[Any], str]:
        asked = [sample_teacher(rig.teacher, index, [0.2, 0.9]) for index in range(3)]
        prompt = Prompt("p0", _messages(0))
        items = [WorkItem(prompt, teacher, index) for index, teacher in enumerate(asked)]
        records = prepare(_journal(rig), rig.teacher, rig.provider, rig.api, items, PRICE)
        [ended] = await _wait(rig, records)

        def as_asked(item: SubmissionItem) -> Any:
            return asked[item.sample_index]

        gen = collect(_journal(rig), rig.api, ended, _ctx(), as_asked, ())
        rows = [row async for chunk in gen for row in chunk.samples]
        assert sorted(r["sample_id"] for r in rows) == sorted(i.sample_id for i in items)
        with pytest.raises(JournalError) as changed:
            await _collect(rig, ended)  # every sample as the teacher's own parameters
        return rows, str(changed.value)

    rows, message = _run("openai", clock, tmp_path, scenario)
    assert {json.loads(r["params"])["temperature"] for r in rows} == {0.2, 0.9}
    assert "is not as it was when the submission was made" in message


# A journal in object storage


def test_a_journal_in_object_storage_uploads_from_a_spool_copy(
    clock: FakeClock,
    tmp_path: Path,
    bucket: str,  # noqa: F811
    s3: Any,  # noqa: F811
) -> None:
    output = f"s3://{bucket}/data"

    async def scenario(rig: Rig) -> list[Any]:
        journal = Journal(output, RUN)
        items = _items(rig, 3)
        records = prepare(journal, rig.teacher, rig.provider, rig.api, items, PRICE)

        async def sleep(seconds: float) -> None:
            clock.advance(seconds)
            await asyncio.sleep(0.01)

        apis = {"t": rig.api}
        [ended] = await wait_for(journal, apis, records, 10.0, 50 * WINDOW_S, clock, sleep)
        assert ended.step == "ended" and ended.file_id
        teacher = rig.teacher
        gen = collect(journal, rig.api, ended, _ctx(), lambda item: teacher, ())
        return [row async for chunk in gen for row in chunk.samples]

    rows = _run("openai", clock, tmp_path, scenario)
    assert len(rows) == 3 and all(r["response_text"] for r in rows)
    assert any(k.endswith(".requests.jsonl") for k in keys(s3, bucket))
    copies = spool_root(as_location(output)).glob("submissions/**/*.jsonl")
    assert list(copies) == []  # the uploaded copy and the lookup's are gone
