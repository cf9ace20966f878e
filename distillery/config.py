"""The job file: YAML in, one validated pydantic tree out.

Everything a run needs is decided here, once, at the edge: after :func:`load_config` returns,
the rest of the code trusts the :class:`JobConfig` it is handed. Every error names the file and
the field (``teachers[0].api_key_env``) or environment variable at fault, on one line.

String values may use ``${VAR}`` (required) and ``${VAR:-default}``. API keys are never values
in the file: a teacher names the environment variable that holds its key (``api_key_env``), and
the key is read from the environment only when a request is built.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from distillery.errors import ConfigError
from distillery.generators.filters import FilterOptions, parse_filters
from distillery.storage.rows import Delivery

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GenerationParams(_Strict):
    """Sampling parameters sent with every request to one teacher (and recorded per sample)."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, gt=0, description="Cap on completion tokens.")
    seed: int | None = None
    stop: list[str] | None = None
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="Provider-specific fields merged into the request body as they are.",
    )

    def recorded(self) -> dict[str, Any]:
        """The parameters as stored in the ``params`` column (unset ones left out)."""
        return self.model_dump(exclude_none=True, exclude_defaults=True)


class ReasoningConfig(_Strict):
    """Ask a teacher to think, and keep its trace apart from its answer.

    One knob per job file, mapped to each provider's own by
    :mod:`distillery.generators.providers.reasoning` (Anthropic ``thinking.budget_tokens``,
    Gemini ``thinkingConfig``, OpenAI ``reasoning_effort``); combinations a provider refuses
    are errors here, before anything is sent.
    """

    enabled: bool = Field(default=True, description="Ask for and capture reasoning traces.")
    budget_tokens: int | None = Field(
        default=None, ge=1, description="Tokens the teacher may spend thinking (Anthropic, Gemini)."
    )
    effort: Literal["low", "medium", "high"] | None = Field(
        default=None, description="Reasoning effort (OpenAI reasoning_effort, Gemini level)."
    )
    think_tags: tuple[str, str] = Field(
        default=("<think>", "</think>"),
        description="Open and close tags of a trace inlined in the answer (open models).",
    )

    @model_validator(mode="after")
    def _one_knob(self) -> ReasoningConfig:
        if self.budget_tokens is not None and self.effort is not None:
            raise ValueError("set budget_tokens or effort, not both")
        if not self.enabled and (self.budget_tokens is not None or self.effort is not None):
            raise ValueError("enabled is false: remove budget_tokens and effort")
        opening, closing = self.think_tags
        if not opening.strip() or not closing.strip() or opening == closing:
            raise ValueError("think_tags must be two different non-empty tags")
        return self

    def recorded(self) -> dict[str, Any]:
        """The settings as stored in the ``params`` column and hashed into sample ids."""
        return {"enabled": self.enabled, **self.model_dump(exclude_defaults=True, mode="json")}


class LimitsConfig(_Strict):
    """A teacher's rate limits, as the provider states them (per minute).

    Unset limits are discovered from the first responses' rate-limit headers.
    """

    rpm: float | None = Field(default=None, gt=0, description="Requests per minute.")
    tpm: float | None = Field(default=None, gt=0, description="Tokens per minute.")
    window_s: float = Field(
        default=60.0, gt=0, description="The provider's window; only emulators compress it."
    )
    shared: bool = Field(
        default=False,
        description="Share these limits across every worker process of the run (through the "
        "Prefect server), for runs spread over several processes or machines.",
    )

    @model_validator(mode="after")
    def _shared_needs_limits(self) -> LimitsConfig:
        if self.shared and self.rpm is None and self.tpm is None:
            raise ValueError("shared limits need rpm and/or tpm (they cannot be discovered)")
        return self


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}
_SIZE_UNITS |= {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def _byte_size(value: Any) -> Any:
    """``"100 MB"`` -> 100_000_000 (KB, MB, GB decimal as the providers state their caps;
    KiB, MiB, GiB binary); a plain number is bytes; anything else is left for pydantic."""
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match is None:
            raise ValueError(f"expected bytes or a size like '100 MB', got {value!r}")
        number, unit = match.groups()
        return int(float(number) * _SIZE_UNITS[unit or "B"])
    return value


class SubmissionOptions(_Strict):
    """How a ``delivery: batch`` teacher's requests are cut into submissions to its provider's
    batch API, and how long one invocation waits for them.

    Unset caps are the provider's own (OpenAI: 50,000 requests or 200 MB per file; Anthropic:
    100,000 requests or 256 MB; Gemini: 2 GB); a cap above the provider's is an error.
    """

    max_requests: int | None = Field(
        default=None, gt=0, description="Requests per submission at most (default: the cap)."
    )
    max_bytes: Annotated[int | None, BeforeValidator(_byte_size)] = Field(
        default=None,
        gt=0,
        description="Bytes per submission at most, e.g. 100 MB (default: the provider's cap).",
    )
    poll_interval_s: float = Field(
        default=60.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds between two looks at an open submission's state.",
    )
    wait_s: float = Field(
        default=600.0,
        ge=0,
        allow_inf_nan=False,
        description="How long one invocation waits for its submissions to end before it exits, "
        "leaving them to the next invocation of the same run id; 0: submit and return.",
    )


class TeacherConfig(_Strict):
    """One teacher: a model behind an HTTP API."""

    name: str = Field(pattern=_NAME_PATTERN, description="Your name for this teacher.")
    provider: str = Field(description="Wire format: openai (and any OpenAI-compatible server).")
    model: str = Field(min_length=1, description="Model name as the API expects it.")
    base_url: str = Field(description="As in the provider's SDK, e.g. https://api.openai.com/v1")
    api_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the API key; null for servers without auth.",
    )
    params: GenerationParams = Field(default_factory=GenerationParams)
    concurrency: int = Field(default=16, ge=1, le=4096, description="Requests in flight at most.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    max_attempts: int = Field(default=5, ge=1, le=20, description="Tries per request.")
    timeout_s: float = Field(default=600.0, gt=0, description="Read timeout per attempt.")
    reasoning: ReasoningConfig | None = Field(
        default=None, description="Ask for reasoning and capture the trace (reasoning_text)."
    )
    budget_usd: float | None = Field(
        default=None,
        gt=0,
        description="This teacher's own spending cap; once spent, routing falls back past it.",
    )
    api_version: Literal["v1beta", "v1"] | None = Field(
        default=None,
        description="Gemini only: the API version in the URL (null: v1beta, which has every "
        "feature distillery asks for; v1 is the stable surface).",
    )
    delivery: Delivery = Field(
        default="online",
        description="online: one request per answer; batch: the provider's batch API (half "
        "the price, answers within 24 h).",
    )
    submissions: SubmissionOptions | None = Field(
        default=None,
        description="delivery: batch only: request and byte caps per submission, polling.",
    )

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        from distillery.generators.providers.registry import provider_names

        if value not in provider_names():
            raise ValueError(f"unknown provider {value!r}; known: {', '.join(provider_names())}")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _api_version_is_gemini(self) -> TeacherConfig:
        if self.api_version is not None and self.provider != "gemini":
            raise ValueError(f"api_version is a gemini option; provider {self.provider} has none")
        return self

    @model_validator(mode="after")
    def _delivery_fits_provider(self) -> TeacherConfig:
        if self.delivery == "online":
            if self.submissions is not None:
                raise ValueError("submissions: applies to delivery: batch only")
            return self
        from distillery.generators.providers.registry import get_provider

        limits = get_provider(self.provider).submission_limits
        if limits is None:
            raise ValueError(
                f"delivery: batch needs a provider batch API; provider {self.provider} has none "
                "(use delivery: online)"
            )
        problem = limits.problem(self.submission_options, self.provider)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def submission_options(self) -> SubmissionOptions:
        """The ``submissions:`` block, or its defaults when a batch teacher has none."""
        return self.submissions or SubmissionOptions()

    @model_validator(mode="after")
    def _reasoning_fits_provider(self) -> TeacherConfig:
        from distillery.generators.providers.reasoning import reasoning_problem

        problem = reasoning_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    def recorded_params(self) -> dict[str, Any]:
        """What the ``params`` column records and sample ids hash: the sampling parameters,
        plus the reasoning settings when there are any (so ids of teachers without them stay
        what they were)."""
        params = self.params.recorded()
        if self.reasoning is not None:
            params["reasoning"] = self.reasoning.recorded()
        return params


class PromptsConfig(_Strict):
    """Where prompts come from and how each record becomes a chat request.

    Either a file (``path``) or a DuckDB ``query`` over the views of an earlier output
    (``data``): a seed dataset, e.g. the prompts whose answers a judge rejected.
    """

    path: Path | None = Field(
        default=None, description="JSONL, Parquet or CSV; relative paths are from the config."
    )
    query: str | None = Field(
        default=None,
        description="SQL over the views of ``data`` (samples, rejected, failures, runs, "
        "teachers); each result row is a prompt record.",
    )
    data: Path | str | None = Field(
        default=None, description="The dataset ``query`` reads: a directory or s3:// URI."
    )
    template: str | None = Field(
        default=None, description="Jinja template rendered with each record's fields."
    )
    system: str | None = Field(default=None, description="System message put before each prompt.")
    limit: int | None = Field(default=None, gt=0, description="Use only the first N prompts.")

    @field_validator("data")
    @classmethod
    def _data_location(cls, value: Path | str | None) -> Path | str | None:
        from distillery.storage.location import is_uri, normalise_uri

        if isinstance(value, str) and is_uri(value):
            return normalise_uri(value)
        return None if value is None else Path(value)

    @model_validator(mode="after")
    def _one_source(self) -> PromptsConfig:
        if (self.path is None) == (self.query is None):
            raise ValueError("give either path (a file) or query (with data), not both")
        if self.query is not None and self.data is None:
            raise ValueError("query needs data: the output directory it reads")
        if self.path is not None and self.data is not None:
            raise ValueError("data is only for query")
        return self

    @property
    def source(self) -> str:
        """What error messages and logs call this source."""
        return str(self.path) if self.path is not None else "prompts.query"


class RoutingConfig(_Strict):
    """Which teachers each prompt goes to (``route`` and ``route_step`` columns record it).

    ``all``: every prompt to every teacher (comparison sets). ``split``: each prompt to one
    teacher, chosen by a hash of its prompt id and ``seed`` with probability proportional to
    ``weights`` — stable across runs and resumes. ``fallback``: each prompt to the first
    teacher in the job's order; when that request fails for good, or the teacher's budget is
    spent or it proves unusable, the same prompt goes to the next one.
    """

    mode: Literal["all", "split", "fallback"] = "all"
    weights: dict[str, float] | None = Field(
        default=None,
        description="split: relative share per teacher name; unnamed teachers get 0 "
        "(default: equal shares).",
    )
    fallback: bool = Field(
        default=False,
        description="split: when the chosen teacher fails, try the others in the job's order.",
    )
    seed: int = Field(default=0, description="split: another seed, another assignment.")

    @model_validator(mode="after")
    def _weights_for_split(self) -> RoutingConfig:
        if self.mode != "split" and (self.weights is not None or self.fallback):
            raise ValueError("weights and fallback apply to mode: split only")
        if self.weights is not None:
            for name, weight in self.weights.items():
                if weight < 0:
                    raise ValueError(f"weights.{name}: must be >= 0, got {weight}")
            if sum(self.weights.values()) <= 0:
                raise ValueError("weights: at least one teacher needs a weight above 0")
        return self


class DedupConfig(_Strict):
    """Duplicate removal, within the run and against every earlier run in the same output.

    Exact duplicates share ``content_hash`` (Unicode NFKC, whitespace folded, case kept); near
    duplicates share a MinHash band key and have 5-word-shingle Jaccard >= ``threshold``
    (case folded). The oldest copy is kept; the others go to ``rejected`` with
    ``duplicate_of``.
    """

    enabled: bool = True
    near: bool = Field(default=True, description="Also remove near duplicates.")
    threshold: float = Field(default=0.8, gt=0, le=1, description="Shingle Jaccard for 'near'.")


JUDGE_TEMPLATE = """You are grading an answer for a training dataset.

Question:
{{ prompt }}

Answer:
{{ response }}

Rate the answer's correctness and helpfulness from 1 (useless) to 10 (excellent).
Reply with 'Score: N' where N is an integer from 1 to 10, then one sentence of reasoning."""


class JudgeConfig(_Strict):
    """An LLM judge: a teacher that grades every answer the filters kept."""

    teacher: TeacherConfig
    template: str = Field(
        default=JUDGE_TEMPLATE,
        description="Jinja with {{ prompt }} and {{ response }}; must ask for 'Score: N'.",
    )
    threshold: float = Field(default=6.0, ge=0, description="Answers scored below are rejected.")
    scale: float = Field(default=10.0, gt=0, description="Highest score the template allows.")

    @field_validator("template")
    @classmethod
    def _compiles(cls, value: str) -> str:
        import jinja2

        try:
            jinja2.Environment().parse(value)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"{exc.message} (line {exc.lineno})") from exc
        return value


class CurationConfig(_Strict):
    """What happens to answers before they count as samples."""

    filters: list[FilterOptions] = Field(
        default_factory=lambda: parse_filters([{"type": "empty"}]),
        description="Checks in order, e.g. [{type: length, min_tokens: 5}, {type: refusal}]; "
        "each entry becomes its filter's typed options here, once.",
    )
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    judge: JudgeConfig | None = Field(default=None, description="Optional LLM judge.")

    @field_validator("filters", mode="before")
    @classmethod
    def _typed(cls, value: Any) -> list[FilterOptions]:
        if not isinstance(value, list | tuple):
            raise ValueError("Input should be a valid list")
        return parse_filters(value)


class ResponseSchemaConfig(_Strict):
    """Structured output: the JSON every answer must be (``response_schema:`` in the job file).

    Written either as the JSON Schema itself (the short form) or as a mapping with ``python:
    "module:Model"`` (a pydantic model, imported when the job is loaded) or ``json_schema:``,
    plus the options below. The schema is checked here, so a bad one fails before anything is
    sent; :mod:`distillery.generators.structured` turns it into each provider's request field
    and validates the answers.
    """

    json_schema: dict[str, Any] | None = Field(
        default=None, description="The JSON Schema inline (the short form puts it directly)."
    )
    python: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
        description="A pydantic model, as module:Model; its JSON Schema is sent, it validates.",
    )
    name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="The schema's name (OpenAI's json_schema.name); default: the model's "
        "name, the schema's title, or 'response'.",
    )
    strict: bool = Field(
        default=False,
        description="OpenAI strict mode; needs additionalProperties: false and every property "
        "required on every object of the schema.",
    )
    repair_attempts: int = Field(
        default=1,
        ge=0,
        le=5,
        description="Follow-up requests per answer that fails to parse or validate, each "
        "carrying the bad answer and the error.",
    )

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        """A mapping without ``python`` or ``json_schema`` is the JSON Schema itself."""
        if isinstance(value, dict) and "python" not in value and "json_schema" not in value:
            return {"json_schema": value}
        return value

    @model_validator(mode="after")
    def _usable(self) -> ResponseSchemaConfig:
        from distillery.generators.structured import check_config

        check_config(self)
        return self


class TaskRunnerConfig(_Strict):
    """Where the batches of a run execute.

    ``thread`` (the default): in the flow's own process, on its event loop, every batch sharing
    one set of connections, limiters and the budget. ``dask``: on a Dask cluster (the
    ``prefect-dask`` task runner, extra ``distillery[dask]``) for multi-process and
    multi-machine fan-out — a temporary local cluster of ``workers`` processes, or the running
    scheduler at ``address``. Each worker process then holds its own teacher clients, so a
    teacher's ``concurrency`` and (unless ``limits.shared``) its ``rpm``/``tpm`` are split
    evenly between the processes (docs/production.md).
    """

    type: Literal["thread", "dask"] = "thread"
    address: str | None = Field(
        default=None,
        pattern=r"^(tcp|tls|ucx|inproc)://\S+$",
        description="A running Dask scheduler, e.g. tcp://scheduler:8786; null: a local cluster.",
    )
    workers: int = Field(default=2, ge=1, le=256, description="Processes of a local cluster.")
    threads_per_worker: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Batches one local worker process runs at once (on one event loop).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TaskRunnerConfig:
        if self.type == "thread" and self.address is not None:
            raise ValueError("address needs type: dask")
        sized = {"workers", "threads_per_worker"} & self.model_fields_set
        if self.address is not None and sized:
            raise ValueError(
                f"{sorted(sized)[0]} sizes a local cluster; a remote one (address) is sized "
                "by the dask worker commands that join it"
            )
        return self


USER_TEMPLATE = """You are role-playing the user in a conversation with an AI assistant.

Here is the conversation so far:

{{ transcript }}

Write the user's next message: a natural follow-up that asks for more detail, challenges a point
or takes the topic further. Reply with the message only, without a "User:" prefix."""


class ConversationRecipe(_Strict):
    """Multi-turn conversations: a teacher plays the user between the assistant's answers."""

    type: Literal["conversation"]
    turns: int = Field(default=3, ge=1, le=50, description="Assistant answers per conversation.")
    user_teacher: str | None = Field(
        default=None,
        description="Name of the teacher that writes the user's turns; default: the assistant.",
    )
    user_template: str = Field(
        default=USER_TEMPLATE,
        description="Jinja with {{ transcript }} and {{ turn }}: the request for a user turn.",
    )

    @field_validator("user_template")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return _check_jinja(value)


class SelfInstructRecipe(_Strict):
    """Self-instruct: seed tasks -> new instructions (deduplicated) -> answers."""

    type: Literal["self_instruct"]
    instructions_per_request: int = Field(default=5, ge=1, le=100)
    seeds_per_request: int = Field(
        default=3, ge=1, le=50, description="Example tasks shown in each request."
    )
    rounds: int = Field(
        default=1, ge=1, le=10, description="Each round asks again with the last round's output."
    )
    generator: str | None = Field(
        default=None, description="Teacher that writes instructions; default: the first one."
    )
    similarity_threshold: float = Field(
        default=0.7,
        gt=0,
        le=1,
        description="Drop a new instruction whose word-set Jaccard with a known one is >= this.",
    )


EVOLVE_OPERATIONS = ("deepen", "constrain", "concretize", "reasoning", "breadth")


class EvolInstructRecipe(_Strict):
    """Evol-instruct: rewrite each instruction for ``generations`` rounds, then answer them."""

    type: Literal["evol_instruct"]
    generations: int = Field(default=2, ge=1, le=10)
    operations: list[str] = Field(
        default_factory=lambda: ["deepen", "constrain", "concretize"], min_length=1
    )
    evolver: str | None = Field(
        default=None, description="Teacher that rewrites instructions; default: the first one."
    )
    answer_seeds: bool = Field(
        default=False, description="Also answer the seed instructions (generation 0)."
    )

    @field_validator("operations")
    @classmethod
    def _known_operations(cls, value: list[str]) -> list[str]:
        for operation in value:
            if operation not in EVOLVE_OPERATIONS:
                raise ValueError(
                    f"unknown operation {operation!r}; known: {', '.join(EVOLVE_OPERATIONS)}"
                )
        if len(set(value)) != len(value):
            raise ValueError("operations are listed more than once")
        return value


#: A teacher's fields that say how its answers are bought, not what they are.
_DELIVERY_FIELDS = ("delivery", "submissions")

RecipeConfig = Annotated[
    ConversationRecipe | SelfInstructRecipe | EvolInstructRecipe, Field(discriminator="type")
]
RECIPE_TEACHER_FIELDS = ("user_teacher", "generator", "evolver")


def _check_jinja(value: str) -> str:
    import jinja2

    try:
        jinja2.Environment().parse(value)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"{exc.message} (line {exc.lineno})") from exc
    return value


class JobConfig(_Strict):
    """A whole generation job, as validated from the YAML file."""

    name: str = Field(default="distillery", pattern=_NAME_PATTERN)
    prompts: PromptsConfig
    teachers: list[TeacherConfig] = Field(min_length=1)
    batch_size: int = Field(
        default=500,
        ge=1,
        le=100_000,
        description="Prompts per Prefect task (500: BENCHMARKS.md, Prefect per-task overhead).",
    )
    max_batches_in_flight: int = Field(
        default=4, ge=1, le=256, description="Batch tasks running at once."
    )
    output: Path | str = Field(
        default=Path("out"),
        description="Dataset directory, or an object-storage URI: s3://bucket/prefix.",
    )
    curation: CurationConfig = Field(default_factory=CurationConfig)
    response_schema: ResponseSchemaConfig | None = Field(
        default=None,
        description="Structured output: a JSON Schema or {python: module:Model} every answer "
        "must match (the response_json column).",
    )
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    n: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Samples per prompt and teacher: sample_index 0..n-1, each its own request "
        "with seed = params.seed (or 0) + index; sample 0 keeps the teacher's params.",
    )
    temperatures: list[float] | None = Field(
        default=None,
        min_length=1,
        description="Temperature schedule: sample i is sent with temperatures[i % len].",
    )
    budget_usd: float | None = Field(
        default=None,
        gt=0,
        description="Stop sending once spent + reserved would exceed this (priced models only).",
    )
    terms_file: Path | None = Field(
        default=None, description="Extra terms entries (YAML), tried before the shipped ones."
    )
    prices_file: Path | None = Field(
        default=None, description="Extra price entries (YAML), tried before the shipped ones."
    )
    recipe: RecipeConfig | None = Field(
        default=None,
        description="How prompts become samples (docs/recipes.md); default: one answer each.",
    )
    http_transport: Literal["aiohttp", "httpx"] = Field(
        default="aiohttp",
        description="aiohttp: aiohttp directly (fast, default); httpx: httpx's own transport.",
    )
    task_runner: TaskRunnerConfig = Field(
        default_factory=TaskRunnerConfig,
        description="thread (in this process) or dask (worker processes, local or remote).",
    )

    @field_validator("output")
    @classmethod
    def _output_location(cls, value: Path | str) -> Path | str:
        """A URI stays a string (a Path would fold its ``//``); anything else is a local path."""
        from distillery.storage.location import is_uri, normalise_uri

        if isinstance(value, str) and is_uri(value):
            return normalise_uri(value)
        return Path(value)

    @model_validator(mode="after")
    def _unique_teacher_names(self) -> JobConfig:
        seen: set[str] = set()
        for index, teacher in enumerate(self.teachers):
            if teacher.name in seen:
                raise ValueError(f"teachers[{index}].name {teacher.name!r} is used twice")
            seen.add(teacher.name)
        judge = self.curation.judge
        if judge is not None and judge.teacher.name in seen:
            raise ValueError(
                f"curation.judge.teacher.name {judge.teacher.name!r} is also a teacher's name"
            )
        if judge is not None and judge.teacher.budget_usd is not None:
            raise ValueError("curation.judge.teacher.budget_usd: not supported for the judge")
        for name in (self.routing.weights or {}).keys() - seen:
            raise ValueError(f"routing.weights.{name}: no teacher of that name")
        for index, temperature in enumerate(self.temperatures or []):
            if not 0 <= temperature <= 2:
                raise ValueError(f"temperatures[{index}]: must be within 0..2, got {temperature}")
        if self.recipe is not None and self.response_schema is not None:
            raise ValueError(
                f"recipe: {self.recipe.type} cannot be combined with response_schema yet "
                "(its intermediate requests would be asked for the schema's JSON too)"
            )
        if self.recipe is not None and self.task_runner.type == "dask":
            raise ValueError(
                f"recipe: {self.recipe.type} runs on task_runner thread only, not dask (yet)"
            )
        for key in RECIPE_TEACHER_FIELDS:
            chosen = getattr(self.recipe, key, None)
            if chosen is not None and chosen not in seen:
                raise ValueError(f"recipe.{key}: {chosen!r} is not the name of one of the teachers")
        return self

    @model_validator(mode="after")
    def _dask_limits(self) -> JobConfig:
        """What a Dask run can not enforce is refused here, before anything is sent.

        The budget is one in-process ledger: worker processes can not reserve against it
        together. A remote cluster can grow while a run is going, so an evenly split limit
        could be exceeded: there, limits must be held by the Prefect server (``shared``).
        """
        if self.task_runner.type != "dask":
            return self
        if self.budget_usd is not None:
            raise ValueError(
                "budget_usd is enforced in one process only; remove it or use "
                "task_runner.type: thread"
            )
        for index, teacher in enumerate(self.teachers):
            if teacher.budget_usd is not None:
                raise ValueError(
                    f"teachers[{index}].budget_usd is enforced in one process only; remove it "
                    "or use task_runner.type: thread"
                )
        if self.task_runner.address is not None:
            for index, teacher in enumerate(self.teachers):
                limits = teacher.limits
                if (limits.rpm is not None or limits.tpm is not None) and not limits.shared:
                    raise ValueError(
                        f"teachers[{index}].limits.shared must be true with a remote Dask "
                        f"cluster (task_runner.address), so its workers share the limit"
                    )
        return self

    @model_validator(mode="after")
    def _batch_delivery(self) -> JobConfig:
        """What batch delivery cannot do (yet) is refused here, naming the teacher.

        A submission's answers arrive hours later, in another invocation: a recipe's next
        stage, a fallback to the next teacher or the judge's grade would each need a stage of
        their own; and the submissions' journal has one writer, the flow's process.
        """
        judge = self.curation.judge
        if judge is not None and judge.teacher.delivery == "batch":
            raise ValueError(
                "curation.judge.teacher.delivery: the judge grades each answer as it arrives, "
                "online only"
            )
        fallback = self.routing.mode == "fallback" or self.routing.fallback
        for index, teacher in enumerate(self.teachers):
            if teacher.delivery != "batch":
                continue
            where = f"teachers[{index}].delivery: batch"
            if self.recipe is not None:
                raise ValueError(
                    f"{where} cannot serve recipe: {self.recipe.type}, whose stages each wait "
                    "for the last one's answers (use delivery: online)"
                )
            if self.task_runner.type == "dask":
                raise ValueError(f"{where} runs on task_runner thread only, not dask")
            if fallback:
                setting = (
                    "routing.mode: fallback"
                    if self.routing.mode == "fallback"
                    else ("routing.fallback: true")
                )
                raise ValueError(
                    f"{where} cannot be in a fallback chain ({setting}): a prompt would "
                    "wait a day to learn it needs the next teacher"
                )
        return self

    def shape(self) -> dict[str, Any]:
        """What shapes the answers of a run: the prompts' wording, each teacher's identity and
        parameters, routing, curation, schema and recipe — not where or how fast it runs.

        A run resumed under the same id must have the same shape (its sample ids do not hash
        the wording or the filters); budgets, limits, concurrency, endpoints, batch sizes and
        the prompt file's path or limit may change between invocations (raising a budget or a
        limit to finish a run is the point of resuming it).

        So may a teacher's ``delivery`` and ``submissions``: an answer bought through a batch
        API is the same product as one bought online (same request, same sample id), so a run
        may switch a teacher either way to send what it has not answered yet. Requests already
        in an open submission stay there: a resume collects them before sending anything.
        """
        operational = {"base_url", "api_key_env", "concurrency", "limits", "max_attempts"}
        operational |= {"timeout_s", "budget_usd"} | set(_DELIVERY_FIELDS)

        def teacher(t: TeacherConfig) -> dict[str, Any]:
            return t.model_dump(mode="json", exclude=operational)

        dumped = self.model_dump(
            mode="json",
            include={"routing", "n", "temperatures", "response_schema", "recipe", "curation"},
        )
        dumped["prompts"] = self.prompts.model_dump(mode="json", include={"template", "system"})
        dumped["teachers"] = {t.name: teacher(t) for t in self.teachers}
        judge = self.curation.judge
        if judge is not None:
            dumped["curation"]["judge"]["teacher"] = teacher(judge.teacher)
        return dumped

    def config_hash(self) -> str:
        """A short, stable fingerprint of everything that shapes the output."""
        # Where batches execute, and whether answers are bought online or through a batch
        # API, do not shape the output (and must not split a run's lineage); left out, they
        # also keep the hash of a job written before they existed.
        delivery = {"__all__": set(_DELIVERY_FIELDS)}
        dumped = self.model_dump(
            mode="json",
            exclude={
                "task_runner": True,
                "teachers": delivery,
                "curation": {"judge": {"teacher": set(_DELIVERY_FIELDS)}},
            },
        )
        canonical = json.dumps(dumped, sort_keys=True)
        return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


def expand_env(value: Any, where: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = os.environ.get(name)
            if found is not None and (found != "" or default is None):
                return found
            if default is not None:
                return default
            raise ConfigError(f"{where or 'config'}: environment variable {name} is not set")

        return _ENV_PATTERN.sub(substitute, value)
    if isinstance(value, dict):
        return {key: expand_env(item, _join(where, str(key))) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_env(item, f"{where}[{index}]") for index, item in enumerate(value)]
    return value


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _field_path(location: tuple[int | str, ...]) -> str:
    if len(location) > 1 and location[0] == "recipe":
        location = (location[0], *location[2:])  # drop the union's tag: recipe.turns
    path = ""
    for part in location:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, part)
    return path or "config"


MAX_YAML_VALUES = 100_000
"""Values a job file may hold once its aliases are expanded, beyond those written out.

An alias (``*name``) repeats a whole anchored subtree, so nested aliases grow exponentially
("billion laughs": nine levels of ten make 10^9 values from 1 KB); expanding them in
:func:`expand_env` and validation once ran for minutes into gigabytes. A real job file reuses
a few parameter blocks, far below this.
"""


def _parse_yaml(path: Path, text: str) -> Any:
    """``yaml.safe_load``, refusing documents whose aliases expand beyond
    :data:`MAX_YAML_VALUES` values, recursive aliases, and nesting deeper than Python's stack.

    The check runs on the composed node graph, where an alias is a shared reference, so it
    costs time and memory linear in the file, before anything is expanded.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        problem = _alias_problem(node)
        if problem is not None:
            raise ConfigError(f"{path}: {problem}")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at}") from exc
    except RecursionError as exc:
        raise ConfigError(f"{path}: YAML nested too deeply") from exc
    finally:
        loader.dispose()


def _alias_problem(root: yaml.Node) -> str | None:
    """Why the document's aliases make it unsafe to expand, or None.

    Counts, without expanding anything, how many values the document holds once every alias
    is replaced by what it names (each node's expanded size once, memoised, iteratively), and
    refuses the document when aliases add more than :data:`MAX_YAML_VALUES` to those written.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            total = 1 + sum(sizes[id(child)] for child in _children(node))
            sizes[key] = min(total, 1 << 62)  # no huge integers
            continue
        if key in sizes:
            continue
        if key in on_path:
            return f"YAML alias at line {node.start_mark.line + 1} refers to itself"
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    if sizes[id(root)] - len(sizes) > MAX_YAML_VALUES:
        return f"YAML aliases expand to more than {MAX_YAML_VALUES:,} values (nested aliases?)"
    return None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load_config(path: Path) -> JobConfig:
    """Read, expand and validate a job file; relative paths become relative to its folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from exc
    raw = _parse_yaml(path, text)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    expanded = expand_env(raw)
    from distillery.generators.structured import CONFIG_DIR

    folder = CONFIG_DIR.set(path.resolve().parent)
    try:
        job = JobConfig.model_validate(expanded)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _field_path(tuple(first["loc"]))
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        message = first["msg"].removeprefix("Value error, ").splitlines()[0]
        if field == "curation.filters":
            message = message.removeprefix("filters")
        if first["type"] == "extra_forbidden":
            message = "unknown field"
        raise ConfigError(f"{path}: {field}: {message}{more}") from exc
    finally:
        CONFIG_DIR.reset(folder)
    base = path.resolve().parent

    def beside_job(relative: Path) -> Path:
        # Normalised: the summary, errors and every record name examples/../out as out.
        return Path(os.path.normpath(base / relative))

    prompts = job.prompts
    if prompts.path is not None:
        prompts = prompts.model_copy(update={"path": beside_job(prompts.path)})
    if isinstance(prompts.data, Path):
        prompts = prompts.model_copy(update={"data": beside_job(prompts.data)})
    return job.model_copy(
        update={
            "prompts": prompts,
            "output": job.output if isinstance(job.output, str) else beside_job(job.output),
            "terms_file": base / job.terms_file if job.terms_file else None,
            "prices_file": base / job.prices_file if job.prices_file else None,
        }
    )


def require_api_keys(job: JobConfig) -> None:
    """Fail before anything is sent if a teacher's key variable is unset (naming the variable)."""
    teachers = [(f"teachers[{i}]", t) for i, t in enumerate(job.teachers)]
    if job.curation.judge is not None:
        teachers.append(("curation.judge.teacher", job.curation.judge.teacher))
    for where, teacher in teachers:
        if teacher.api_key_env and not os.environ.get(teacher.api_key_env):
            state = "is empty" if teacher.api_key_env in os.environ else "is not set"
            raise ConfigError(
                f"{where}.api_key_env: environment variable "
                f"{teacher.api_key_env} {state} (teacher {teacher.name!r})"
            )
