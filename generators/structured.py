"""Structured output: answers that must be JSON matching a schema, and their repair.

A job's ``response_schema`` (:class:`~distillery.config.ResponseSchemaConfig`) is a JSON Schema
or a pydantic model. Each request carries it in its provider's own field (the provider's
``structured_output``: OpenAI ``response_format``, Anthropic ``output_config.format``, Gemini
``generationConfig.responseJsonSchema``). Providers constrain decoding, but not every model or
server honours every keyword, so every answer is parsed and validated again here — with
jsonschema (the ``json`` filter's validator), or with the pydantic model itself.

An answer that fails gets up to ``repair_attempts`` follow-up requests in the same
conversation: the bad answer as the assistant's turn, then a user turn quoting the error.
Every follow-up is paid for, so none is hidden: the sample that comes out of the exchange
carries the *sum* of the exchange's tokens (and so of its cost), attempts and statuses, and
``schema_repairs`` says how many follow-ups were sent. Its text is the last answer. The check
that decides the sample's fate runs again in curation (:class:`SchemaCheck`, after the job's
filters): a valid answer gets its ``response_json``, an invalid one becomes a rejected row with
filter ``response_schema``, reason ``invalid_json`` or ``schema_mismatch`` and the validation
message as detail. Running the check on the stored text, not on state of the request, keeps a
resumed run's spool replay identical to the live path.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from distillery.generators.client import Outcome
from distillery.generators.filters.base import KEEP, Verdict, drop
from distillery.generators.filters.json_output import parse_json, schema_validator, schema_verdict
from distillery.generators.providers.base import Completion, Message, Provider
from distillery.storage.rows import SampleRow

if TYPE_CHECKING:
    from distillery.config import ResponseSchemaConfig

#: The value of the ``filter`` column of answers the schema check set aside.
FILTER_NAME = "response_schema"
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
#: Validation errors quoted to the model in a repair request (the row keeps the first).
_ERRORS_QUOTED = 5

#: The folder of the job file being loaded: where ``python: module:Model`` is looked up too.
CONFIG_DIR: ContextVar[Path | None] = ContextVar("distillery_config_dir", default=None)

REPAIR_PROMPT = (
    "Your previous answer was not valid: {error}\n"
    "Answer again with only the corrected JSON, matching the required schema exactly."
)


def import_model(reference: str, search: Path | None = None) -> type[BaseModel]:
    """The pydantic model named ``module:Model``; ``search`` (the job file's folder) is added
    to the import path, so a module next to the job file is found from any directory."""
    module_name, _, attribute = reference.partition(":")
    search = search or CONFIG_DIR.get()
    if search is not None and str(search) not in sys.path:
        sys.path.append(str(search))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an ImportError, or whatever the module raised on import
        raise ValueError(f"python {reference!r}: cannot import {module_name!r} ({exc})") from None
    found: Any = module
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise ValueError(f"python {reference!r}: {module_name!r} has no {attribute!r}")
    if not (isinstance(found, type) and issubclass(found, BaseModel)):
        raise ValueError(f"python {reference!r}: {attribute!r} is not a pydantic model class")
    return found


def strict_problem(schema: Any, where: str = "(root)") -> str | None:
    """Why OpenAI's strict mode would refuse ``schema`` (every object needs
    ``additionalProperties: false`` and all its properties required), or None."""
    if isinstance(schema, list):
        for index, item in enumerate(schema):
            if problem := strict_problem(item, f"{where}/{index}"):
                return problem
        return None
    if not isinstance(schema, dict):
        return None
    properties = schema.get("properties")
    if isinstance(properties, dict) or schema.get("type") == "object":
        props = properties if isinstance(properties, dict) else {}
        if schema.get("additionalProperties") is not False:
            return f"{where}: strict mode needs additionalProperties: false"
        missing = sorted(set(props) - set(schema.get("required") or []))
        if missing:
            return f"{where}: strict mode needs every property required, not {missing}"
    for key in ("properties", "$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            if problem := strict_problem(sub, f"{where}/{key}/{name}"):
                return problem
    for key in ("items", "anyOf", "oneOf", "allOf", "prefixItems"):
        if key in schema and (problem := strict_problem(schema[key], f"{where}/{key}")):
            return problem
    return None


@dataclass(frozen=True)
class Checked:
    """An answer checked against the schema: the validated document, or why not."""

    document: Any
    verdict: Verdict

    @property
    def ok(self) -> bool:
        return self.verdict.keep


class StructuredOutput:
    """The job's schema, ready to send and to validate against."""

    def __init__(
        self,
        schema: dict[str, Any],
        name: str,
        strict: bool = False,
        repair_attempts: int = 1,
        model: type[BaseModel] | None = None,
    ) -> None:
        self.schema = schema
        self.name = name
        self.strict = strict
        self.repair_attempts = repair_attempts
        self.model = model
        self._validator = None if model is not None else schema_validator(schema)

    def request_fields(self, provider: Provider) -> dict[str, Any]:
        """The body fields that ask ``provider`` for JSON matching the schema."""
        return provider.structured_output(self.schema, self.name, self.strict)

    def check(self, text: str) -> Checked:
        """Parse ``text`` (a whole-answer ```json fence is accepted) and validate it."""
        return Checked(*self._check(text, quoted=1))

    def _check(self, text: str, quoted: int) -> tuple[Any, Verdict]:
        document, verdict = parse_json(text)
        if not verdict.keep:
            return None, verdict
        if self.model is None:
            assert self._validator is not None
            verdict = schema_verdict(self._validator, document)
            return (document if verdict.keep else None), verdict
        try:
            value = self.model.model_validate_json(json.dumps(document))
        except ValidationError as exc:
            return None, drop("schema_mismatch", _pydantic_errors(exc, quoted))
        return value.model_dump(mode="json"), KEEP

    def repair_messages(self, messages: list[Message], text: str) -> list[Message] | None:
        """The conversation asking for a corrected answer, or None if ``text`` is valid."""
        _, verdict = self._check(text, quoted=_ERRORS_QUOTED)
        if verdict.keep:
            return None
        error = verdict.detail or verdict.reason or "invalid"
        return [
            *messages,
            {"role": "assistant", "content": text},
            {"role": "user", "content": REPAIR_PROMPT.format(error=error)},
        ]


def _pydantic_errors(exc: ValidationError, quoted: int) -> str:
    """``loc: message`` of the first ``quoted`` errors, as the json filter words its own."""
    lines = []
    for error in exc.errors()[:quoted]:
        where = "/".join(str(part) for part in error["loc"]) or "(root)"
        lines.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(lines)
    return "; ".join(lines) + (f" (and {more} more)" if more > 0 else "")


def default_name(config: ResponseSchemaConfig, schema: Mapping[str, Any], model: Any) -> str:
    if config.name:
        return config.name
    title = model.__name__ if model is not None else schema.get("title")
    name = _NAME_CHARS.sub("_", str(title or "")).strip("_")[:64]
    return name or "response"


def build_structured(
    config: ResponseSchemaConfig | None, search: Path | None = None
) -> StructuredOutput | None:
    """The run's :class:`StructuredOutput`, or None for a job without ``response_schema``."""
    if config is None:
        return None
    model = import_model(config.python, search) if config.python else None
    schema = model.model_json_schema() if model is not None else dict(config.json_schema or {})
    return StructuredOutput(
        schema,
        default_name(config, schema, model),
        config.strict,
        config.repair_attempts,
        model,
    )


def check_config(config: ResponseSchemaConfig, search: Path | None = None) -> None:
    """Raise ``ValueError`` (one line) if ``config`` cannot be used: both or neither form, a
    model that does not import, an invalid schema, a root that is not an object (OpenAI and
    Anthropic accept only objects), or ``strict`` with a schema strict mode refuses."""
    if (config.python is None) == (config.json_schema is None):
        raise ValueError("give either an inline JSON Schema or python: module:Model, not both")
    structured = build_structured(config, search)
    assert structured is not None
    schema = structured.schema
    if structured.model is not None:
        schema_validator(schema)
    root = schema.get("type")
    if root != "object" and "$ref" not in schema:
        raise ValueError(f"the root must be an object schema (type: object), not {root!r}")
    if config.strict and (problem := strict_problem(schema)):
        raise ValueError(problem)


Send = Callable[[list[Message]], Awaitable[Outcome | None]]


async def repair(
    structured: StructuredOutput,
    messages: list[Message],
    outcome: Outcome,
    send: Send,
    paid: Callable[[Outcome], None] | None = None,
) -> Outcome:
    """``outcome`` after up to ``repair_attempts`` follow-ups while its answer is invalid.

    ``send`` makes one request (through the teacher's limits and the budget) and answers None
    when the run may not send any more. An answer that was refused or filtered is not an
    attempt at JSON, so it is not repaired. A follow-up that fails for good leaves the last
    answer in place (still invalid: curation rejects it); its attempts are counted anyway.

    ``paid`` hears each exchange (the first answer, then each repair's) just before a repair
    is asked for it: the batch spools it, so a crash during the repair still keeps that
    answer, already paid for (the exchanges end up in one row otherwise).
    """
    outcome.repairs = 0
    exchange = outcome
    for _ in range(structured.repair_attempts):
        completion = outcome.completion
        if completion is None or completion.finish_reason in ("refusal", "content_filter"):
            break
        follow_up = structured.repair_messages(messages, completion.text)
        if follow_up is None:
            break
        if paid is not None:
            paid(exchange)
        later = await send(follow_up)
        if later is None:
            break
        outcome = combine(outcome, later)
        exchange = later
        if later.completion is None:
            break
    return outcome


def combine(first: Outcome, later: Outcome) -> Outcome:
    """One outcome for a request and its repair: the later answer (if any), the sum of what
    both cost. ``request_hash`` and ``created_at`` stay the first request's (the sample's
    identity); latency, queue and retry times are the sums over both exchanges."""
    completion = first.completion
    if later.completion is not None and completion is not None:
        completion = _added(later.completion, completion)
    return Outcome(
        completion=completion,
        failure=first.failure,
        attempts=first.attempts + later.attempts,
        attempt_statuses=[*first.attempt_statuses, *later.attempt_statuses],
        maybe_billed_twice=first.maybe_billed_twice + later.maybe_billed_twice,
        request_hash=first.request_hash,
        latency_ms=first.latency_ms + later.latency_ms,
        started_at=first.started_at,
        repairs=(first.repairs or 0) + 1,
        queue_ms=first.queue_ms + later.queue_ms,
        retry_ms=first.retry_ms + later.retry_ms,
    )


def _added(last: Completion, earlier: Completion) -> Completion:
    def total(a: int | None, b: int | None) -> int | None:
        return None if a is None and b is None else (a or 0) + (b or 0)

    return replace(
        last,
        prompt_tokens=total(last.prompt_tokens, earlier.prompt_tokens),
        completion_tokens=total(last.completion_tokens, earlier.completion_tokens),
        cached_tokens=total(last.cached_tokens, earlier.cached_tokens),
        cache_write_tokens=total(last.cache_write_tokens, earlier.cache_write_tokens),
        reasoning_tokens=total(last.reasoning_tokens, earlier.reasoning_tokens),
    )


class SchemaCheck:
    """The curation step: ``response_json`` for valid answers, a verdict for each row."""

    name = FILTER_NAME

    def __init__(self, structured: StructuredOutput) -> None:
        self.structured = structured

    def annotate(self, rows: list[SampleRow]) -> list[Verdict]:
        """Set each row's ``response_json`` (None if invalid); the verdict of each row."""
        verdicts = []
        for row in rows:
            checked = self.structured.check(str(row.get("response_text") or ""))
            document = json.dumps(checked.document, ensure_ascii=False) if checked.ok else None
            row["response_json"] = document
            verdicts.append(checked.verdict)
        return verdicts
