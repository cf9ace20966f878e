"""Structured output (``response_schema``): config, the three providers' request fields, the
emulator's schema-shaped answers and faults, validation into ``response_json``, the repair
path and its accounting — end to end over loopback HTTP, Prefect and Parquet."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from distillery.config import TeacherConfig, load_config
from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.emulator.structured import document, openapi_to_json_schema
from distillery.errors import ConfigError
from distillery.flows.generate import generate
from distillery.generators.batch import TeacherPool, run_batch
from distillery.generators.client import merge_body
from distillery.generators.providers.anthropic import supported_schema
from distillery.generators.providers.registry import get_provider
from distillery.generators.structured import StructuredOutput, build_structured
from distillery.storage.catalog import open_catalog
from distillery.storage.spool import Spool

from .conftest import REPO, batch_before_commit, write_prompts

SCHEMA: dict[str, Any] = {
    "title": "fact card",
    "type": "object",
    "properties": {
        "topic": {"type": "string", "minLength": 3},
        "difficulty": {"type": "string", "enum": ["easy", "medium", "hard"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "facts": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 4},
        "source": {"type": ["string", "null"], "format": "uri"},
    },
    "required": ["topic", "difficulty", "score", "facts", "source"],
    "additionalProperties": False,
}
PROVIDERS = (
    ("gpt", "openai", "gpt-4o-mini", "/v1"),
    ("claude", "anthropic", "claude-sonnet-4-6", ""),
    ("gemini", "gemini", "gemini-2.5-flash", ""),
)


def write_structured_job(
    directory: Path, url: str, schema_yaml: str, prompts: int = 4, max_attempts: int = 2
) -> Path:
    write_prompts(directory / "prompts.jsonl", prompts)
    teachers = "".join(
        f"""
  - name: {name}
    provider: {provider}
    model: {model}
    base_url: {url}{path}
    params: {{max_tokens: 600}}
    max_attempts: {max_attempts}"""
        for name, provider, model, path in PROVIDERS
    )
    config = directory / "job.yaml"
    config.write_text(
        f"""name: structured
prompts:
  path: prompts.jsonl
teachers:{teachers}
response_schema:
{schema_yaml}
batch_size: 10
output: out
"""
    )
    return config


def inline(schema: dict[str, Any], **options: Any) -> str:
    lines = [f"  json_schema: {json.dumps(schema)}"]
    lines += [f"  {key}: {json.dumps(value)}" for key, value in options.items()]
    return "\n".join(lines)


def tables(job_output: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    con = open_catalog(job_output)

    def rows(sql: str) -> list[dict[str, Any]]:
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    columns = """teacher_name, response_text, response_json::VARCHAR AS response_json,
                 schema_repairs, attempts, prompt_tokens, completion_tokens"""
    return (
        rows(f"SELECT {columns} FROM samples"),
        rows(f"SELECT {columns}, filter, reason, detail FROM rejected"),
    )


# --- config -------------------------------------------------------------------------------


def test_short_and_long_forms_load(tmp_path: Path) -> None:
    short = "\n".join(f"  {line}" for line in json.dumps(SCHEMA, indent=1).splitlines())
    job = load_config(write_structured_job(tmp_path, "http://127.0.0.1:9", short))
    assert job.response_schema is not None
    assert job.response_schema.json_schema == SCHEMA
    assert job.response_schema.repair_attempts == 1 and job.response_schema.strict is False
    structured = build_structured(job.response_schema)
    assert structured is not None and structured.name == "fact_card"  # from the title

    long = inline(SCHEMA, name="card", strict=True, repair_attempts=3)
    job = load_config(write_structured_job(tmp_path, "http://127.0.0.1:9", long))
    assert job.response_schema is not None
    assert (job.response_schema.name, job.response_schema.repair_attempts) == ("card", 3)


MODEL_MODULE = """
from pydantic import BaseModel, Field


class Step(BaseModel):
    title: str
    minutes: int = Field(ge=1, le=90)


class Recipe(BaseModel):
    name: str
    servings: int = Field(ge=1, le=12)
    vegetarian: bool
    steps: list[Step] = Field(min_length=1)


NOT_A_MODEL = 42
"""


@pytest.mark.parametrize(
    ("schema_yaml", "expected"),
    [
        ("  python: nowhere_to_be_found:Recipe", "cannot import 'nowhere_to_be_found'"),
        ("  python: {module}:Missing", "has no 'Missing'"),
        ("  python: {module}:NOT_A_MODEL", "'NOT_A_MODEL' is not a pydantic model class"),
        ("  python: not a reference", "response_schema.python: String should match pattern"),
        ("  {type: object, properties: {a: {type: strin}}}", "not a valid JSON Schema"),
        ("  {type: array, items: {type: string}}", "the root must be an object schema"),
        (
            inline({"type": "object", "properties": {"a": {"type": "string"}}}, strict=True),
            "strict mode needs additionalProperties: false",
        ),
        (
            inline(SCHEMA | {"required": ["topic"]}, strict=True),
            "strict mode needs every property required",
        ),
        ("  python: {module}:Recipe\n  json_schema: {type: object}", "not both"),
        ("  python: {module}:Recipe\n  repair_attempts: 9", "less than or equal to 5"),
        ("  python: {module}:Recipe\n  colour: blue", "response_schema.colour: unknown field"),
    ],
)
def test_config_errors_are_one_line(tmp_path: Path, schema_yaml: str, expected: str) -> None:
    module = f"recipes_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{module}.py").write_text(MODEL_MODULE)
    config = write_structured_job(
        tmp_path, "http://127.0.0.1:9", schema_yaml.replace("{module}", module)
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{config}: response_schema")
    assert expected in message


def test_curation_fills_response_json_and_rejects_after_the_filters() -> None:
    from distillery.config import CurationConfig
    from distillery.generators.curation.apply import build_curator

    structured = StructuredOutput(SCHEMA, "card")
    curator = build_curator(CurationConfig(), structured)
    good = {"topic": "bees", "difficulty": "easy", "score": 3, "facts": ["x"], "source": None}
    texts = [
        json.dumps(good),
        "```json\n" + json.dumps(good) + "\n```",  # one fenced block is accepted
        json.dumps(good | {"score": 9}),
        '{"topic": "bees", ',
        "",  # the empty filter names the real cause first
    ]
    rows: list[Any] = [{"sample_id": str(i), "response_text": text} for i, text in enumerate(texts)]
    kept, rejected = curator.curate(rows)
    assert [json.loads(row["response_json"] or "null") for row in kept] == [good, good]
    verdicts = [(r["sample_id"], r["filter"], r["reason"], r["response_json"]) for r in rejected]
    assert verdicts == [
        ("2", "response_schema", "schema_mismatch", None),
        ("3", "response_schema", "invalid_json", None),
        ("4", "empty", "empty", None),
    ]
    assert rejected[0]["detail"] == "score: 9 is greater than the maximum of 5"


def test_spool_replay_decides_as_the_live_run(tmp_path: Path) -> None:
    """A resumed run's replayed answers get the same response_json and rejections."""
    from distillery.config import CurationConfig
    from distillery.generators.curation.apply import build_curator
    from distillery.storage.spool import recover

    from .test_storage import sample

    good = {"topic": "bees", "difficulty": "easy", "score": 3, "facts": ["x"], "source": None}
    spool = Spool(tmp_path, "r1")
    spool.append("samples", sample("a") | {"response_text": json.dumps(good)})
    spool.append("samples", sample("b") | {"response_text": "not json", "schema_repairs": 1})
    spool.close()
    curator = build_curator(CurationConfig(), StructuredOutput(SCHEMA, "card"))
    assert recover(tmp_path, "r1", curator.curate) == {"samples": 1, "rejected": 1, "failures": 0}
    con = open_catalog(tmp_path)
    assert con.execute("SELECT sample_id, response_json->>'topic' FROM samples").fetchall() == [
        ("a", "bees")
    ]
    assert con.execute(
        "SELECT sample_id, filter, reason, schema_repairs FROM rejected"
    ).fetchall() == [("b", "response_schema", "invalid_json", 1)]


def test_repair_request_quotes_the_error() -> None:
    structured = StructuredOutput(SCHEMA, "card")
    asked = [{"role": "user", "content": "Bees."}]
    assert structured.repair_messages(asked, json.dumps({"topic": "bees"})) == [
        *asked,
        {"role": "assistant", "content": '{"topic": "bees"}'},
        {
            "role": "user",
            "content": "Your previous answer was not valid: (root): 'difficulty' is a required "
            "property\nAnswer again with only the corrected JSON, matching the required "
            "schema exactly.",
        },
    ]


# --- request fields and the emulator ---------------------------------------------------------


def test_each_provider_asks_in_its_own_field() -> None:
    structured = StructuredOutput(SCHEMA, "card", strict=True)
    openai = structured.request_fields(get_provider("openai"))
    assert openai == {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "card", "schema": SCHEMA, "strict": True},
        }
    }
    anthropic = structured.request_fields(get_provider("anthropic"))
    sent = anthropic["output_config"]["format"]
    assert sent["type"] == "json_schema" and set(anthropic) == {"output_config"}
    # The keywords the Messages API refuses move into descriptions, as the SDK sends them.
    props = sent["schema"]["properties"]
    assert props["score"] == {"type": "integer", "description": "{minimum: 1, maximum: 5}"}
    assert props["facts"]["minItems"] == 1 and props["facts"]["description"] == "{maxItems: 4}"
    assert props["source"] == {"type": ["string", "null"], "format": "uri"}
    assert sent["schema"]["required"] == SCHEMA["required"]
    assert sent["schema"]["additionalProperties"] is False
    gemini = structured.request_fields(get_provider("gemini"))
    assert gemini == {
        "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": SCHEMA}
    }


@pytest.mark.parametrize(
    ("provider", "model", "reasoning"),
    [
        ("anthropic", "claude-sonnet-4-6", {"effort": "low"}),
        ("gemini", "gemini-2.5-flash", {"budget_tokens": 512}),
    ],
)
def test_schema_fields_merge_with_reasoning_fields(
    provider: str, model: str, reasoning: dict[str, Any]
) -> None:
    teacher = TeacherConfig.model_validate(
        {
            "name": "t",
            "provider": provider,
            "model": model,
            "base_url": "http://127.0.0.1:9",
            "reasoning": reasoning,
        }
    )
    adapter = get_provider(provider)
    call = adapter.build_call(teacher, [{"role": "user", "content": "Bees."}], None)
    body = merge_body(call.body, StructuredOutput(SCHEMA, "card").request_fields(adapter))
    if provider == "anthropic":
        assert body["output_config"]["effort"] == "low"
        assert body["output_config"]["format"]["type"] == "json_schema"
    else:
        config = body["generationConfig"]
        assert config["thinkingConfig"]["thinkingBudget"] == 512
        assert config["responseJsonSchema"] == SCHEMA


VARIED_SCHEMAS: list[dict[str, Any]] = [
    SCHEMA,
    {
        "type": "object",
        "$defs": {
            "Step": {
                "type": "object",
                "properties": {"n": {"type": "integer", "exclusiveMinimum": 0}},
                "required": ["n"],
            }
        },
        "properties": {
            "steps": {"type": "array", "items": {"$ref": "#/$defs/Step"}, "minItems": 2},
            "when": {"type": "string", "format": "date-time"},
            "id": {"type": "string", "format": "uuid"},
            "either": {"anyOf": [{"type": "number", "maximum": -1}, {"type": "null"}]},
            "fixed": {"const": "yes"},
            "short": {"type": "string", "maxLength": 4},
            "pair": {"type": "array", "prefixItems": [{"type": "boolean"}, {"type": "null"}]},
        },
        "required": ["steps", "when", "id", "either", "fixed", "short"],
    },
    {"type": "object", "allOf": [{"properties": {"a": {"type": "integer"}}, "required": ["a"]}]},
]


@pytest.mark.parametrize("schema", VARIED_SCHEMAS)
def test_emulator_documents_validate(schema: dict[str, Any]) -> None:
    # Also when the bounds only travel in descriptions (Anthropic's form of the schema);
    # prefixItems has no place in that form, so a schema using it is checked as written.
    sent = supported_schema(schema)
    forms = [schema] if "prefixItems" in json.dumps(schema) else [schema, sent]
    for index in range(25):
        for asked in forms:
            value = document(asked, f"key-{index}".encode(), "some words for the strings here")
            jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())


def test_gemini_openapi_schema_is_understood() -> None:
    openapi = {
        "type": "OBJECT",
        "properties": {
            "name": {"type": "STRING"},
            "tags": {"type": "ARRAY", "items": {"type": "STRING"}},
            "rating": {"type": "NUMBER", "nullable": True},
        },
        "required": ["name", "tags", "rating"],
        "propertyOrdering": ["name", "tags", "rating"],
    }
    converted = openapi_to_json_schema(openapi)
    assert converted["properties"]["rating"]["type"] == ["number", "null"]
    with RunningEmulator(EmulatorOptions(seed=1)) as emu:
        body = {
            "contents": [{"role": "user", "parts": [{"text": "Rate a film."}]}],
            "generationConfig": {"responseMimeType": "application/json", "responseSchema": openapi},
        }
        response = httpx.post(
            f"{emu.url}/v1beta/models/gemini-2.0-flash:generateContent", json=body
        )
    text = response.json()["candidates"][0]["content"]["parts"][0]["text"]
    jsonschema.validate(json.loads(text), converted)


@pytest.mark.parametrize("fault", ["invalid-json", "schema-mismatch"])
@pytest.mark.parametrize("provider", [p[1] for p in PROVIDERS])
def test_schema_faults_spoil_the_answer(fault: str, provider: str) -> None:
    options = EmulatorOptions(seed=2, fault_rate=1.0, faults=[fault])
    structured = StructuredOutput(SCHEMA, "card")
    name, _, model, path = next(p for p in PROVIDERS if p[1] == provider)
    with RunningEmulator(options) as emu:
        teacher = TeacherConfig(name=name, provider=provider, model=model, base_url=emu.url + path)
        adapter = get_provider(provider)
        call = adapter.build_call(teacher, [{"role": "user", "content": "Bees."}], None)
        body = merge_body(call.body, structured.request_fields(adapter))
        response = httpx.post(call.url, json=body, headers=call.headers)
        stats = emu.stats()
    completion = adapter.parse_success(response.json(), dict(response.headers))
    checked = structured.check(completion.text)
    assert not checked.ok
    assert checked.verdict.reason == fault.replace("-", "_")
    assert stats["served_flagged"] == 1 and stats["faults"] == {fault: 1}
    assert completion.completion_tokens and completion.completion_tokens > 0


def test_official_sdks_parse_the_structured_answers() -> None:
    import anthropic
    import openai
    from google import genai
    from google.genai import types as genai_types
    from pydantic import BaseModel

    class Step(BaseModel):
        title: str
        minutes: int

    class Recipe(BaseModel):
        name: str
        vegetarian: bool
        steps: list[Step]

    messages: Any = [{"role": "user", "content": "A bread recipe, please."}]
    with RunningEmulator(EmulatorOptions(seed=6)) as emu:
        client = openai.OpenAI(base_url=emu.url + "/v1", api_key="k", max_retries=0)
        chat = client.chat.completions.parse(
            model="gpt-4o-mini", messages=messages, response_format=Recipe
        )
        claude = anthropic.Anthropic(base_url=emu.url, api_key="k", max_retries=0)
        message = claude.messages.parse(
            model="claude-sonnet-4-6", max_tokens=800, messages=messages, output_format=Recipe
        )
        gemini = genai.Client(
            api_key="k",
            http_options=genai_types.HttpOptions(base_url=emu.url, api_version="v1beta"),
        )
        settings = genai_types.GenerateContentConfig(
            response_mime_type="application/json", response_schema=Recipe
        )
        reply = gemini.models.generate_content(
            model="gemini-2.5-flash", contents="A bread recipe, please.", config=settings
        )
    parsed = [chat.choices[0].message.parsed, message.parsed_output, reply.parsed]
    assert all(isinstance(recipe, Recipe) and recipe.steps for recipe in parsed)


def test_schema_faults_are_not_in_the_default_menu() -> None:
    assert "invalid-json" not in EmulatorOptions().faults
    assert EmulatorOptions.model_validate({"faults": "invalid-json,schema-mismatch"}).faults == [
        "invalid-json",
        "schema-mismatch",
    ]


# --- end to end -----------------------------------------------------------------------------


@pytest.mark.slow
def test_three_providers_answer_valid_json(prefect_api: str, tmp_path: Path) -> None:
    with RunningEmulator(EmulatorOptions(seed=4)) as emu:
        job = load_config(write_structured_job(tmp_path, emu.url, inline(SCHEMA, strict=True)))
        summary = asyncio.run(generate(job=job, run_id="s1"))
        stats = emu.stats()
    assert (summary.status, summary.samples, summary.rejected) == ("completed", 12, {})
    samples, rejected = tables(job.output)
    assert rejected == []
    assert sorted({row["teacher_name"] for row in samples}) == ["claude", "gemini", "gpt"]
    for row in samples:
        parsed = json.loads(row["response_json"])
        jsonschema.validate(parsed, SCHEMA)
        assert parsed == json.loads(row["response_text"])
        assert (row["schema_repairs"], row["attempts"]) == (0, 1)
    assert sum(r["completion_tokens"] for r in samples) == stats["completion_tokens"]


@pytest.mark.slow
def test_bad_answers_are_repaired_and_every_paid_answer_counted(
    prefect_api: str, tmp_path: Path
) -> None:
    options = EmulatorOptions(seed=9, fault_rate=0.5, faults=["invalid-json", "schema-mismatch"])
    with RunningEmulator(options) as emu:
        config = write_structured_job(
            tmp_path, emu.url, inline(SCHEMA, repair_attempts=2), prompts=8, max_attempts=1
        )
        job = load_config(config)
        summary = asyncio.run(generate(job=job, run_id="r1"))
        stats = emu.stats()
    samples, rejected = tables(job.output)
    assert len(samples) + len(rejected) == 24 and summary.failures == 0
    repaired = [row for row in samples if row["schema_repairs"]]
    assert repaired, "half the answers spoilt: some must have been repaired"
    for row in samples:
        jsonschema.validate(json.loads(row["response_json"]), SCHEMA)
        assert row["attempts"] == 1 + row["schema_repairs"]
    for row in rejected:
        assert (row["filter"], row["response_json"], row["schema_repairs"]) == (
            "response_schema",
            None,
            2,
        )
        assert row["reason"] in ("invalid_json", "schema_mismatch") and row["detail"]
        assert row["response_text"]  # the text is kept
    # Every answer the emulator served and billed is in exactly one row's totals.
    rows = samples + rejected
    served = int(str(stats["served_ok"])) + int(str(stats["served_flagged"]))
    assert sum(row["attempts"] for row in rows) == served
    assert sum(row["prompt_tokens"] for row in rows) == stats["prompt_tokens"]
    assert sum(row["completion_tokens"] for row in rows) == stats["completion_tokens"]
    assert summary.completion_tokens == stats["completion_tokens"]


@pytest.mark.slow
def test_failed_repairs_become_rejected_rows(prefect_api: str, tmp_path: Path) -> None:
    options = EmulatorOptions(seed=3, fault_rate=1.0, faults=["schema-mismatch"])
    with RunningEmulator(options) as emu:
        job = load_config(write_structured_job(tmp_path, emu.url, inline(SCHEMA), prompts=2))
        summary = asyncio.run(generate(job=job, run_id="r1"))
        stats = emu.stats()
    samples, rejected = tables(job.output)
    assert samples == [] and len(rejected) == 6
    assert summary.rejected == {"schema_mismatch": 6}
    assert stats["served_flagged"] == 12  # each answer and its one repair
    assert {(row["reason"], row["schema_repairs"], row["attempts"]) for row in rejected} == {
        ("schema_mismatch", 1, 2)
    }
    assert all(row["detail"] and ":" in row["detail"] for row in rejected)


@pytest.mark.slow
def test_pydantic_model_validates_the_answers(prefect_api: str, tmp_path: Path) -> None:
    module = "structured_recipes_e2e"
    (tmp_path / f"{module}.py").write_text(MODEL_MODULE)
    with RunningEmulator(EmulatorOptions(seed=5)) as emu:
        config = write_structured_job(tmp_path, emu.url, f"  python: {module}:Recipe", prompts=3)
        job = load_config(config)
        summary = asyncio.run(generate(job=job, run_id="p1"))
    assert (summary.samples, summary.rejected) == (9, {})
    samples, _ = tables(job.output)
    from structured_recipes_e2e import Recipe  # type: ignore[import-not-found]

    for row in samples:
        recipe = Recipe.model_validate_json(row["response_text"])
        assert recipe.steps and 1 <= recipe.servings <= 12
        assert json.loads(row["response_json"]) == recipe.model_dump(mode="json")


@pytest.mark.slow
def test_the_recipe_example_runs_on_the_emulator(prefect_api: str, tmp_path: Path) -> None:
    out = tmp_path / "recipe"
    example = REPO / "examples" / "recipes" / "structured.yaml"
    run = [sys.executable, "-m", "distillery", "run", str(example), "--emulator", "-o", str(out)]
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "COLUMNS": "200"}
    result = subprocess.run(run, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    con = open_catalog(out)
    counted = con.execute(
        """SELECT count(*), count(response_json), count(DISTINCT teacher_provider),
                  bool_and(response_json->>'category' IN
                      ('bikes', 'kitchen', 'furniture', 'electronics', 'kids', 'books', 'other'))
           FROM samples"""
    ).fetchall()
    assert counted == [(24, 24, 3, True)]


@pytest.mark.slow
def test_a_crash_during_a_repair_keeps_every_answer_already_paid(
    prefect_api: str, tmp_path: Path
) -> None:
    """Each answer a repair is asked for is spooled first (a ``repair_interrupted`` failure
    row with its text and usage), so a process dying mid-repair loses no paid answer; a
    run that commits discards them with the spool."""
    options = EmulatorOptions(seed=3, fault_rate=1.0, faults=["schema-mismatch"])
    with RunningEmulator(options) as emu:
        job = load_config(
            write_structured_job(tmp_path, emu.url, inline(SCHEMA, repair_attempts=2), prompts=2)
        )
        items, ctx, spool = batch_before_commit(job, "crash")
        spooled: list[Mapping[str, Any]] = []

        def crash_before_the_rows(table: str, row: Mapping[str, Any]) -> None:
            # The process "dies" before any finished row reaches the spool.
            if table == "failures":
                spool.append(table, row)
                spooled.append(row)

        async def interrupted() -> None:
            structured = build_structured(job.response_schema)
            async with TeacherPool(job, structured=structured) as pool:
                await run_batch(items, pool, ctx, sink=crash_before_the_rows)

        asyncio.run(interrupted())
        spool.close()
        served = emu.stats()
        summary = asyncio.run(generate(job=job, run_id="crash"))
    assert len(items) == 6 and served["served_flagged"] == 6 * 3  # an answer, two repairs
    # Every answer but each item's last was spooled before its repair was asked for.
    assert len(spooled) == 6 * 2
    assert {row["error_class"] for row in spooled} == {"repair_interrupted"}
    for row in spooled:
        assert row["completion_tokens"] > 0 and row["prompt_tokens"] > 0
        answer = row["conversation"][-1]
        assert answer["role"] == "assistant" and answer["content"]
        assert row["conversation"][:-1] == row["messages"]
    assert summary.rejected == {"schema_mismatch": 6}  # the resumed run bought them again
    con = open_catalog(job.output)
    log = con.execute(
        """SELECT count(*), sum(completion_tokens)
           FROM failures_log WHERE error_class = 'repair_interrupted'"""
    ).fetchall()
    # Recovered from the crashed spool: exactly those rows; the resumed run's own were
    # discarded with its spool when its batches committed.
    assert log[0][0] == 12
    assert log[0][1] == sum(r["completion_tokens"] for r in spooled)
