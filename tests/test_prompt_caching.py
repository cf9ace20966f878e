"""Prompt caching: usage normalised per provider, priced at the cache rates, and the emulator
answering with each API's cache fields (our client and the official SDKs over loopback HTTP).

Anthropic's ``input_tokens`` leaves out the tokens read from and written to the cache; OpenAI's
and Gemini's prompt counts include their cached part. Found against llama.cpp's
``/v1/messages`` (tests/test_llamacpp_conformance.py), where every row said prompt_tokens = 1.
"""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path
from typing import Any

import anthropic
import openai
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google import genai
from google.genai import types as genai_types

from distillery.config import TeacherConfig
from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.emulator.caching import MIN_CACHED_TOKENS
from distillery.emulator.retarget import base_url
from distillery.generators.client import TeacherClient
from distillery.generators.http import make_http_client
from distillery.generators.pricing import PriceEntry, answer_cost, cost_usd, load_prices, price_for
from distillery.generators.providers.base import Completion
from distillery.generators.providers.registry import get_provider
from distillery.generators.tokens import count_message_tokens
from distillery.storage.catalog import open_catalog
from distillery.storage.schema import TABLES
from distillery.storage.shards import committed_shards, write_shard

from .test_storage import sample

# A system prompt well past every cache's minimum, shared by the requests below.
SYSTEM = " ".join(f"Rule {i}: answer plainly and cite the glacier survey." for i in range(160))
KEY = "sk-cache"


def teacher(url: str, provider: str, model: str, **params: Any) -> TeacherConfig:
    base = base_url(url, provider)
    spec = {"name": "t", "provider": provider, "model": model, "base_url": base}
    return TeacherConfig.model_validate({**spec, "params": params})


def ask(spec: TeacherConfig, *questions: str) -> list[Completion]:
    """Each question after the shared system prompt, in turn, through distillery's client."""

    async def run() -> list[Completion]:
        http = make_http_client("httpx", 2, 10.0, spec.base_url)
        done = []
        try:
            client = TeacherClient(spec, get_provider(spec.provider), http)
            for question in questions:
                outcome = await client.complete(
                    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
                )
                assert outcome.completion is not None, outcome.failure
                done.append(outcome.completion)
        finally:
            await http.aclose()
        return done

    return asyncio.run(run())


def whole_prompt(model: str, question: str) -> int:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return count_message_tokens(messages, model)


def prefix(model: str) -> int:
    return count_message_tokens([{"role": "system", "content": SYSTEM}], model)


@pytest.fixture(scope="module")
def emu() -> Any:
    with RunningEmulator(EmulatorOptions(seed=4)) as running:
        yield running


# ------------------------------------------------------------------ normalising usage


def test_anthropic_input_tokens_exclude_the_cache_so_the_client_adds_it_back() -> None:
    # llama.cpp's /v1/messages answer to a repeated system prompt, verbatim.
    usage = {"cache_read_input_tokens": 24, "input_tokens": 13, "output_tokens": 8}
    done = get_provider("anthropic").parse_success(
        {"id": "m", "model": "x", "content": [], "stop_reason": "max_tokens", "usage": usage}, {}
    )
    assert (done.prompt_tokens, done.cached_tokens, done.cache_write_tokens) == (37, 24, None)
    written = {**usage, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 100}
    done = get_provider("anthropic").parse_success(
        {"id": "m", "model": "x", "content": [], "stop_reason": "end_turn", "usage": written}, {}
    )
    assert (done.prompt_tokens, done.cached_tokens, done.cache_write_tokens) == (113, 0, 100)


def cache_price(batch_discount: float = 0.0) -> PriceEntry:
    """A price with every rate apart: input 2, cached input 0.2, cache writes 2.5, output 10."""
    return PriceEntry(
        provider="p",
        model="m",
        input=2.0,
        output=10.0,
        cached_input=0.2,
        cache_write_input=2.5,
        batch_discount=batch_discount,
        as_of=date(2026, 1, 1),
    )


def test_cost_prices_reads_at_the_cached_rate_and_writes_at_the_premium() -> None:
    price = cache_price()
    # 1000 prompt tokens: 600 read, 300 written, 100 plain; 50 out.
    expected = (100 * 2.0 + 600 * 0.2 + 300 * 2.5 + 50 * 10.0) / 1e6
    assert cost_usd(price, 1000, 50, 600, 300) == pytest.approx(expected)
    # No write price: writes cost what plain input costs (OpenAI, Gemini).
    plain = price.model_copy(update={"cache_write_input": None})
    assert cost_usd(plain, 1000, 50, 600, 300) == pytest.approx((400 * 2 + 600 * 0.2 + 500) / 1e6)
    # Counts beyond the prompt are clamped, never a negative uncached part.
    assert cost_usd(price, 10, 0, 8, 8) == pytest.approx((8 * 0.2 + 2 * 2.5) / 1e6)


def test_anthropic_prices_carry_the_cache_write_premium() -> None:
    for model in ("claude-sonnet-4-5", "claude-3-5-haiku-latest", "claude-opus-4-1"):
        entry = price_for(load_prices(), "anthropic", model)
        assert entry is not None and entry.cache_write_input is not None
        assert entry.cache_write_input == pytest.approx(entry.input * 1.25)


# ------------------------------------------------------------------ over HTTP, our client


def test_cached_anthropic_answer_costs_what_anthropic_bills(emu: RunningEmulator) -> None:
    model = "claude-sonnet-4-5"
    spec = teacher(
        emu.url,
        "anthropic",
        model,
        max_tokens=40,
        extra_body={"cache_control": {"type": "ephemeral"}},
    )
    first, second = ask(spec, "Why do glaciers move?", "Why are glaciers blue?")
    cached = prefix(model)
    assert cached >= MIN_CACHED_TOKENS
    # Every input token is in prompt_tokens, cached or not.
    assert first.prompt_tokens == whole_prompt(model, "Why do glaciers move?")
    assert second.prompt_tokens == whole_prompt(model, "Why are glaciers blue?")
    assert (first.cache_write_tokens, first.cached_tokens) == (cached, 0)
    assert (second.cache_write_tokens, second.cached_tokens) == (0, cached)
    price = price_for(load_prices(), "anthropic", model)
    assert price is not None and price.cached_input is not None
    assert price.cache_write_input is not None
    assert second.prompt_tokens is not None and second.completion_tokens is not None
    plain = second.prompt_tokens - cached
    billed = (
        plain * price.input + cached * price.cached_input + second.completion_tokens * price.output
    ) / 1e6
    assert answer_cost(price, second) == pytest.approx(billed)
    # What the row said before: only the uncached tokens, all at the input price.
    assert answer_cost(price, second) != pytest.approx(
        cost_usd(price, plain, second.completion_tokens)
    )
    assert first.prompt_tokens is not None and first.completion_tokens is not None
    written = (
        (first.prompt_tokens - cached) * price.input
        + cached * price.cache_write_input
        + first.completion_tokens * price.output
    ) / 1e6
    assert answer_cost(price, first) == pytest.approx(written)


def test_anthropic_caches_only_what_a_request_marks(emu: RunningEmulator) -> None:
    spec = teacher(emu.url, "anthropic", "claude-haiku-4-5", max_tokens=20)
    first, second = ask(spec, "Is ice a mineral?", "Is snow a mineral?")
    assert (first.cached_tokens, first.cache_write_tokens) == (0, 0)
    assert (second.cached_tokens, second.cache_write_tokens) == (0, 0)


@pytest.mark.parametrize(
    ("provider", "model"), [("openai", "gpt-4o-mini"), ("gemini", "gemini-2.5-flash")]
)
def test_openai_and_gemini_count_the_cached_part_in_the_prompt(
    emu: RunningEmulator, provider: str, model: str
) -> None:
    spec = teacher(emu.url, provider, model, max_tokens=20)
    first, second = ask(spec, "What is a moraine?", "What is a drumlin?")
    assert first.prompt_tokens == whole_prompt(model, "What is a moraine?")
    assert second.prompt_tokens == whole_prompt(model, "What is a drumlin?")
    assert not first.cached_tokens and not first.cache_write_tokens
    expected = prefix(model)
    if provider == "openai":
        expected -= (expected - MIN_CACHED_TOKENS) % 128  # OpenAI's steps of 128 tokens
    assert second.cached_tokens == expected
    assert not second.cache_write_tokens


def test_gemini_client_at_either_api_version_gets_the_same_answer(emu: RunningEmulator) -> None:
    """Not caching: the stable /v1 path (issue 16, item 5), through the same ``ask`` helper."""
    beta = teacher(emu.url, "gemini", "gemini-2.0-flash", max_tokens=30, seed=1)
    stable = beta.model_copy(update={"api_version": "v1"})
    (at_beta,) = ask(beta, "Where do icebergs calve?")
    (at_stable,) = ask(stable, "Where do icebergs calve?")
    assert at_stable.text == at_beta.text and at_stable.text
    assert at_stable.model_version == "gemini-2.0-flash-001"


# ------------------------------------------------------------------ the official SDKs


@pytest.fixture
def fresh() -> Any:
    """An emulator whose prompt cache is empty (the module's has seen the shared prompt)."""
    with RunningEmulator(EmulatorOptions(seed=4)) as running:
        yield running


def test_sdks_read_the_cache_fields(fresh: RunningEmulator) -> None:
    emu = fresh
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    claude = anthropic.Anthropic(base_url=emu.url, api_key=KEY, max_retries=0, timeout=10)
    answers = [
        claude.messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=10,
            system=system,  # type: ignore[arg-type]
            messages=[{"role": "user", "content": question}],
        )
        for question in ("SDK one?", "SDK two?")
    ]
    cached = prefix("claude-3-5-haiku-latest")
    assert answers[0].usage.cache_creation_input_tokens == cached
    assert answers[0].usage.cache_creation is not None
    assert answers[0].usage.cache_creation.ephemeral_5m_input_tokens == cached
    assert answers[1].usage.cache_read_input_tokens == cached
    assert answers[1].usage.input_tokens == whole_prompt("claude-3-5-haiku", "SDK two?") - cached

    gpt = openai.OpenAI(base_url=emu.url + "/v1", api_key=KEY, max_retries=0, timeout=10)
    chats = [
        gpt.chat.completions.create(
            model="gpt-4.1-mini",
            max_completion_tokens=10,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
        )
        for q in ("SDK three?", "SDK four?")
    ]
    for chat in chats:
        assert chat.usage is not None and chat.usage.prompt_tokens_details is not None
    assert chats[0].usage and chats[0].usage.prompt_tokens_details
    assert chats[0].usage.prompt_tokens_details.cached_tokens == 0
    assert chats[1].usage and chats[1].usage.prompt_tokens_details
    assert chats[1].usage.prompt_tokens_details.cached_tokens
    assert chats[1].usage.prompt_tokens_details.cached_tokens >= MIN_CACHED_TOKENS

    client = genai.Client(api_key=KEY, http_options=genai_types.HttpOptions(base_url=emu.url))
    config = genai_types.GenerateContentConfig(system_instruction=SYSTEM, max_output_tokens=10)
    replies = [
        client.models.generate_content(model="gemini-2.0-flash", contents=q, config=config)
        for q in ("SDK five?", "SDK six?")
    ]
    assert replies[0].usage_metadata is not None and replies[1].usage_metadata is not None
    assert replies[0].usage_metadata.cached_content_token_count is None
    assert replies[1].usage_metadata.cached_content_token_count == prefix("gemini-2.0-flash")


# ------------------------------------------------------------------ storage


def test_shards_from_before_cache_write_tokens_read_with_new_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for table in ("samples", "rejected"):
        old_schema = [f for f in TABLES[table] if f.name != "cache_write_tokens"]
        monkeypatch.setitem(TABLES, table, pa.schema(old_schema))
    write_shard(tmp_path, "samples", "r1", [sample("old")], 0)
    monkeypatch.undo()
    old_file = committed_shards(tmp_path, "samples", "r1")[0]
    assert "cache_write_tokens" not in pq.read_schema(old_file).names  # really an old shard
    new = {**sample("new", run_id="r2"), "cached_tokens": 2, "cache_write_tokens": 1}
    write_shard(tmp_path, "samples", "r2", [new], 0)
    rows = open_catalog(tmp_path).execute(
        "SELECT sample_id, cached_tokens, cache_write_tokens FROM samples ORDER BY 1"
    )
    assert rows.fetchall() == [("new", 2, 1), ("old", None, None)]
