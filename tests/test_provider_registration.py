"""Registering a provider: what it does not support is refused by name, not borrowed from
another provider; and every provider's wire format has its emulator format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from distillery.config import TeacherConfig, load_config
from distillery.emulator.formats import format_of, wire_formats
from distillery.emulator.retarget import base_url
from distillery.errors import ConfigError
from distillery.generators.providers import registry
from distillery.generators.providers.base import (
    Completion,
    ErrorVerdict,
    HttpCall,
    Message,
    Provider,
)
from distillery.generators.providers.registry import get_provider, provider_names, register


class PlainProvider(Provider):
    """A wire format with only the three required methods: no reasoning, no schema."""

    def build_call(
        self, teacher: TeacherConfig, messages: list[Message], api_key: str | None
    ) -> HttpCall:
        return HttpCall(f"{teacher.base_url}/chat", {}, {"messages": messages})

    def parse_success(self, payload: Any, headers: dict[str, str]) -> Completion:
        return Completion(str(payload["text"]), "stop", None, None, None)

    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> ErrorVerdict:
        return ErrorVerdict(f"http_{status}", "", retryable=status >= 500)


@pytest.fixture
def plain(monkeypatch: pytest.MonkeyPatch) -> str:
    """``PlainProvider`` registered as ``plain`` for one test (the registry restored after)."""
    provider_names()  # the built-in providers register into the real registry first
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    register("plain")(PlainProvider)
    return "plain"


def job_file(tmp_path: Path, provider: str, extra: str = "") -> Path:
    config = tmp_path / "job.yaml"
    config.write_text(
        "prompts: {path: p.jsonl}\nteachers:\n  - name: t\n"
        f"    provider: {provider}\n    model: m\n    base_url: http://h\n    {extra}\n"
    )
    return config


def test_a_provider_without_reasoning_refuses_reasoning_by_name(tmp_path: Path, plain: str) -> None:
    assert load_config(job_file(tmp_path, plain)).teachers[0].provider == plain
    assert load_config(job_file(tmp_path, plain, "reasoning: {enabled: false}"))
    for knob in ("reasoning: {effort: low}", "reasoning: {budget_tokens: 2048}", "reasoning: {}"):
        config = job_file(tmp_path, plain, knob)
        with pytest.raises(ConfigError) as caught:
            load_config(config)
        assert str(caught.value) == (
            f"{config}: teachers[0]: reasoning: provider 'plain' has no reasoning knob "
            "distillery can set (remove reasoning:, or set enabled: false)"
        )
    # Nor would it borrow OpenAI's knob if such a teacher were built without the check.
    thinking = load_config(job_file(tmp_path, "openai", "reasoning: {effort: low}")).teachers[0]
    assert get_provider("openai").reasoning_fields(thinking) == {"reasoning_effort": "low"}
    assert get_provider(plain).reasoning_fields(thinking) == {}


def test_a_provider_without_structured_output_refuses_it(plain: str) -> None:
    with pytest.raises(NotImplementedError, match="provider 'plain' does not support"):
        get_provider(plain).structured_output({"type": "object"}, "card", strict=False)


def test_every_provider_has_its_emulator_format() -> None:
    formats = wire_formats()
    spoken = {get_provider(name).wire_format for name in provider_names()}
    assert spoken == set(formats), "a wire format without its emulator format, or the reverse"
    assert get_provider("local").wire_format == "openai"  # an OpenAI-compatible server
    assert base_url("http://e", "openai") == base_url("http://e", "local") == "http://e/v1"
    assert base_url("http://e", "anthropic") == base_url("http://e", "gemini") == "http://e"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/chat/nowhere", "openai"),
        ("/anything", "openai"),
        ("/v1/messages/count", "anthropic"),
        ("/v1beta/models", "gemini"),
        ("/v1/models/gemini-2.5-flash:countTokens", "gemini"),
    ],
)
def test_an_unknown_path_is_answered_by_the_format_of_its_api(path: str, expected: str) -> None:
    assert format_of(path).name == expected
