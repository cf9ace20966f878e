"""The providers' batch APIs from the client side (generators/providers/*_submissions.py),
over real HTTP on loopback against the emulator's batch routes.

Batch time is the emulator's injected clock (:class:`FakeClock`), moved by hand, so a whole
24-hour life runs without sleeping; the only waits are for the emulator writing an ended
batch's result files in its own thread (milliseconds). Where a test needs a transport to
lose an answer or a server to refuse once, a thin sender wraps the real one (:class:`Meddling`):
the request still goes to the emulator, and a lost create really creates its batch.
"""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from aiohttp import web

from distillery.config import GenerationParams, SubmissionOptions, TeacherConfig
from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.generators.client import TeacherClient, TeacherUnusable
from distillery.generators.http import (
    Body,
    BodyStream,
    HttpAnswer,
    HttpSender,
    HttpTransportError,
    StreamedAnswer,
    Transport,
    make_http_client,
)
from distillery.generators.providers import gemini_submissions
from distillery.generators.providers.base import Completion, HttpCall, Provider
from distillery.generators.providers.registry import get_provider
from distillery.generators.providers.submission_base import SKEW_S
from distillery.generators.providers.submission_http import on_base
from distillery.generators.providers.submissions import (
    AmbiguousSubmission,
    FindHints,
    LineTooLarge,
    SubmissionApi,
    SubmissionError,
    SubmissionLimits,
    SubmissionResult,
    SubmissionState,
    SubmissionStatus,
    split_lines,
)
from tests.test_emulator_batches import FakeClock

WINDOW_S = 100.0
KEY = "sk-batch-secret-0123456789"
KEY_ENV = "DISTILLERY_TEST_BATCH_KEY"
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash"}
PROVIDERS = ["openai", "anthropic", "gemini"]
#: How each provider lists its batches, for counting them behind the client's back.
LISTS = {
    "openai": ("/v1/batches", "data", {"authorization": f"Bearer {KEY}"}),
    "anthropic": ("/v1/messages/batches", "data", {"x-api-key": KEY}),
    "gemini": ("/v1beta/batches", "operations", {"x-goog-api-key": KEY}),
}
T = TypeVar("T")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)  # the online client reads its key from here


def _messages(index: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Explain tides, case {index}."}]


@dataclass
class Rig:
    """One provider's batch API against one running emulator."""

    emu: RunningEmulator
    clock: FakeClock
    provider: Provider
    teacher: TeacherConfig
    http: HttpSender
    api: SubmissionApi
    tmp: Path
    sleeps: list[float] = field(default_factory=list)

    def call(self, index: int) -> HttpCall:
        return self.provider.build_call(self.teacher, _messages(index), KEY)

    async def submit(
        self, sid: str, count: int, extra: list[bytes] | None = None, first: int = 0
    ) -> tuple[str, str | None]:
        """Requests ``first..first+count`` (custom ids ``r<i>``) and ``extra`` lines as
        submission ``sid``: (batch id, file id)."""
        path = self.tmp / f"{sid}.jsonl"
        with path.open("wb") as handle:
            for index in range(first, first + count):
                handle.write(self.api.line(f"r{index}", self.call(index)))
            for line in extra or []:
                handle.write(line)
        file_id = await self.api.upload(sid, path)
        return await self.api.create(sid, path, file_id, self.teacher.model), file_id

    async def ended(self, batch_id: str) -> SubmissionStatus:
        """The status once ended: the emulator writes result files in a thread meanwhile."""
        deadline = time.monotonic() + 60
        while not (status := await self.api.status(batch_id)).ended:
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.01)
        return status

    async def results(self, batch_id: str) -> dict[str, SubmissionResult]:
        found: dict[str, SubmissionResult] = {}
        async for result in self.api.results(batch_id):
            assert result.custom_id not in found, f"{result.custom_id} came twice"
            found[result.custom_id] = result
        return found

    async def ended_results(
        self, count: int, run_s: float = WINDOW_S
    ) -> tuple[SubmissionStatus, dict[str, SubmissionResult]]:
        """Submit ``count`` requests, let ``run_s`` pass: the end and its results."""
        batch_id, _ = await self.submit("sub-1", count)
        self.clock.advance(run_s)
        return await self.ended(batch_id), await self.results(batch_id)

    async def online(self, index: int) -> Completion:
        client = TeacherClient(self.teacher, self.provider, self.http)
        outcome = await client.complete(_messages(index))
        assert outcome.completion is not None, outcome.failure
        return outcome.completion

    def listed(self) -> list[Any]:
        """The provider's batches as its list route shows them."""
        path, key, headers = LISTS[self.provider.name]
        listed = httpx.get(self.emu.url + path, headers=headers).json()[key]
        assert isinstance(listed, list)
        return listed


def _run(
    provider: str,
    clock: FakeClock,
    tmp: Path,
    scenario: Callable[[Rig], Awaitable[T]],
    key: str = KEY,
    wrap: Callable[[HttpSender], HttpSender] | None = None,
    transport: Transport = "aiohttp",
    **options: Any,
) -> T:
    """``scenario`` against an emulator with ``options``, through ``provider``'s batch API."""

    async def main(emu: RunningEmulator) -> T:
        teacher = TeacherConfig(
            name="t",
            provider=provider,
            model=MODELS[provider],
            base_url=emu.url + ("/v1" if provider == "openai" else ""),
            api_key_env=KEY_ENV,
            max_attempts=3,
            params=GenerationParams(max_tokens=300),
        )
        sender = make_http_client(transport, 4, 30.0, teacher.base_url)
        http = wrap(sender) if wrap is not None else sender
        sleeps: list[float] = []

        async def sleep(seconds: float) -> None:
            sleeps.append(seconds)

        implementation = get_provider(provider)
        api = implementation.submission_api(teacher, http, key, clock=clock, sleep=sleep)
        assert api is not None
        try:
            return await scenario(Rig(emu, clock, implementation, teacher, http, api, tmp, sleeps))
        finally:
            await sender.aclose()

    settings: dict[str, Any] = {"seed": 7, "batch_seconds": WINDOW_S, **options}
    with RunningEmulator(EmulatorOptions(**settings), clock=clock) as emu:
        return asyncio.run(main(emu))


def _same_answer(batched: Completion | None, online: Completion) -> None:
    assert batched is not None
    assert batched.text == online.text and batched.text
    assert batched.finish_reason == online.finish_reason
    assert batched.model_version == online.model_version
    assert (batched.prompt_tokens, batched.completion_tokens) == (
        online.prompt_tokens,
        online.completion_tokens,
    )


# The whole life of a submission, for each provider

#: Each provider, Gemini both with its requests inline and in an uploaded file.
MODES = ["openai", "anthropic", "gemini-inline", "gemini-file"]


def provider_of(mode: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The provider of a :data:`MODES` entry; for ``gemini-file``, an inline cap of two
    requests, so that a few go through the File API."""
    if mode == "gemini-file":
        monkeypatch.setattr(gemini_submissions, "INLINE_MAX_REQUESTS", 2)
    return mode.split("-")[0]


@pytest.mark.parametrize("mode", MODES)
def test_lifecycle_gives_the_online_answers(
    mode: str, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = provider_of(mode, monkeypatch)

    async def scenario(rig: Rig) -> None:
        batch_id, file_id = await rig.submit("sub-1", 6)
        assert (file_id is None) == (mode in ("anthropic", "gemini-inline"))
        first = await rig.api.status(batch_id)
        assert first.provider_batch_id == batch_id and not first.ended
        expected = SubmissionState.IN_PROGRESS if provider == "anthropic" else "validating"
        assert first.state == expected
        assert first.counts.total == 6

        clock.advance(0.5 * WINDOW_S)
        running = await rig.api.status(batch_id)
        assert running.state == SubmissionState.IN_PROGRESS and not running.ended
        clock.advance(0.5 * WINDOW_S)
        done = await rig.ended(batch_id)
        assert done.state == SubmissionState.ENDED and done.error is None
        assert (done.counts.succeeded, done.counts.processing) == (6, 0)

        results = await rig.results(batch_id)
        assert set(results) == {f"r{i}" for i in range(6)}
        for custom_id, result in results.items():
            assert result.error_class is None and result.http_status == 200
            assert result.usage is not None
            _same_answer(result.completion, await rig.online(int(custom_id[1:])))
        if provider == "openai":
            assert all(r.request_id for r in results.values())
        if file_id is not None:
            await rig.api.delete_file(file_id)
            await rig.api.delete_file(file_id)  # already gone: still fine
            by_status = rig.emu.stats()["by_status"]
            assert isinstance(by_status, dict) and by_status.get("404") == 1

    _run(provider, clock, tmp_path, scenario)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_files_stream_over_the_httpx_transport_too(
    provider: str, clock: FakeClock, tmp_path: Path
) -> None:
    """A streamed upload (OpenAI's multipart, Anthropic's joined lines) goes with its
    Content-Length on either transport, and a results file streams back."""

    async def scenario(rig: Rig) -> tuple[SubmissionStatus, dict[str, Any]]:
        return await rig.ended_results(3)

    status, results = _run(provider, clock, tmp_path, scenario, transport="httpx")
    assert status.state == SubmissionState.ENDED
    assert {key for key, result in results.items() if result.completion} == {"r0", "r1", "r2"}


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_streamed_bodies_go_with_their_length_never_chunked(transport: Transport) -> None:
    """Upload endpoints want a Content-Length; a file is sent as it is read, with it."""
    seen: list[tuple[str | None, str | None, bytes]] = []

    async def handler(request: web.Request) -> web.Response:
        headers = request.headers
        seen.append(
            (headers.get("Content-Length"), headers.get("Transfer-Encoding"), await request.read())
        )
        return web.json_response({})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
        sender = make_http_client(transport, 2, 10.0, url)

        async def chunks() -> AsyncIterator[bytes]:
            yield b"abc"
            yield b"defg"

        try:
            async with sender.stream(
                "POST", url, {"content-type": "a/b"}, BodyStream(chunks(), 7)
            ) as answer:
                assert answer.status == 200 and await answer.read() == b"{}"
        finally:
            await sender.aclose()
            await runner.cleanup()

    asyncio.run(main())
    assert seen == [("7", None, b"abcdefg")]


# Partial failures


_INVALID: dict[str, dict[str, Any]] = {
    "openai": {"model": MODELS["openai"]},
    "anthropic": {"model": MODELS["anthropic"], "max_tokens": 10, "messages": []},
    "gemini": {"contents": []},
}
#: (error class, HTTP status) of a server error and of an invalid request, as
#: classify_error names them online.
_SERVER_ERROR = {
    "openai": ("server_error", 500),
    "anthropic": ("api_error", 500),
    "gemini": ("INTERNAL", 500),
}
_INVALID_CLASS = {
    "openai": "invalid_request_error",
    "anthropic": "invalid_request_error",
    "gemini": "INVALID_ARGUMENT",
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_per_request_errors_are_classed_as_online(
    provider: str, clock: FakeClock, tmp_path: Path
) -> None:
    async def scenario(rig: Rig) -> tuple[SubmissionStatus, dict[str, Any]]:
        bad = rig.api.line("bad", HttpCall("", {}, _INVALID[provider]))
        batch_id, _ = await rig.submit("sub-1", 16, extra=[bad])
        clock.advance(WINDOW_S)
        return await rig.ended(batch_id), await rig.results(batch_id)

    status, results = _run(provider, clock, tmp_path, scenario, fault_rate=0.5, faults="500")

    assert status.state == SubmissionState.ENDED
    assert set(results) == {f"r{i}" for i in range(16)} | {"bad"}
    invalid = results.pop("bad")
    assert invalid.completion is None and not invalid.retryable
    assert (invalid.error_class, invalid.http_status) == (_INVALID_CLASS[provider], 400)
    assert invalid.message
    failed = [r for r in results.values() if r.completion is None]
    answered = [r for r in results.values() if r.completion is not None]
    assert failed and answered
    assert {(r.error_class, r.http_status, r.retryable) for r in failed} == {
        (*_SERVER_ERROR[provider], True)
    }
    assert status.counts.succeeded == len(answered)
    assert status.counts.errored == len(failed) + 1


# Expiry and cancel keep what was done


@pytest.mark.parametrize("provider", PROVIDERS)
def test_expiry_keeps_the_answers_that_finished(
    provider: str, clock: FakeClock, tmp_path: Path
) -> None:
    async def scenario(rig: Rig) -> tuple[SubmissionStatus, dict[str, Any]]:
        return await rig.ended_results(10)

    status, results = _run(provider, clock, tmp_path, scenario, batch_expire_rate=1.0)

    assert status.state == SubmissionState.EXPIRED
    assert status.unreturned_class == "expired"
    if provider == "gemini":
        assert results == {}  # an expired Gemini batch has no results: all are sent again
        return
    assert set(results) == {f"r{i}" for i in range(10)}
    done = [r for r in results.values() if r.completion is not None]
    expired = [r for r in results.values() if r.completion is None]
    assert len(done) == 5 and all(r.completion and r.completion.text for r in done)
    assert len(expired) == 5
    assert {(r.error_class, r.retryable) for r in expired} == {("expired", True)}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_cancel_keeps_the_answers_that_finished(
    provider: str, clock: FakeClock, tmp_path: Path
) -> None:
    async def scenario(rig: Rig) -> tuple[SubmissionStatus, dict[str, Any]]:
        batch_id, _ = await rig.submit("sub-1", 10)
        clock.advance(0.5 * WINDOW_S)  # 5 of 10 done
        await rig.api.cancel(batch_id)
        cancelling = await rig.api.status(batch_id)
        if provider != "gemini":  # Gemini shows a cancel as RUNNING until it ends
            assert cancelling.state == SubmissionState.CANCELLING
        assert not cancelling.ended
        clock.advance(0.2 * WINDOW_S)
        status = await rig.ended(batch_id)
        await rig.api.cancel(batch_id)  # ended: nothing to do, no error
        return status, await rig.results(batch_id)

    status, results = _run(provider, clock, tmp_path, scenario)

    assert status.state == SubmissionState.CANCELLED
    assert status.unreturned_class == "canceled"
    if provider == "gemini":
        assert results == {}
        return
    classes = sorted(str(r.error_class) for r in results.values())
    assert classes == ["None"] * 5 + ["canceled"] * 5


# A bad input file


def test_openai_bad_file_fails_validation_with_its_errors(clock: FakeClock, tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> tuple[SubmissionStatus, dict[str, Any]]:
        twice = rig.api.line("r0", rig.call(5))  # r0 again
        batch_id, _ = await rig.submit("sub-1", 3, extra=[twice])
        clock.advance(0.2 * WINDOW_S)
        return await rig.ended(batch_id), await rig.results(batch_id)

    status, results = _run("openai", clock, tmp_path, scenario)

    assert status.state == SubmissionState.FAILED and status.raw_state == "failed"
    assert status.error is not None and status.error.startswith("line 4: duplicate_custom_id: ")
    assert results == {}
    assert status.unreturned_class == "errored"


def test_gemini_bad_file_fails_validation_with_its_error(
    clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gemini_submissions, "INLINE_MAX_REQUESTS", 1)

    async def scenario(rig: Rig) -> SubmissionStatus:
        batch_id, file_id = await rig.submit("sub-1", 2, extra=[b"{not json\n"])
        assert file_id is not None and file_id.startswith("files/")
        clock.advance(0.2 * WINDOW_S)
        return await rig.ended(batch_id)

    status = _run("gemini", clock, tmp_path, scenario)
    assert status.state == SubmissionState.FAILED
    assert status.error is not None and "Line 3" in status.error


def test_anthropic_refuses_a_bad_batch_at_once(clock: FakeClock, tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> SubmissionError:
        with pytest.raises(ValueError, match="custom_id 'no spaces': Anthropic takes"):
            rig.api.line("no spaces", rig.call(0))
        twice = rig.api.line("r0", rig.call(5))
        with pytest.raises(SubmissionError) as refused:
            await rig.submit("sub-1", 2, extra=[twice])
        assert rig.listed() == []
        return refused.value

    error = _run("anthropic", clock, tmp_path, scenario)
    assert (error.status, error.error_class, error.retryable) == (
        400,
        "invalid_request_error",
        False,
    )
    assert "Duplicate custom_id" in str(error)


# Finding a batch whose creation was not recorded


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_find_recovers_a_batch_by_its_submission_id(
    provider: str, clock: FakeClock, tmp_path: Path
) -> None:
    async def scenario(rig: Rig) -> None:
        started = clock.now
        first, _ = await rig.submit("sub-a", 2)
        clock.advance(3600)
        second, _ = await rig.submit("sub-b", 2)
        assert await rig.api.find("sub-a") == first
        assert await rig.api.find("sub-b", FindHints(created_after=clock.now)) == second
        assert await rig.api.find("sub-a", FindHints(created_after=started)) == first
        # Older than the search reaches back (the allowed skew included):
        assert await rig.api.find("sub-a", FindHints(created_after=clock.now + SKEW_S)) is None
        assert await rig.api.find("sub-a", FindHints(exclude=frozenset({first}))) is None
        assert await rig.api.find("sub-c") is None

    _run(provider, clock, tmp_path, scenario)


def test_anthropic_find_matches_time_and_size_and_refuses_to_guess(
    clock: FakeClock, tmp_path: Path
) -> None:
    async def scenario(rig: Rig) -> None:
        before = clock.now
        first, _ = await rig.submit("sub-a", 3)
        # No submission id is kept: without a time and a size there is nothing to go by.
        assert await rig.api.find("sub-a") is None
        assert await rig.api.find("sub-a", FindHints(before, 3)) == first
        assert await rig.api.find("sub-a", FindHints(before, 4)) is None
        assert await rig.api.find("sub-a", FindHints(before + 2 * SKEW_S, 3)) is None

        second, _ = await rig.submit("sub-b", 3, first=3)
        with pytest.raises(AmbiguousSubmission) as ambiguous:
            await rig.api.find("sub-b", FindHints(before, 3))
        assert set(ambiguous.value.candidates) == {first, second}
        assert await rig.api.find("sub-b", FindHints(before, 3, frozenset({first}))) == second

    _run("anthropic", clock, tmp_path, scenario)


class Meddling:
    """A real sender that lets a test meddle: ``before`` may answer a call in the server's
    stead; ``after`` may lose the server's answer (raise) once the server has acted."""

    def __init__(self, inner: HttpSender) -> None:
        self.inner = inner
        self.meddled = 0

    def before(self, method: str, url: str) -> HttpAnswer | None:
        return None

    def after(self, method: str, url: str) -> None:
        return None

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> HttpAnswer:
        answer = self.before(method, url) or await self.inner.request(method, url, headers, body)
        self.after(method, url)
        return answer

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, headers: Mapping[str, str], body: Body = None
    ) -> AsyncIterator[StreamedAnswer]:
        async with self.inner.stream(method, url, headers, body) as streamed:
            content = await streamed.read()  # the server has acted on the whole request
        self.after(method, url)
        yield StreamedAnswer(streamed.status, streamed.headers, _chunks(content))

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _chunks(content: bytes) -> AsyncIterator[bytes]:
    yield content


class LosesCreateAnswer(Meddling):
    """Loses the answer to the first batch creation, as a read timeout or a reset does."""

    def after(self, method: str, url: str) -> None:
        path = httpx.URL(url).path
        creates = path.endswith(("/batches", ":batchGenerateContent"))
        if method == "POST" and creates and not self.meddled:
            self.meddled += 1
            raise HttpTransportError("timeout", True, "TimeoutError: lost on the way back")


class RefusesFirstLook(Meddling):
    """Answers the first GET 503 with a wait hint, as a provider under load does."""

    def before(self, method: str, url: str) -> HttpAnswer | None:
        if method != "GET" or self.meddled:
            return None
        self.meddled += 1
        body = json.dumps({"error": {"message": "busy", "type": "server_error"}}).encode()
        return HttpAnswer(503, {"retry-after": "7"}, body)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_lost_create_answer_never_makes_a_second_batch(
    provider: str, clock: FakeClock, tmp_path: Path
) -> None:
    async def scenario(rig: Rig) -> None:
        assert isinstance(rig.http, LosesCreateAnswer)
        before = clock.now
        if provider == "anthropic":
            # No submission id to look for: the caller decides, with what it recorded.
            with pytest.raises(SubmissionError) as lost:
                await rig.submit("sub-1", 2)
            assert lost.value.maybe_created and lost.value.retryable
            batch_id = await rig.api.find("sub-1", FindHints(before, 2))
            assert batch_id is not None
        else:
            batch_id, _ = await rig.submit("sub-1", 2)  # adopted, not created again
            assert rig.sleeps == []
        assert rig.http.meddled == 1
        assert len(rig.listed()) == 1
        clock.advance(WINDOW_S)
        await rig.ended(batch_id)
        assert set(await rig.results(batch_id)) == {"r0", "r1"}

    _run(provider, clock, tmp_path, scenario, wrap=LosesCreateAnswer)


# Errors of the batch endpoints themselves


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_bad_key_is_fatal_and_never_shown(
    provider: str, clock: FakeClock, tmp_path: Path
) -> None:
    wrong = "sk-wrong-key-that-must-not-leak"

    async def scenario(rig: Rig) -> None:
        path = tmp_path / "in.jsonl"
        path.write_bytes(rig.api.line("r0", rig.call(0)))
        file_id = "file-abc" if provider == "openai" else None
        with pytest.raises(TeacherUnusable) as fatal:
            await rig.api.create("sub-1", path, file_id, rig.teacher.model)
        assert rig.emu.stats()["requests"] == 1  # not retried
        message = str(fatal.value)
        assert wrong not in message and KEY not in message
        assert KEY_ENV in message and "create" in message

    _run(provider, clock, tmp_path, scenario, key=wrong, require_key=KEY)


def test_batch_calls_are_retried_as_online_and_refusals_raise(
    clock: FakeClock, tmp_path: Path
) -> None:
    async def scenario(rig: Rig) -> None:
        batch_id, _ = await rig.submit("sub-1", 1)
        status = await rig.api.status(batch_id)  # a 503, then the answer
        assert status.provider_batch_id == batch_id
        assert len(rig.sleeps) == 1 and rig.sleeps[0] >= 7  # the server's hint, obeyed
        with pytest.raises(SubmissionError) as missing:
            await rig.api.status("batch_nothere")
        assert (missing.value.status, missing.value.retryable) == (404, False)
        assert len(rig.sleeps) == 1  # a 404 is not retried

    _run("openai", clock, tmp_path, scenario, wrap=RefusesFirstLook)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_results_before_the_end_are_refused(
    provider: str, clock: FakeClock, tmp_path: Path
) -> None:
    async def scenario(rig: Rig) -> None:
        batch_id, _ = await rig.submit("sub-1", 1)
        with pytest.raises(SubmissionError, match="has not ended"):
            await rig.results(batch_id)

    _run(provider, clock, tmp_path, scenario)


def test_urls_the_provider_gives_stay_on_the_teachers_host() -> None:
    """A results or upload URL is fetched with the key: never from another host."""
    given = "https://api.elsewhere.test/v1/messages/batches/b1/results?x=1"
    assert on_base(given, "http://127.0.0.1:8080") == (
        "http://127.0.0.1:8080/v1/messages/batches/b1/results?x=1"
    )
    assert on_base(given, "https://gateway.test/anthropic/") == (
        "https://gateway.test/anthropic/v1/messages/batches/b1/results?x=1"
    )
    assert on_base(given, "https://api.elsewhere.test") == given


def _api(provider: str) -> SubmissionApi | None:
    teacher = TeacherConfig(
        name="t", provider=provider, model="m", base_url="http://x.test", api_key_env=KEY_ENV
    )
    return get_provider(provider).submission_api(teacher, make_http_client("httpx", 1, 1.0), None)


def test_each_provider_declares_its_caps_and_local_has_none() -> None:
    caps = {}
    for provider in PROVIDERS:
        api = _api(provider)
        assert api is not None
        caps[provider] = (api.limits.max_requests, api.limits.max_bytes)
    assert caps == {
        "openai": (50_000, 200_000_000),
        "anthropic": (100_000, 256_000_000),
        "gemini": (None, 2_000_000_000),  # Gemini documents no request count
    }
    assert _api("local") is None


def test_a_teachers_submissions_block_lowers_the_caps_its_client_splits_at() -> None:
    """One SubmissionLimits: the provider's (checked at config load), narrowed per teacher."""
    teacher = TeacherConfig(
        name="t",
        provider="gemini",
        model="m",
        base_url="http://x.test",
        delivery="batch",
        submissions=SubmissionOptions(max_requests=1000, max_bytes="1 MB"),  # type: ignore[arg-type]
    )
    api = get_provider("gemini").submission_api(teacher, make_http_client("httpx", 1, 1.0), None)
    assert api is not None
    assert (api.limits.max_requests, api.limits.max_bytes) == (1000, 1_000_000)
    assert api.limits.inline_max_bytes == 20_000_000 and api.limits.one_model


# Splitting a run into submissions


def test_split_lines_cuts_at_whichever_cap_comes_first() -> None:
    by_count = SubmissionLimits(max_requests=3, max_bytes=1000)
    small = [b"%09d\n" % i for i in range(8)]  # 10 bytes each
    assert [len(group) for group in split_lines(small, by_count)] == [3, 3, 2]

    by_bytes = SubmissionLimits(max_requests=100, max_bytes=100)
    large = [b"x" * 39 + b"\n"] * 5  # 40 bytes each: two fit in 100
    assert [len(group) for group in split_lines(large, by_bytes)] == [2, 2, 1]

    both = SubmissionLimits(max_requests=3, max_bytes=100)
    mixed = large[:3] + small[:4]
    groups = list(split_lines(mixed, both))
    assert [len(group) for group in groups] == [2, 3, 2]  # cut at 120 bytes, then at 4 lines
    assert [line for group in groups for line in group] == mixed  # nothing lost, in order
    assert all(sum(map(len, g)) <= 100 and len(g) <= 3 for g in groups)

    exact = SubmissionLimits(max_requests=10, max_bytes=80)
    assert [len(group) for group in split_lines(large, exact)] == [2, 2, 1]  # 80 fits
    assert list(split_lines([], both)) == []
    with pytest.raises(LineTooLarge, match="a request of 101 bytes"):
        list(split_lines([b"x" * 101], both))


# Streaming


@pytest.mark.slow
def test_results_stream_without_holding_the_output(clock: FakeClock, tmp_path: Path) -> None:
    """20,000 answers (over 15 MB of output) are read one by one: the memory Python
    allocates while they are all read stays a small fraction of the output's size."""
    count = 20_000

    async def scenario(rig: Rig) -> tuple[int, int, int]:
        batch_id, _ = await rig.submit("sub-1", count)
        clock.advance(WINDOW_S)
        await rig.ended(batch_id)
        async with aclosing(rig.api.results(batch_id)) as warm:  # a pooled connection
            assert (await anext(warm)).completion is not None
        headers = {"authorization": f"Bearer {KEY}"}
        batch = httpx.get(f"{rig.emu.url}/v1/batches/{batch_id}", headers=headers).json()
        output = f"{rig.emu.url}/v1/files/{batch['output_file_id']}"
        size = int(httpx.get(output, headers=headers).json()["bytes"])
        tracemalloc.start()
        seen = 0
        try:
            async for result in rig.api.results(batch_id):
                assert result.completion is not None
                seen += 1
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return seen, peak, size

    seen, peak, size = _run("openai", clock, tmp_path, scenario)
    assert seen == count
    assert size > 15_000_000
    assert peak < size / 10, (peak, size)
