"""Duplicate and near-duplicate answers over real HTTP: what the curation stages are tested on.

The server's stats must say exactly how many copies it sent, the copies must be what they claim
(verbatim, or a light edit that stays over the near-duplicate threshold), and their usage must
be the tokens of the text really sent.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from distillery.cli import app
from distillery.emulator import EmulatorOptions, RunningEmulator, build_app
from distillery.emulator.completion import Answer, ChatRequest, Finish
from distillery.emulator.duplicates import MEMORY, Copier, Copy, near_copy
from distillery.emulator.server import STATE
from distillery.emulator.text import generate
from distillery.generators.curation.minhash import shingle_jaccard
from distillery.generators.curation.normalize import exact_key
from distillery.generators.tokens import count_tokens

MODEL = "gpt-4o-mini"
CLAUDE = "claude-3-5-haiku"
PROMPTS = 200
THRESHOLD = 0.85

# One client for the module: building one costs ~50 ms (its SSL context), a request ~2 ms.
_HTTP = httpx.Client(timeout=10)


@dataclass(frozen=True)
class Reply:
    """What one request got back, whichever format answered it."""

    text: str
    finish: str
    completion_tokens: int
    model: str


def prompt(i: int) -> str:
    return f"Question {i}: explain how topic number {i} affects teams that ship software."


def ask(url: str, i: int, *, anthropic: bool = False, max_tokens: int | None = None) -> Reply:
    """Prompt ``i`` over OpenAI's or Anthropic's format, checked and reduced to a :class:`Reply`."""
    messages = [{"role": "user", "content": prompt(i)}]
    if anthropic:
        body: dict[str, Any] = {"model": CLAUDE, "messages": messages}
        body["max_tokens"] = max_tokens or 4096
        response = _HTTP.post(url + "/v1/messages", json=body)
        assert response.status_code == 200, response.text
        payload = response.json()
        text = "".join(block["text"] for block in payload["content"])
        finish = "length" if payload["stop_reason"] == "max_tokens" else "stop"
        return Reply(text, finish, payload["usage"]["output_tokens"], CLAUDE)
    body = {"model": MODEL, "messages": messages}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    response = _HTTP.post(url + "/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    (choice,) = payload["choices"]
    usage = payload["usage"]
    return Reply(
        choice["message"]["content"], choice["finish_reason"], usage["completion_tokens"], MODEL
    )


def run(options: EmulatorOptions, count: int = PROMPTS) -> tuple[list[Reply], dict[str, Any]]:
    """``count`` distinct prompts, one after another (every fifth in Anthropic's format)."""
    with RunningEmulator(options) as emu:
        replies = [ask(emu.url, i, anthropic=i % 5 == 4) for i in range(count)]
        stats = emu.stats()
    return replies, stats


def check_usage(replies: list[Reply]) -> None:
    """Usage is tiktoken's count of the text really sent, copy or not (as the other tests)."""
    for reply in replies:
        assert reply.completion_tokens == count_tokens(reply.text, reply.model)
        assert reply.finish == "stop"


def shingles(text: str) -> set[tuple[str, ...]]:
    """A cheap pre-filter only; every decision below is :func:`shingle_jaccard`'s."""
    words = text.casefold().split()
    return set(zip(*(words[i:] for i in range(5)), strict=False))


def test_dup_rate_repeats_earlier_answers_verbatim() -> None:
    replies, stats = run(EmulatorOptions(seed=3, dup_rate=0.3))
    seen: set[str] = set()
    verbatim = 0
    for reply in replies:
        verbatim += reply.text in seen
        seen.add(reply.text)
    assert 0.2 * PROMPTS <= verbatim <= 0.4 * PROMPTS
    assert stats["dup_answers"] == verbatim
    assert stats["near_dup_answers"] == 0
    assert stats["served_ok"] == PROMPTS  # copies are clean answers
    check_usage(replies)
    assert any(r.text in seen for r in replies if r.model == CLAUDE)  # across formats too


def test_near_dup_rate_sends_light_edits_of_earlier_answers() -> None:
    replies, stats = run(EmulatorOptions(seed=4, near_dup_rate=0.3))
    earlier: list[tuple[str, set[tuple[str, ...]]]] = []
    near: list[float] = []
    for reply in replies:
        own = shingles(reply.text)
        assert all(reply.text != text for text, _ in earlier)  # none is verbatim
        similar = [text for text, theirs in earlier if len(own & theirs) >= 0.5 * len(own)]
        if similar:
            best = max(shingle_jaccard(reply.text, text, shingle_words=5) for text in similar)
            assert best >= THRESHOLD
            key = exact_key(reply.text, casefold=True)
            assert all(key != exact_key(text, casefold=True) for text in similar)
            near.append(best)
        earlier.append((reply.text, own))
    assert 0.2 * PROMPTS <= len(near) <= 0.4 * PROMPTS
    assert stats["near_dup_answers"] == len(near)
    assert stats["dup_answers"] == 0
    assert stats["served_ok"] == PROMPTS
    assert max(near) < 1.0
    check_usage(replies)


def test_both_rates_together_are_counted_apart() -> None:
    replies, stats = run(EmulatorOptions(seed=5, dup_rate=0.25, near_dup_rate=0.25), 120)
    texts = [r.text for r in replies]
    verbatim = sum(text in texts[:i] for i, text in enumerate(texts))
    assert stats["dup_answers"] == verbatim
    assert stats["dup_answers"] + stats["near_dup_answers"] <= 120
    assert 0.3 * 120 <= stats["dup_answers"] + stats["near_dup_answers"] <= 0.7 * 120
    assert stats["near_dup_answers"] > 10
    check_usage(replies)


@pytest.mark.parametrize("tpm", [None, 10**9])  # with tpm, the answer is made for its charge
@pytest.mark.parametrize("kind", ["dup", "near"])
def test_a_copy_is_cut_to_max_tokens_and_billed_as_sent(kind: str, tpm: int | None) -> None:
    rate = "dup_rate" if kind == "dup" else "near_dup_rate"
    options = EmulatorOptions.model_validate({"seed": 6, "tpm": tpm, "window_s": 1, rate: 1.0})
    with RunningEmulator(options) as emu:
        first = ask(emu.url, 0)  # nothing to copy yet: a fresh answer
        whole = ask(emu.url, 1)  # a copy of the first
        cut = ask(emu.url, 2, max_tokens=7)
        claude = ask(emu.url, 3, anthropic=True, max_tokens=7)
        stats = emu.stats()
    assert first.finish == whole.finish == "stop"
    if kind == "dup":
        assert whole.text == first.text
    else:
        assert whole.text != first.text
        assert shingle_jaccard(whole.text, first.text, shingle_words=5) >= THRESHOLD
    for reply in (cut, claude):
        assert reply.finish == "length"
        assert reply.completion_tokens == 7 == count_tokens(reply.text, reply.model)
    if kind == "dup":
        assert first.text.startswith(cut.text)
        assert first.text.startswith(claude.text)
    assert stats["served_ok"] == 4
    assert stats["dup_answers" if kind == "dup" else "near_dup_answers"] == 3
    assert stats["completion_tokens"] == sum(
        r.completion_tokens for r in (first, whole, cut, claude)
    )


def test_only_clean_answers_are_copied_or_remembered() -> None:
    options = EmulatorOptions(seed=7, dup_rate=1.0, fault_rate=0.5, faults=["length"])
    with RunningEmulator(options) as emu:
        for i in range(40):
            response = _HTTP.post(
                emu.url + "/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": prompt(i)}]},
            )
            assert response.status_code == 200
        stats: dict[str, Any] = emu.stats()
    assert stats["served_ok"] + stats["served_flagged"] == 40
    assert 5 < stats["served_flagged"] < 35
    assert stats["dup_answers"] == stats["served_ok"] - 1  # all but the first clean answer


def test_a_seeded_run_is_reproducible() -> None:
    options = EmulatorOptions(seed=8, dup_rate=0.2, near_dup_rate=0.2)
    first, first_stats = run(options, 40)
    again, again_stats = run(options, 40)
    other, _ = run(EmulatorOptions(seed=9, dup_rate=0.2, near_dup_rate=0.2), 40)
    assert first == again
    assert first_stats["dup_answers"] == again_stats["dup_answers"]
    assert first != other


def test_no_copier_without_rates() -> None:
    assert build_app(EmulatorOptions())[STATE].copier is None
    assert build_app(EmulatorOptions(near_dup_rate=0.1))[STATE].copier is not None
    _, stats = run(EmulatorOptions(), 10)
    assert stats["dup_answers"] == stats["near_dup_answers"] == 0


def test_near_copies_keep_jaccard_over_many_draws() -> None:
    """Over the whole length range, the shortest answers included: never under the threshold,
    never the same text, and only a text too short for any edit is left to a verbatim copy."""
    rng = random.Random(1)
    sources = [generate(f"k{i}".encode(), f"tell me about thing {i}") for i in range(400)]
    sources.sort(key=lambda text: len(text.split()))
    values: list[float] = []
    for source in sources[:100] + sources[100::3]:  # every short one, a sample of the rest
        for _ in range(3):
            edited = near_copy(source, rng)
            assert edited is not None
            assert exact_key(edited, casefold=True) != exact_key(source, casefold=True)
            values.append(shingle_jaccard(edited, source, shingle_words=5))
    assert min(values) >= THRESHOLD
    assert max(values) < 1.0
    assert len(sources[0].split()) < 25  # the short end really was exercised
    assert near_copy("Too short to edit.", rng) is None


def test_memory_holds_the_last_fresh_answers_only() -> None:
    copier = Copier(0.5, 0.0, seed=1)
    remembered: list[str] = []
    copies = 0
    for i in range(3 * MEMORY):
        chat = ChatRequest(MODEL, [{"role": "user", "content": str(i)}])
        fresh = Answer(f"fresh answer number {i}", Finish.STOP, 1, 1)
        answer, copy = copier.answer(fresh, chat)
        if copy is None:
            assert answer is fresh
            remembered.append(fresh.text)
        else:
            copies += 1
            assert copy is Copy.DUP
            assert answer.text in remembered[-MEMORY:]  # a recent fresh answer, never a copy
            assert answer.completion_tokens == count_tokens(answer.text, MODEL)
    assert len(remembered) > MEMORY + 200  # old ones really were pushed out
    assert 0.4 * 3 * MEMORY < copies < 0.6 * 3 * MEMORY


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"dup_rate": 1.5}, "less than or equal to 1"),
        ({"near_dup_rate": -0.1}, "greater than or equal to 0"),
        ({"dup_rate": 0.6, "near_dup_rate": 0.5}, "over 1"),
    ],
)
def test_rates_are_validated(settings: dict[str, float], words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        EmulatorOptions.model_validate(settings)
    assert words in str(caught.value)
    assert EmulatorOptions(dup_rate=0.7, near_dup_rate=0.3).copies


def test_cli_rejects_rates_over_one_in_one_line() -> None:
    result = CliRunner().invoke(app, ["emulator", "--dup-rate", "0.7", "--near-dup-rate", "0.4"])
    assert result.exit_code == 2
    assert "--near-dup-rate" in result.output
    assert "over 1" in result.output
