"""docs/extending.md's examples are real code: each Python block runs, registers, and works.

The blocks run in order, each in a module of its own, with the registries restored afterwards
so the example provider, filter and recipe do not leak into other tests.
"""

from __future__ import annotations

import asyncio
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from distillery.config import JobConfig, TeacherConfig
from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.emulator.retarget import base_url
from distillery.generators.client import TeacherClient
from distillery.generators.filters import base as filters
from distillery.generators.filters import build_filters
from distillery.generators.http import make_http_client
from distillery.generators.prompts import Prompt
from distillery.generators.providers import registry
from distillery.generators.providers.registry import get_provider, provider_names
from distillery.generators.recipes import base as recipes

DOC = Path(__file__).resolve().parent.parent / "docs" / "extending.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def examples() -> list[str]:
    return BLOCK.findall(DOC.read_text())


def run_example(index: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run the doc's ``index``-th Python block as a module; its names."""
    provider_names()  # built-in providers registered before the registries are copied
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    monkeypatch.setattr(filters, "FILTERS", dict(filters.FILTERS))
    monkeypatch.setattr(recipes, "RECIPES", dict(recipes.RECIPES))
    module = types.ModuleType(f"extending_example_{index}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(examples()[index], f"{DOC}:block{index}", "exec"), module.__dict__)
    return module.__dict__


def test_the_page_has_one_example_each() -> None:
    assert len(examples()) == 3


def test_the_provider_example_sends_its_header_and_talks_to_the_emulator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_example(0, monkeypatch)
    provider = get_provider("azure_openai")
    assert provider.wire_format == "openai"
    spec = TeacherConfig(
        name="t", provider="azure_openai", model="gpt-4o-mini", base_url="http://h/v1"
    )
    call = provider.build_call(spec, [{"role": "user", "content": "Hi"}], "secret")
    assert call.headers["api-key"] == "secret" and "authorization" not in call.headers

    async def ask(url: str) -> str:
        teacher = spec.model_copy(update={"base_url": base_url(url, "azure_openai")})
        http = make_http_client("httpx", 2, 10.0, teacher.base_url)
        try:
            client = TeacherClient(teacher, provider, http)
            outcome = await client.complete([{"role": "user", "content": "Name a glacier."}])
        finally:
            await http.aclose()
        assert outcome.completion is not None, outcome.failure
        return outcome.completion.text

    with RunningEmulator(EmulatorOptions(seed=1)) as emulator:
        assert asyncio.run(ask(emulator.url))


def test_the_filter_example_keeps_drops_and_checks_its_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_example(1, monkeypatch)
    (check,) = build_filters([{"type": "max_lines", "max_lines": 2}])
    assert check({"response_text": "one\ntwo"}).keep
    verdict = check({"response_text": "one\ntwo\nthree"})
    assert (verdict.keep, verdict.reason) == (False, "too_many_lines")
    assert check.stats == {"kept": 1, "dropped_too_many_lines": 1}
    with pytest.raises(ValueError, match=r"filters\[0\] \(max_lines\)\.max_line: Extra"):
        build_filters([{"type": "max_lines", "max_line": 2}])


def test_the_recipe_example_builds_its_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    names = run_example(2, monkeypatch)
    job = JobConfig.model_validate(
        {
            "prompts": {"path": "p.jsonl"},
            "teachers": [
                {"name": "a", "provider": "openai", "model": "m", "base_url": "http://h/v1"}
            ],
        }
    )
    config = names["PersonasRecipe"](type="personas", personas=["a pirate", "a poet"])
    recipe = recipes.RECIPES["personas"](config, job)
    assert recipes.RECIPES["personas"].plan_note(config, 10).endswith("asked 2 times")
    seeds = [Prompt("p1", [{"role": "user", "content": "Why is the sea salty?"}])]
    (stage,) = list(recipe.stages(seeds, lambda stage: []))
    prompts = list(stage.prompts)
    assert [p.prompt_id for p in prompts] == ["p1>persona0", "p1>persona1"]
    assert prompts[1].messages[0] == {"role": "system", "content": "a poet"}
    assert prompts[1].lineage["recipe"] == "personas"
    plan = list(stage.plan(set()))
    assert [[item.prompt.prompt_id for item in items] for items in plan] == [
        ["p1>persona0"],
        ["p1>persona1"],
    ]
    # A resume that finds the first answer asks only the second.
    left = stage.plan({plan[0][0].sample_id})
    assert [item.prompt.prompt_id for items in left for item in items] == ["p1>persona1"]
