"""Reasoning traces: each provider's format over real HTTP (our client and the official SDKs),
the config's checks, the trace filter, inline <think> splitting, sample ids and the plan."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import pyarrow as pa
import pytest
from google import genai
from google.genai import types as genai_types
from hypothesis import given
from hypothesis import strategies as st

from distillery.config import TeacherConfig, load_config
from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.emulator.retarget import base_url
from distillery.errors import ConfigError, UserInputError
from distillery.generators.client import TeacherClient
from distillery.generators.filters import build_filters
from distillery.generators.http import make_http_client
from distillery.generators.plan import ASSUMED_COMPLETION_TOKENS, plan_job
from distillery.generators.prompts import Prompt
from distillery.generators.providers.base import Completion
from distillery.generators.providers.registry import get_provider
from distillery.generators.providers.traces import split_inline
from distillery.generators.records import sample_id_for
from distillery.generators.tokens import count_tokens

QUESTION = "Why do glaciers carve U-shaped valleys? Think it through."


def teacher(url: str, provider: str, model: str, **extra: Any) -> TeacherConfig:
    base = base_url(url, provider)
    spec = {"name": "t", "provider": provider, "model": model, "base_url": base, **extra}
    return TeacherConfig.model_validate(spec)


def ask(spec: TeacherConfig) -> Completion:
    """One request through distillery's own client, over loopback HTTP."""

    async def run() -> Completion:
        http = make_http_client("httpx", 2, 10.0, spec.base_url)
        try:
            client = TeacherClient(spec, get_provider(spec.provider), http)
            outcome = await client.complete([{"role": "user", "content": QUESTION}])
        finally:
            await http.aclose()
        assert outcome.completion is not None, outcome.failure
        return outcome.completion

    return asyncio.run(run())


@pytest.fixture(scope="module")
def emu() -> Any:
    with RunningEmulator(EmulatorOptions(seed=3)) as running:
        yield running


@pytest.fixture(scope="module")
def withholding() -> Any:
    with RunningEmulator(EmulatorOptions(seed=3, reasoning_redact_rate=1.0)) as running:
        yield running


def tokens_of(completion: Completion, model: str) -> int:
    return count_tokens(completion.reasoning_text or "", model) + count_tokens(
        completion.text, model
    )


# ------------------------------------------------------------------ our client, per format


@pytest.mark.parametrize(
    ("model", "shown"), [("claude-3-7-sonnet", "full"), ("claude-sonnet-4", "summary")]
)
def test_anthropic_thinking_blocks_become_the_trace(
    emu: RunningEmulator, model: str, shown: str
) -> None:
    spec = teacher(emu.url, "anthropic", model, reasoning={"budget_tokens": 1024})
    done = ask(spec)
    assert done.reasoning_visibility == shown
    assert done.reasoning_text and done.text and done.reasoning_text not in done.text
    # output_tokens bills the thinking: answer + trace, counted once.
    assert done.completion_tokens == tokens_of(done, model)
    assert done.reasoning_tokens is None  # Anthropic reports no separate count


def test_anthropic_adaptive_thinking_and_omitted_display(emu: RunningEmulator) -> None:
    adaptive = ask(teacher(emu.url, "anthropic", "claude-opus-4-6", reasoning={"effort": "low"}))
    assert adaptive.reasoning_visibility == "summary" and adaptive.reasoning_text
    omitted = {"type": "enabled", "budget_tokens": 1024, "display": "omitted"}
    spec = teacher(
        emu.url,
        "anthropic",
        "claude-sonnet-4-5",
        reasoning={"budget_tokens": 1024},
        params={"extra_body": {"thinking": omitted}},
    )
    hidden = ask(spec)
    assert (hidden.reasoning_visibility, hidden.reasoning_text) == ("hidden", None)


def test_anthropic_redacted_thinking(withholding: RunningEmulator) -> None:
    spec = teacher(withholding.url, "anthropic", "claude-3-7-sonnet", reasoning={"effort": "low"})
    done = ask(spec)
    assert (done.reasoning_visibility, done.reasoning_text) == ("redacted", None)
    assert done.text
    assert done.completion_tokens is not None
    assert done.completion_tokens > count_tokens(done.text, "claude-3-7-sonnet")


def test_gemini_thought_parts_and_hidden_thoughts(
    emu: RunningEmulator, withholding: RunningEmulator
) -> None:
    spec = teacher(emu.url, "gemini", "gemini-2.5-flash", reasoning={"budget_tokens": 200})
    done = ask(spec)
    assert done.reasoning_visibility == "summary"
    assert done.reasoning_text and done.reasoning_text not in done.text
    assert done.reasoning_tokens == count_tokens(done.reasoning_text, "gemini-2.5-flash") <= 200
    # candidatesTokenCount excludes thoughts; the completion counts both, once.
    assert done.completion_tokens == tokens_of(done, "gemini-2.5-flash")
    hidden = ask(teacher(withholding.url, "gemini", "gemini-2.5-flash", reasoning={}))
    assert (hidden.reasoning_visibility, hidden.reasoning_text) == ("hidden", None)
    assert hidden.reasoning_tokens and hidden.reasoning_tokens > 0


def test_openai_compatible_reasoning_content(emu: RunningEmulator) -> None:
    done = ask(teacher(emu.url, "openai", "deepseek-r1", reasoning={}))
    assert done.reasoning_visibility == "full"
    assert done.reasoning_text and "<think>" not in done.text
    assert done.reasoning_tokens == count_tokens(done.reasoning_text, "deepseek-r1")
    assert done.completion_tokens == tokens_of(done, "deepseek-r1")


def test_openai_reasoning_models_hide_the_trace(emu: RunningEmulator) -> None:
    done = ask(teacher(emu.url, "openai", "o4-mini", reasoning={"effort": "high"}))
    assert (done.reasoning_visibility, done.reasoning_text) == ("hidden", None)
    assert done.reasoning_tokens and done.completion_tokens
    # completion_tokens already includes the reasoning tokens: the answer is the rest.
    assert done.completion_tokens - done.reasoning_tokens == count_tokens(done.text, "o4-mini")


def test_inline_think_tags_are_split_out() -> None:
    with RunningEmulator(EmulatorOptions(seed=3, openai_reasoning="inline")) as emu:
        plain = ask(teacher(emu.url, "openai", "qwq-32b"))
        assert plain.text.startswith("<think>")  # without reasoning: the answer as sent
        assert plain.reasoning_text is None
        done = ask(teacher(emu.url, "openai", "qwq-32b", reasoning={}))
    assert done.reasoning_visibility == "full"
    assert done.reasoning_text and "<think>" not in done.text and "</think>" not in done.text
    assert plain.text.endswith(done.text)
    assert done.reasoning_text in plain.text


def test_trace_and_answer_share_max_tokens(emu: RunningEmulator) -> None:
    spec = teacher(
        emu.url,
        "anthropic",
        "claude-3-7-sonnet",
        reasoning={"budget_tokens": 1024},
        params={"max_tokens": 1030},
    )
    done = ask(spec)
    assert done.completion_tokens is not None and done.completion_tokens <= 1030
    tight = teacher(emu.url, "gemini", "gemini-2.5-flash", reasoning={}, params={"max_tokens": 5})
    cut = ask(tight)
    assert (cut.text, cut.finish_reason) == ("", "length")
    assert cut.reasoning_tokens == 5


def test_request_fields_per_provider() -> None:
    url = "http://127.0.0.1:9"
    body = (
        get_provider("anthropic")
        .build_call(
            teacher(url, "anthropic", "claude-sonnet-4", reasoning={"budget_tokens": 2000}),
            [],
            None,
        )
        .body
    )
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    assert body["max_tokens"] == 2000 + 4096  # room for the answer beside the thinking
    body = (
        get_provider("anthropic")
        .build_call(
            teacher(url, "anthropic", "claude-opus-4-6", reasoning={"effort": "high"}), [], None
        )
        .body
    )
    assert (body["thinking"], body["output_config"]) == ({"type": "adaptive"}, {"effort": "high"})
    body = (
        get_provider("gemini")
        .build_call(teacher(url, "gemini", "gemini-3-pro", reasoning={"effort": "low"}), [], None)
        .body
    )
    assert body["generationConfig"]["thinkingConfig"] == {
        "includeThoughts": True,
        "thinkingLevel": "LOW",
    }
    body = (
        get_provider("openai")
        .build_call(teacher(url, "openai", "o3", reasoning={"effort": "medium"}), [], None)
        .body
    )
    assert body["reasoning_effort"] == "medium"
    assert (
        "reasoning_effort"
        not in get_provider("openai").build_call(teacher(url, "openai", "o3"), [], None).body
    )


# ------------------------------------------------------------------ the official SDKs


def test_sdks_parse_the_traces(emu: RunningEmulator, withholding: RunningEmulator) -> None:
    messages: Any = [{"role": "user", "content": QUESTION}]
    client = openai.OpenAI(base_url=emu.url + "/v1", api_key="k", max_retries=0)
    answer = client.chat.completions.create(model="deepseek-r1", messages=messages)
    message = answer.choices[0].message
    assert message.content and (message.model_extra or {}).get("reasoning_content")
    assert answer.usage and answer.usage.completion_tokens_details
    assert answer.usage.completion_tokens_details.reasoning_tokens
    hidden = client.chat.completions.create(
        model="o3-mini", messages=messages, reasoning_effort="low"
    )
    assert "reasoning_content" not in (hidden.choices[0].message.model_extra or {})

    claude = anthropic.Anthropic(base_url=emu.url, api_key="k", max_retries=0)
    reply = claude.messages.create(
        model="claude-3-7-sonnet",
        max_tokens=3000,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=messages,
    )
    assert [block.type for block in reply.content] == ["thinking", "text"]
    first = reply.content[0]
    assert isinstance(first, anthropic.types.ThinkingBlock) and first.signature
    redacted = anthropic.Anthropic(base_url=withholding.url, api_key="k", max_retries=0)
    reply = redacted.messages.create(
        model="claude-3-7-sonnet",
        max_tokens=3000,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=messages,
    )
    assert isinstance(reply.content[0], anthropic.types.RedactedThinkingBlock)
    with pytest.raises(anthropic.BadRequestError, match="budget_tokens"):
        claude.messages.create(
            model="claude-3-7-sonnet",
            max_tokens=1024,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=messages,
        )

    gemini = genai.Client(
        api_key="k",
        http_options=genai_types.HttpOptions(base_url=emu.url, api_version="v1beta"),
    )
    result = gemini.models.generate_content(
        model="gemini-2.5-flash",
        contents=QUESTION,
        config=genai_types.GenerateContentConfig(
            thinking_config=genai_types.ThinkingConfig(include_thoughts=True, thinking_budget=256)
        ),
    )
    parts = result.candidates[0].content.parts  # type: ignore[index,union-attr]
    assert parts is not None and parts[0].thought and not parts[-1].thought
    assert result.usage_metadata and result.usage_metadata.thoughts_token_count
    assert result.text == parts[-1].text  # the SDK's text leaves the thoughts out


# ------------------------------------------------------------------ config


BASE = {
    "anthropic": "provider: anthropic\n    model: claude-sonnet-4\n    base_url: http://h",
    "gemini": "provider: gemini\n    model: gemini-2.5-flash\n    base_url: http://h",
    "openai": "provider: openai\n    model: o3\n    base_url: http://h/v1",
}


@pytest.mark.parametrize(
    ("provider", "extra", "expected"),
    [
        (
            "anthropic",
            "reasoning: {budget_tokens: 4096}\n    params: {max_tokens: 4096}",
            "teachers[0]: reasoning.budget_tokens: 4096 must be below params.max_tokens 4096",
        ),
        (
            "anthropic",
            "reasoning: {budget_tokens: 500}",
            "teachers[0]: reasoning.budget_tokens: 500 is below Anthropic's minimum of 1024",
        ),
        ("anthropic", "reasoning: {}", "teachers[0]: reasoning: anthropic needs budget_tokens"),
        (
            "anthropic",
            "reasoning: {effort: low}\n    params: {temperature: 0.3}",
            "teachers[0]: params.temperature: Anthropic extended thinking allows only 1",
        ),
        (
            "openai",
            "reasoning: {budget_tokens: 2048}",
            "teachers[0]: reasoning.budget_tokens: the OpenAI wire format has no thinking budget",
        ),
        (
            "gemini",
            "reasoning: {budget_tokens: 2048, effort: high}",
            "teachers[0].reasoning: set budget_tokens or effort, not both",
        ),
        ("gemini", "reasoning: {effort: extreme}", "teachers[0].reasoning.effort: Input should be"),
        (
            "gemini",
            "reasoning: {enabled: false, effort: low}",
            "teachers[0].reasoning: enabled is false: remove budget_tokens and effort",
        ),
        ("openai", "reasoning: {budget: 5}", "teachers[0].reasoning.budget: unknown field"),
    ],
)
def test_bad_reasoning_settings_are_one_line_errors(
    tmp_path: Path, provider: str, extra: str, expected: str
) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(
        f"prompts: {{path: p.jsonl}}\nteachers:\n  - name: t\n    {BASE[provider]}\n    {extra}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{config}: {expected}"), message


def test_sample_ids_change_with_reasoning_and_not_without() -> None:
    plain = teacher("http://h", "gemini", "gemini-2.5-flash", params={"temperature": 0.5})
    legacy = json.dumps(
        ["p1", "t", "gemini", "gemini-2.5-flash", {"temperature": 0.5}, 0], sort_keys=True
    )
    # A teacher without reasoning keeps the id it had before reasoning existed.
    assert (
        sample_id_for("p1", plain, 0)
        == hashlib.blake2b(legacy.encode(), digest_size=16).hexdigest()
    )
    ids = {
        sample_id_for("p1", spec, 0)
        for spec in (
            plain,
            plain.model_copy(update={"reasoning": plain.reasoning}),
            teacher(
                "http://h", "gemini", "gemini-2.5-flash", params={"temperature": 0.5}, reasoning={}
            ),
            teacher(
                "http://h",
                "gemini",
                "gemini-2.5-flash",
                params={"temperature": 0.5},
                reasoning={"effort": "low"},
            ),
            teacher(
                "http://h",
                "gemini",
                "gemini-2.5-flash",
                params={"temperature": 0.5},
                reasoning={"effort": "high"},
            ),
        )
    }
    assert len(ids) == 4
    spec = teacher("http://h", "gemini", "gemini-2.5-flash", reasoning={"budget_tokens": 64})
    assert spec.recorded_params() == {"reasoning": {"enabled": True, "budget_tokens": 64}}


# ------------------------------------------------------------------ splitting, filter, plan


@pytest.mark.parametrize(
    ("text", "trace", "answer"),
    [
        ("<think>\nstep one\n</think>\n\nThe answer.", "step one", "The answer."),
        ("  <think>a</think>b", "a", "b"),
        ("only the template opened it</think>answer", "only the template opened it", "answer"),
        ("<think>cut off before the end", "cut off before the end", ""),
        ("no tags at all", None, "no tags at all"),
        ("an answer that mentions <think> late", None, "an answer that mentions <think> late"),
    ],
)
def test_split_inline(text: str, trace: str | None, answer: str) -> None:
    assert split_inline(text, ("<think>", "</think>")) == (trace, answer)


def test_custom_think_tags() -> None:
    assert split_inline("<reasoning>x</reasoning>y", ("<reasoning>", "</reasoning>")) == ("x", "y")


def test_reasoning_length_filter() -> None:
    (bounded,) = build_filters([{"type": "reasoning_length", "min_tokens": 3, "max_tokens": 6}])
    sample = {"teacher_model": "gpt-4o", "response_text": "ok"}
    assert bounded({**sample, "reasoning_text": "one two three four"}).keep
    short = bounded({**sample, "reasoning_text": "one"})
    assert (short.reason, short.detail) == ("trace_too_short", "1 tokens < min_tokens 3")
    assert bounded({**sample, "reasoning_text": "a b c d e f g h"}).reason == "trace_too_long"
    hidden = bounded({**sample, "reasoning_text": None, "reasoning_visibility": "hidden"})
    assert (hidden.reason, hidden.detail) == ("no_trace", "reasoning_visibility=hidden")
    (lenient,) = build_filters([{"type": "reasoning_length", "require_trace": False}])
    assert lenient({**sample, "reasoning_text": None}).keep
    assert bounded.stats == {
        "kept": 1,
        "dropped_trace_too_short": 1,
        "dropped_trace_too_long": 1,
        "dropped_no_trace": 1,
    }
    with pytest.raises(ValueError, match=r"filters\[0\] \(reasoning_length\): .*min_tokens \(9\)"):
        build_filters([{"type": "reasoning_length", "min_tokens": 9, "max_tokens": 2}])


def test_plan_counts_thinking_as_output(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n{"prompt": "there"}\n')
    config = tmp_path / "job.yaml"
    config.write_text(
        """prompts: {path: p.jsonl}
teachers:
  - {name: plain, provider: gemini, model: gemini-2.5-flash, base_url: http://h}
  - {name: budget, provider: gemini, model: gemini-2.5-flash, base_url: http://h,
     reasoning: {budget_tokens: 3000}}
  - {name: claude, provider: anthropic, model: claude-sonnet-4, base_url: http://h,
     reasoning: {budget_tokens: 2000}}
  - {name: bound, provider: openai, model: o3, base_url: http://h/v1,
     reasoning: {effort: high}, params: {max_tokens: 8000}}
"""
    )
    job = load_config(config)
    prompts = [
        Prompt(prompt_id=str(i), messages=[{"role": "user", "content": text}])
        for i, text in enumerate(["hi", "there"])
    ]
    plans = {p.teacher: p for p in plan_job(job, prompts)}
    assert (plans["plain"].completion_tokens, plans["plain"].reasoning_tokens) == (
        2 * ASSUMED_COMPLETION_TOKENS,
        0,
    )
    assert plans["budget"].completion_tokens == 2 * (ASSUMED_COMPLETION_TOKENS + 3000)
    assert plans["budget"].reasoning_tokens == 6000
    assert plans["claude"].completion_tokens == 2 * (2000 + 4096)
    assert (plans["bound"].completion_tokens, plans["bound"].reasoning_tokens) == (16000, 16000)
    # Reasoning is billed as output: the budget teacher costs more than the plain one.
    assert plans["budget"].cost_usd is not None and plans["plain"].cost_usd is not None
    assert plans["budget"].cost_usd > plans["plain"].cost_usd


_NO_TAGS = st.text(alphabet=st.characters(blacklist_characters="<>"), max_size=40)


@given(trace=_NO_TAGS, answer=_NO_TAGS)
def test_split_inline_round_trips(trace: str, answer: str) -> None:
    text = f"<think>{trace}</think>{answer}"
    assert split_inline(text, ("<think>", "</think>")) == (trace.strip(), answer.lstrip())
    assert split_inline(answer, ("<think>", "</think>")) == (None, answer)


def test_emulator_stats_bill_the_thinking() -> None:
    with RunningEmulator(EmulatorOptions(seed=3)) as emu:
        done = ask(teacher(emu.url, "openai", "deepseek-r1", reasoning={}))
        stats = emu.stats()
    assert stats["completion_tokens"] == done.completion_tokens


# ------------------------------------------------------------------ export over older shards


def _row(sample_id: str, run_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "sample_id": sample_id,
        "run_id": run_id,
        "prompt_id": sample_id,
        "sample_index": 0,
        "messages": [{"role": "user", "content": f"question {sample_id}"}],
        "teacher_name": "t",
        "teacher_provider": "openai",
        "teacher_model": "m",
        "response_text": f"answer {sample_id}",
        **extra,
    }


def test_export_reads_shards_written_before_the_reasoning_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distillery.storage.export import export_chat_jsonl
    from distillery.storage.schema import SAMPLE_SCHEMA, TABLES
    from distillery.storage.shards import write_shard

    older = pa.schema([f for f in SAMPLE_SCHEMA if not f.name.startswith("reasoning_")])
    with monkeypatch.context() as patch:
        patch.setitem(TABLES, "samples", older)
        write_shard(tmp_path, "samples", "old", [_row("a", "old")], 0)
    target = tmp_path / "x.jsonl"
    # Only old shards: the columns do not exist at all.
    result = export_chat_jsonl(tmp_path, target, reasoning="think")
    assert (result.written, dict(result.skipped)) == (0, {"none": 1})
    trace = {"reasoning_text": "because", "reasoning_visibility": "full"}
    write_shard(tmp_path, "samples", "new", [_row("b", "new", **trace)], 0)
    result = export_chat_jsonl(tmp_path, target, reasoning="field", reasoning_key="thinking")
    assert (result.written, dict(result.skipped)) == (1, {"none": 1})
    (line,) = [json.loads(text) for text in target.read_text().splitlines()]
    assert line["messages"][-1] == {
        "role": "assistant",
        "content": "answer b",
        "thinking": "because",
    }
    assert export_chat_jsonl(tmp_path, target).written == 2  # plain chat keeps both
    with pytest.raises(UserInputError, match=r"^--output .*: directory .* does not exist$"):
        export_chat_jsonl(tmp_path, tmp_path / "absent" / "x.jsonl")
