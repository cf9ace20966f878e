"""The emulator's batch APIs, driven by the official SDKs over loopback HTTP.

Time is an injected clock the tests move by hand (:class:`FakeClock`), so a batch's whole
life, from validating to completed, expired or cancelled, runs without sleeping. Caps are
tested by lowering the module constant the route reads (the error path and shape are the real
ones; only the threshold is smaller than 200 MB). Answers are compared with the online route's
for the same request: a later client relies on both giving the same text and usage.
"""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import anthropic
import httpx
import openai
import pytest
from anthropic.types import TextBlock
from anthropic.types.messages import MessageBatch
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from openai.types import Batch
from pydantic import ValidationError
from typer.testing import CliRunner

from distillery.cli import app
from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.emulator.batch_api import anthropic as anthropic_batches
from distillery.emulator.batch_api import gemini as gemini_batches
from distillery.emulator.batch_api import openai as openai_batches

WINDOW_S = 100.0
KEY = "sk-batch"
GPT = "gpt-4o-mini"
CLAUDE = "claude-sonnet-4-5"
GEMINI = "gemini-2.5-flash"
T = TypeVar("T")


class FakeClock:
    """Unix seconds that move only when a test says so (read from the server's thread)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _emulator(clock: FakeClock, **options: Any) -> RunningEmulator:
    settings: dict[str, Any] = {"seed": 7, "batch_seconds": WINDOW_S, **options}
    return RunningEmulator(EmulatorOptions(**settings), clock=clock)


@pytest.fixture
def emu(clock: FakeClock) -> Iterator[RunningEmulator]:
    with _emulator(clock) as running:
        yield running


def _openai(emu: RunningEmulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=emu.url + "/v1", api_key=KEY, max_retries=0, timeout=30)


def _anthropic(emu: RunningEmulator) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=emu.url, api_key=KEY, max_retries=0, timeout=30)


def _gemini(emu: RunningEmulator) -> genai.Client:
    options = genai_types.HttpOptions(base_url=emu.url, retry_options=None)
    return genai.Client(api_key=KEY, http_options=options)


def _prompt(index: int) -> str:
    return f"Explain tides, case {index}."


def _chat_body(index: int, model: str = GPT) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": _prompt(index)}]}


def _openai_line(index: int, **changes: Any) -> dict[str, Any]:
    line = {
        "custom_id": f"r{index}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": _chat_body(index),
    }
    return {**line, **changes}


def _jsonl(records: list[Any]) -> bytes:
    return "".join(json.dumps(record) + "\n" for record in records).encode()


def _submit(client: openai.OpenAI, lines: list[Any]) -> str:
    uploaded = client.files.create(file=("in.jsonl", _jsonl(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "test"},
    )
    assert batch.status == "validating"
    return batch.id


def _lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def _until(fetch: Callable[[], T], ready: Callable[[T], bool]) -> T:
    """``fetch()`` once ``ready``: an ended batch shows as finalizing while its results are
    written, in a thread of the emulator (milliseconds for these batches)."""
    deadline = time.monotonic() + 30
    while not ready(value := fetch()):
        assert time.monotonic() < deadline, value
        time.sleep(0.01)
    return value


def _openai_ended(client: openai.OpenAI, batch_id: str) -> Batch:
    running = ("validating", "in_progress", "finalizing", "cancelling")
    return _until(lambda: client.batches.retrieve(batch_id), lambda b: b.status not in running)


def _anthropic_ended(client: anthropic.Anthropic, batch_id: str) -> MessageBatch:
    fetch = lambda: client.messages.batches.retrieve(batch_id)  # noqa: E731
    return _until(fetch, lambda batch: batch.processing_status == "ended")


def _gemini_ended(client: genai.Client, name: str) -> genai_types.BatchJob:
    running = (genai_types.JobState.JOB_STATE_PENDING, genai_types.JobState.JOB_STATE_RUNNING)
    return _until(lambda: client.batches.get(name=name), lambda job: job.state not in running)


# OpenAI


def test_openai_batch_lifecycle_matches_online_answers(
    emu: RunningEmulator, clock: FakeClock
) -> None:
    client = _openai(emu)
    batch_id = _submit(client, [_openai_line(i) for i in range(20)])

    clock.advance(0.05 * WINDOW_S)
    assert client.batches.retrieve(batch_id).status == "validating"
    clock.advance(0.45 * WINDOW_S)  # halfway through the in-progress span
    halfway = client.batches.retrieve(batch_id)
    assert halfway.status == "in_progress"
    assert halfway.request_counts is not None
    assert halfway.request_counts.completed == 10
    assert halfway.output_file_id is None
    clock.advance(0.45 * WINDOW_S)
    assert client.batches.retrieve(batch_id).status == "finalizing"
    clock.advance(0.05 * WINDOW_S)
    done = _openai_ended(client, batch_id)

    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (20, 20)
    assert done.error_file_id is None
    assert done.completed_at == int(clock.now)
    assert done.in_progress_at is not None and done.finalizing_at is not None
    assert done.metadata == {"run": "test"}
    output = _lines(client, done.output_file_id)
    ids = [line["custom_id"] for line in output]
    assert sorted(ids, key=lambda i: int(i[1:])) == [f"r{i}" for i in range(20)]
    assert ids != [f"r{i}" for i in range(20)], "results must not come in input order"
    assert all(line["response"]["status_code"] == 200 and line["error"] is None for line in output)
    assert client.files.retrieve(done.output_file_id or "").purpose == "batch_output"

    usage = done.usage
    assert usage is not None
    assert usage.input_tokens == sum(
        line["response"]["body"]["usage"]["prompt_tokens"] for line in output
    )
    for line in output[:3]:
        index = int(line["custom_id"][1:])
        online = client.chat.completions.create(**_chat_body(index))
        body = line["response"]["body"]
        assert body["choices"][0]["message"]["content"] == online.choices[0].message.content
        assert online.usage is not None
        assert body["usage"]["completion_tokens"] == online.usage.completion_tokens
        assert body["usage"]["prompt_tokens"] == online.usage.prompt_tokens


def test_openai_list_pages_newest_first(emu: RunningEmulator) -> None:
    client = _openai(emu)
    ids = [_submit(client, [_openai_line(0)]) for _ in range(3)]
    first = client.batches.list(limit=2)
    assert [batch.id for batch in first.data] == [ids[2], ids[1]]
    assert first.has_more
    assert [batch.id for batch in client.batches.list(limit=2, after=ids[1]).data] == [ids[0]]
    assert [batch.id for batch in client.batches.list(limit=2)] == ids[::-1]  # auto-paging


def test_openai_bad_file_fails_with_line_errors(emu: RunningEmulator, clock: FakeClock) -> None:
    client = _openai(emu)
    lines = [
        json.dumps(_openai_line(0)),
        "{not json",
        json.dumps(_openai_line(0)),  # repeats r0
        json.dumps(_openai_line(3, url="/v1/embeddings")),
        json.dumps(_openai_line(4, body=_chat_body(4, "gpt-4.1"))),
        json.dumps({"custom_id": "r5", "method": "POST", "url": "/v1/chat/completions"}),
    ]
    uploaded = client.files.create(file=("in.jsonl", "\n".join(lines).encode()), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "validating"
    clock.advance(0.2 * WINDOW_S)
    failed = client.batches.retrieve(batch.id)

    assert failed.status == "failed"
    assert failed.failed_at is not None and failed.in_progress_at is None
    assert failed.errors is not None and failed.errors.data is not None
    found = [(error.code, error.line) for error in failed.errors.data]
    assert found == [
        ("invalid_json_line", 2),
        ("duplicate_custom_id", 3),
        ("url_mismatch", 4),
        ("model_mismatch", 5),
        ("missing_required_parameter", 6),
    ]
    assert failed.output_file_id is None and failed.error_file_id is None

    empty = client.files.create(file=("empty.jsonl", b""), purpose="batch")
    batch = client.batches.create(
        input_file_id=empty.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    clock.advance(0.2 * WINDOW_S)
    errors = client.batches.retrieve(batch.id).errors
    assert errors is not None and errors.data is not None
    assert [error.code for error in errors.data] == ["empty_file"]


def test_openai_refuses_bad_batch_parameters(emu: RunningEmulator) -> None:
    client = _openai(emu)
    uploaded = client.files.create(file=("in.jsonl", _jsonl([_openai_line(0)])), purpose="batch")
    with pytest.raises(openai.BadRequestError) as window:
        client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window=cast(Any, "48h"),
        )
    assert window.value.code == "invalid_value"
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id="file-nothere", endpoint="/v1/chat/completions", completion_window="24h"
        )
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nothere")


def test_openai_per_line_errors_land_in_the_error_file(clock: FakeClock) -> None:
    with _emulator(clock, fault_rate=0.5, faults="500,503") as emu:
        client = _openai(emu)
        lines = [_openai_line(i) for i in range(30)]
        lines.append(_openai_line(30, body={"model": GPT}))  # no messages: the endpoint's 400
        batch_id = _submit(client, lines)
        clock.advance(WINDOW_S)
        done = _openai_ended(client, batch_id)
        output, errors = _lines(client, done.output_file_id), _lines(client, done.error_file_id)

    assert done.status == "completed"
    counts = done.request_counts
    assert counts is not None and counts.total == 31
    assert counts.failed > 1 and counts.completed > 0
    assert counts.completed + counts.failed == 31
    assert len(output) == counts.completed and len(errors) == counts.failed
    statuses = {line["custom_id"]: line["response"]["status_code"] for line in errors}
    assert statuses.pop("r30") == 400
    assert set(statuses.values()) <= {500, 503} and statuses
    assert all(line["response"]["body"]["error"]["message"] for line in errors)


def test_openai_expired_batch_keeps_the_lines_it_finished(clock: FakeClock) -> None:
    with _emulator(clock, batch_expire_rate=1.0) as emu:
        client = _openai(emu)
        batch_id = _submit(client, [_openai_line(i) for i in range(10)])
        clock.advance(WINDOW_S)
        expired = _openai_ended(client, batch_id)
        output, errors = (
            _lines(client, expired.output_file_id),
            _lines(client, expired.error_file_id),
        )

    assert expired.status == "expired"
    assert expired.expired_at == int(clock.now)
    assert expired.request_counts is not None
    assert (expired.request_counts.completed, expired.request_counts.failed) == (5, 5)
    assert len(output) == 5 and all(line["response"]["status_code"] == 200 for line in output)
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert all(line["response"] is None for line in errors)
    assert {line["custom_id"] for line in output + errors} == {f"r{i}" for i in range(10)}


def test_openai_cancel_keeps_done_lines(emu: RunningEmulator, clock: FakeClock) -> None:
    client = _openai(emu)
    batch_id = _submit(client, [_openai_line(i) for i in range(10)])
    clock.advance(0.5 * WINDOW_S)  # 5 of 10 done
    cancelling = client.batches.cancel(batch_id)
    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at == int(clock.now)
    clock.advance(0.2 * WINDOW_S)
    cancelled = _openai_ended(client, batch_id)

    assert cancelled.status == "cancelled"
    assert cancelled.request_counts is not None
    assert (cancelled.request_counts.completed, cancelled.request_counts.failed) == (5, 5)
    assert len(_lines(client, cancelled.output_file_id)) == 5
    errors = _lines(client, cancelled.error_file_id)
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}

    finished = _submit(client, [_openai_line(0)])
    clock.advance(WINDOW_S)
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(finished)


def test_openai_caps(
    emu: RunningEmulator, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _openai(emu)
    monkeypatch.setattr(openai_batches, "MAX_LINES", 3)
    batch_id = _submit(client, [_openai_line(i) for i in range(4)])
    clock.advance(0.2 * WINDOW_S)
    errors = client.batches.retrieve(batch_id).errors
    assert errors is not None and errors.data is not None
    assert [error.code for error in errors.data] == ["too_many_tasks"]

    monkeypatch.setattr(openai_batches, "MAX_BATCH_BYTES", 1000)
    with pytest.raises(openai.BadRequestError) as too_large:
        client.files.create(
            file=("big.jsonl", _jsonl([_openai_line(i) for i in range(20)])), purpose="batch"
        )
    assert too_large.value.code == "file_too_large"


def test_batch_routes_check_the_key(clock: FakeClock) -> None:
    with _emulator(clock, require_key=KEY) as emu:
        wrong = openai.OpenAI(base_url=emu.url + "/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.batches.list()
        bad = anthropic.Anthropic(base_url=emu.url, api_key="wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            bad.messages.batches.list()
        assert list(_openai(emu).batches.list()) == []
        stats = emu.stats()
    assert stats["by_status"] == {"200": 1, "401": 2}


def test_batch_seconds_runs_on_the_wall_clock_by_default() -> None:
    with RunningEmulator(EmulatorOptions(seed=7, batch_seconds=0.3)) as emu:
        client = _openai(emu)
        batch_id = _submit(client, [_openai_line(0)])
        deadline = time.monotonic() + 10
        while (status := client.batches.retrieve(batch_id).status) != "completed":
            assert time.monotonic() < deadline, status
            time.sleep(0.05)


# Anthropic


def _message_request(index: int, **params: Any) -> Any:
    """One request of a message batch (typed Any: the SDK's TypedDict wants literal keys)."""
    body = {
        "model": CLAUDE,
        "max_tokens": 300,
        "messages": [{"role": "user", "content": _prompt(index)}],
        **params,
    }
    return {"custom_id": f"r{index}", "params": body}


def test_anthropic_batch_lifecycle_matches_online_answers(
    emu: RunningEmulator, clock: FakeClock
) -> None:
    client = _anthropic(emu)
    requests = [_message_request(i) for i in range(6)]
    requests.append({"custom_id": "bad", "params": {"model": CLAUDE, "messages": []}})
    batch = client.messages.batches.create(requests=requests)
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 7
    assert batch.results_url is None

    clock.advance(0.5 * WINDOW_S)
    running = client.messages.batches.retrieve(batch.id)
    assert running.processing_status == "in_progress"
    assert running.request_counts.processing == 7  # tallies stay 0 until the end
    clock.advance(0.5 * WINDOW_S)
    ended = _anthropic_ended(client, batch.id)

    assert ended.processing_status == "ended"
    assert ended.ended_at is not None and ended.results_url is not None
    counts = ended.request_counts
    assert (counts.processing, counts.succeeded, counts.errored) == (0, 6, 1)
    results = {item.custom_id: item.result for item in client.messages.batches.results(batch.id)}
    assert set(results) == {f"r{i}" for i in range(6)} | {"bad"}
    bad = results.pop("bad")
    assert bad.type == "errored"
    assert bad.error.error.type == "invalid_request_error"
    for custom_id, result in results.items():
        assert result.type == "succeeded"
        online = client.messages.create(**_message_request(int(custom_id[1:]))["params"])
        batched, answered = result.message.content[0], online.content[0]
        assert isinstance(batched, TextBlock) and isinstance(answered, TextBlock)
        assert batched.text == answered.text
        assert result.message.usage.output_tokens == online.usage.output_tokens


def test_anthropic_list_cancel_expire_and_delete(clock: FakeClock) -> None:
    with _emulator(clock) as emu:
        client = _anthropic(emu)
        first = client.messages.batches.create(requests=[_message_request(i) for i in range(4)])
        second = client.messages.batches.create(requests=[_message_request(0)])
        page = client.messages.batches.list(limit=1)
        assert [batch.id for batch in page.data] == [second.id] and page.has_more
        assert [b.id for b in client.messages.batches.list(limit=1, after_id=second.id).data] == [
            first.id
        ]
        with pytest.raises(anthropic.BadRequestError):
            client.messages.batches.delete(first.id)  # still processing

        clock.advance(0.5 * WINDOW_S)  # 2 of 4 done
        canceling = client.messages.batches.cancel(first.id)
        assert canceling.processing_status == "canceling"
        assert canceling.cancel_initiated_at is not None
        clock.advance(0.2 * WINDOW_S)
        canceled = _anthropic_ended(client, first.id)
        assert canceled.processing_status == "ended"
        assert (canceled.request_counts.succeeded, canceled.request_counts.canceled) == (2, 2)
        types = sorted(item.result.type for item in client.messages.batches.results(first.id))
        assert types == ["canceled", "canceled", "succeeded", "succeeded"]
        assert client.messages.batches.delete(first.id).type == "message_batch_deleted"
        with pytest.raises(anthropic.NotFoundError):
            client.messages.batches.retrieve(first.id)

    with _emulator(clock, batch_expire_rate=1.0) as emu:
        client = _anthropic(emu)
        batch = client.messages.batches.create(requests=[_message_request(i) for i in range(4)])
        clock.advance(WINDOW_S)
        counts = _anthropic_ended(client, batch.id).request_counts
        assert (counts.succeeded, counts.expired) == (2, 2)
        types = sorted(item.result.type for item in client.messages.batches.results(batch.id))
        assert types == ["expired", "expired", "succeeded", "succeeded"]


def test_anthropic_per_request_faults(clock: FakeClock) -> None:
    with _emulator(clock, fault_rate=0.5, faults="529") as emu:
        client = _anthropic(emu)
        batch = client.messages.batches.create(requests=[_message_request(i) for i in range(20)])
        clock.advance(WINDOW_S)
        counts = _anthropic_ended(client, batch.id).request_counts
        results = list(client.messages.batches.results(batch.id))
    assert counts.errored > 0 and counts.succeeded > 0
    assert counts.errored + counts.succeeded == 20
    errored = [item.result for item in results if item.result.type == "errored"]
    assert len(errored) == counts.errored
    assert {result.error.error.type for result in errored} == {"overloaded_error"}


def test_anthropic_caps(emu: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _anthropic(emu)
    monkeypatch.setattr(anthropic_batches, "MAX_REQUESTS", 2)
    with pytest.raises(anthropic.BadRequestError, match="at most 2"):
        client.messages.batches.create(requests=[_message_request(i) for i in range(3)])
    monkeypatch.setattr(anthropic_batches, "MAX_REQUESTS", 100)
    monkeypatch.setattr(anthropic_batches, "MAX_BYTES", 500)
    with pytest.raises(anthropic.APIStatusError) as too_large:
        client.messages.batches.create(requests=[_message_request(i) for i in range(5)])
    assert too_large.value.status_code == 413
    body = too_large.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "request_too_large"
    monkeypatch.setattr(anthropic_batches, "MAX_BYTES", 10**6)
    with pytest.raises(anthropic.BadRequestError, match="Duplicate"):
        client.messages.batches.create(requests=[_message_request(0), _message_request(0)])


def test_oversized_body_is_refused_before_it_is_sent(emu: RunningEmulator) -> None:
    """A declared Content-Length over the cap gets the 413 at once, without 256 MB on the wire."""
    host, port = emu.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/messages/batches HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\n"
            b"content-type: application/json\r\n"
            + f"content-length: {anthropic_batches.MAX_BYTES + 1}\r\n\r\n".encode()
        )
        head = conn.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 413")
    assert "request_too_large" in head


# Gemini


def _content(index: int) -> Any:
    """A user turn (typed Any: the SDK's dict types want literal keys)."""
    return {"role": "user", "parts": [{"text": _prompt(index)}]}


def _inline(index: int) -> Any:
    return {"contents": [_content(index)]}


def _online_text(client: genai.Client, index: int) -> str:
    response = client.models.generate_content(model=GEMINI, contents=[_content(index)])
    assert response.text is not None
    return response.text


def test_gemini_inline_batch_matches_online_answers(emu: RunningEmulator, clock: FakeClock) -> None:
    client = _gemini(emu)
    src: Any = [{**_inline(i), "metadata": {"key": f"k{i}"}} for i in range(5)]
    job = client.batches.create(model=GEMINI, src=src, config={"display_name": "inline"})
    assert job.name is not None and job.name.startswith("batches/")
    assert job.state == genai_types.JobState.JOB_STATE_PENDING
    assert job.display_name == "inline"
    clock.advance(0.5 * WINDOW_S)
    assert client.batches.get(name=job.name).state == genai_types.JobState.JOB_STATE_RUNNING
    clock.advance(0.5 * WINDOW_S)
    done = _gemini_ended(client, job.name)

    assert done.state == genai_types.JobState.JOB_STATE_SUCCEEDED
    assert done.end_time is not None
    assert done.dest is not None and done.dest.inlined_responses is not None
    responses = done.dest.inlined_responses
    assert [item.metadata for item in responses] == [{"key": f"k{i}"} for i in range(5)]
    for index, item in enumerate(responses):
        assert item.response is not None and item.error is None
        assert item.response.text == _online_text(client, index)
    assert [j.name for j in client.batches.list(config={"page_size": 10})] == [job.name]


def test_gemini_file_batch_through_the_file_api(emu: RunningEmulator, clock: FakeClock) -> None:
    client = _gemini(emu)
    lines = [{"key": f"k{i}", "request": {"contents": [_content(i)]}} for i in range(4)]
    uploaded = client.files.upload(
        file=io.BytesIO(_jsonl(lines)), config={"mime_type": "application/jsonl"}
    )
    assert uploaded.name is not None and uploaded.size_bytes == len(_jsonl(lines))
    assert client.files.get(name=uploaded.name).source == genai_types.FileSource.UPLOADED
    job = client.batches.create(model=GEMINI, src=uploaded.name)
    assert job.name is not None
    clock.advance(WINDOW_S)
    done = _gemini_ended(client, job.name)

    assert done.state == genai_types.JobState.JOB_STATE_SUCCEEDED
    assert done.dest is not None and done.dest.file_name is not None
    assert client.files.get(name=done.dest.file_name).download_uri is not None
    results = [
        json.loads(line) for line in client.files.download(file=done.dest.file_name).splitlines()
    ]
    assert [result["key"] for result in results] == [f"k{i}" for i in range(4)]
    for index, result in enumerate(results):
        text = result["response"]["candidates"][0]["content"]["parts"][0]["text"]
        assert text == _online_text(client, index)


def test_gemini_failed_cancelled_and_expired_batches(clock: FakeClock) -> None:
    with _emulator(clock, fault_rate=1.0, faults="500") as emu:
        client = _gemini(emu)
        bad = client.files.upload(
            file=io.BytesIO(
                _jsonl([{"key": "a", "request": {"contents": [_content(0)]}}]) + b"{\n"
            ),
            config={"mime_type": "application/jsonl"},
        )
        assert bad.name is not None
        failed = client.batches.create(model=GEMINI, src=bad.name)
        errored = client.batches.create(model=GEMINI, src=[_inline(0)])
        running = client.batches.create(model=GEMINI, src=[_inline(1)])
        assert failed.name and errored.name and running.name
        clock.advance(0.5 * WINDOW_S)
        client.batches.cancel(name=running.name)
        clock.advance(0.5 * WINDOW_S)

        gone = client.batches.get(name=failed.name)
        assert gone.state == genai_types.JobState.JOB_STATE_FAILED
        # The SDK drops the operation's error; the raw operation carries it.
        raw = httpx.get(f"{emu.url}/v1beta/{failed.name}", headers={"x-goog-api-key": KEY})
        assert raw.json()["done"] is True
        assert raw.json()["error"]["code"] == 3 and "Line 2" in raw.json()["error"]["message"]
        per_line = _gemini_ended(client, errored.name)
        assert per_line.state == genai_types.JobState.JOB_STATE_SUCCEEDED
        assert per_line.dest is not None and per_line.dest.inlined_responses is not None
        error = per_line.dest.inlined_responses[0].error
        assert error is not None and error.code == 13  # google.rpc.Code INTERNAL, not HTTP 500
        cancelled = _gemini_ended(client, running.name)
        assert cancelled.state == genai_types.JobState.JOB_STATE_CANCELLED
        assert cancelled.dest is None  # as the real API: no results to retrieve
        with pytest.raises(genai_errors.ClientError):
            client.batches.cancel(name=errored.name)  # already ended

    with _emulator(clock, batch_expire_rate=1.0) as emu:
        client = _gemini(emu)
        job = client.batches.create(model=GEMINI, src=[_inline(0)])
        assert job.name is not None
        clock.advance(WINDOW_S)
        expired = _gemini_ended(client, job.name)
        assert expired.state == genai_types.JobState.JOB_STATE_EXPIRED
        assert expired.dest is None


def test_gemini_caps(emu: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _gemini(emu)
    monkeypatch.setattr(gemini_batches, "MAX_INLINE_BYTES", 300)
    src = [_inline(i) for i in range(10)]
    with pytest.raises(genai_errors.ClientError) as inline:
        client.batches.create(model=GEMINI, src=src)
    assert inline.value.code == 400
    assert "payload size exceeds the limit" in str(inline.value.message)

    monkeypatch.setattr(gemini_batches, "MAX_FILE_BYTES", 100)
    with pytest.raises(genai_errors.ClientError) as upload:
        client.files.upload(file=io.BytesIO(b"x" * 101), config={"mime_type": "application/jsonl"})
    assert upload.value.code == 400
    with pytest.raises(genai_errors.ClientError) as missing:
        client.batches.get(name="batches/nothere")
    assert missing.value.code == 404


def test_batch_options_are_checked() -> None:
    with pytest.raises(ValidationError):
        EmulatorOptions(batch_seconds=-1)
    with pytest.raises(ValidationError):
        EmulatorOptions(batch_expire_rate=1.5)
    result = CliRunner().invoke(app, ["emulator", "--batch-expire-rate", "2"])
    assert result.exit_code == 2
    assert "--batch-expire-rate" in result.output
