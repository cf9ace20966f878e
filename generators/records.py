"""Lineage: turn one request's outcome into the row that says where a sample came from.

The ids are content-derived so that re-running a job never duplicates: a sample's id hashes the
prompt id, the teacher (name, provider, model), its parameters (reasoning settings included) and
the sample index.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, cast

from distillery.config import JobConfig, TeacherConfig
from distillery.generators.client import Outcome
from distillery.generators.curation.normalize import exact_key
from distillery.generators.pricing import PriceEntry, answer_cost, load_prices, price_for
from distillery.generators.prompts import Prompt
from distillery.generators.providers.base import Completion
from distillery.generators.terms import UNKNOWN_TAG, load_terms, terms_for
from distillery.storage.rows import (
    AnswerColumns,
    Delivery,
    ErrorColumns,
    FailureRow,
    RequestRow,
    SampleRow,
    UsageColumns,
)


@dataclass(frozen=True)
class TeacherFacts:
    """What lineage needs to know about a teacher beyond its config: terms and price."""

    usage_terms: str
    price: PriceEntry | None


@dataclass(frozen=True)
class RunContext:
    """What every row of one run shares."""

    run_id: str
    config_hash: str
    template_hash: str | None
    flow_run_id: str | None = None
    task_run_id: str | None = None
    teachers: dict[str, TeacherFacts] = field(default_factory=dict)

    def facts(self, teacher: TeacherConfig) -> TeacherFacts:
        return self.teachers.get(teacher.name) or TeacherFacts(UNKNOWN_TAG, None)


@dataclass(frozen=True)
class Delivered:
    """How one request's answer (or its failure) was bought: the ``delivery`` and
    ``provider_batch_id`` columns, and the price its ``cost_usd`` is at.

    Online unless told otherwise; a result collected from a provider's batch API is built with
    ``Delivered("batch", <the provider's id of the submission that carried it>)``.
    """

    delivery: Delivery = "online"
    provider_batch_id: str | None = None

    def __post_init__(self) -> None:
        if (self.delivery == "batch") != (self.provider_batch_id is not None):
            raise ValueError("a batch answer names its provider batch id, an online one none")


ONLINE = Delivered()


def teacher_facts(job: JobConfig) -> dict[str, TeacherFacts]:
    """Terms tag and price of every teacher of ``job`` (the judge too), resolved once per run."""
    terms, prices = load_terms(job.terms_file), load_prices(job.prices_file)
    teachers = list(job.teachers)
    if job.curation.judge is not None:
        teachers.append(job.curation.judge.teacher)
    return {
        t.name: TeacherFacts(
            terms_for(terms, t.provider, t.model).tag, price_for(prices, t.provider, t.model)
        )
        for t in teachers
    }


@dataclass(frozen=True)
class _TeacherJson:
    """A teacher's parts of every row and sample id, serialised once (its config is frozen)."""

    teacher: TeacherConfig  # held, so that its id() is not reused while it is cached
    identity: str  # name, provider, model, params: the middle of a sample id's JSON list
    params: str  # the params column


_TEACHER_JSON: dict[int, _TeacherJson] = {}
_TEACHER_JSON_MAX = 1024


def _teacher_json(teacher: TeacherConfig) -> _TeacherJson:
    """Serialising a teacher's parameters (a pydantic dump, then JSON) cost more than the rest
    of a row; a run has a handful of (frozen) teacher configs, so each is serialised once."""
    cached = _TEACHER_JSON.get(id(teacher))
    if cached is not None and cached.teacher is teacher:
        return cached
    params = teacher.recorded_params()
    identity = json.dumps([teacher.name, teacher.provider, teacher.model, params], sort_keys=True)
    if len(_TEACHER_JSON) >= _TEACHER_JSON_MAX:
        _TEACHER_JSON.clear()
    entry = _TeacherJson(teacher, identity[1:-1], _json(params) or "{}")
    _TEACHER_JSON[id(teacher)] = entry
    return entry


def sample_id_for(prompt_id: str, teacher: TeacherConfig, sample_index: int) -> str:
    """blake2b of ``json.dumps([prompt_id, name, provider, model, params, sample_index],
    sort_keys=True)``, the teacher's middle part serialised once (same text, same ids)."""
    middle = _teacher_json(teacher).identity
    identity = f"[{json.dumps(prompt_id)}, {middle}, {json.dumps(sample_index)}]"
    return hashlib.blake2b(identity.encode(), digest_size=16).hexdigest()


def content_hash(text: str) -> str:
    """Hash of the text after Unicode NFKC and whitespace folding (the exact-duplicate key)."""
    return exact_key(text)


def _json(value: Any) -> str | None:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str) if value else None


def _common(
    ctx: RunContext,
    prompt: Prompt,
    teacher: TeacherConfig,
    sample_index: int,
    outcome: Outcome,
    delivered: Delivered,
) -> RequestRow:
    row: RequestRow = {
        "sample_id": sample_id_for(prompt.prompt_id, teacher, sample_index),
        "run_id": ctx.run_id,
        "prompt_id": prompt.prompt_id,
        "sample_index": sample_index,
        "prompt": prompt.text,
        "messages": prompt.messages,
        "prompt_meta": _json(prompt.meta),
        "teacher_name": teacher.name,
        "teacher_provider": teacher.provider,
        "teacher_model": teacher.model,
        "teacher_base_url": teacher.base_url,
        "params": _teacher_json(teacher).params,
        "usage_terms": ctx.facts(teacher).usage_terms,
        "attempts": outcome.attempts,
        "attempt_statuses": outcome.attempt_statuses,
        "maybe_billed_twice": outcome.maybe_billed_twice,
        "latency_ms": round(outcome.latency_ms, 3),
        "queue_ms": round(outcome.queue_ms, 3),
        "retry_ms": round(outcome.retry_ms, 3),
        "created_at": outcome.started_at,
        "config_hash": ctx.config_hash,
        "template_hash": ctx.template_hash,
        "request_hash": outcome.request_hash,
        "flow_run_id": ctx.flow_run_id,
        "task_run_id": ctx.task_run_id,
        "delivery": delivered.delivery,
        "provider_batch_id": delivered.provider_batch_id,
    }
    # The lineage's keys are RequestRow's own: the merge is one of the type's parts.
    return cast(RequestRow, {**row, **prompt.lineage}) if prompt.lineage else row


def usage_columns(
    price: PriceEntry | None, completion: Completion, delivery: Delivery = "online"
) -> UsageColumns:
    """What ``completion`` was paid for, at the price of its ``delivery``: on its sample row,
    or on the failure row that keeps an answer paid for before its request failed."""
    return {
        "teacher_model_version": completion.model_version,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "cached_tokens": completion.cached_tokens,
        "cache_write_tokens": completion.cache_write_tokens,
        "reasoning_tokens": completion.reasoning_tokens,
        "cost_usd": answer_cost(price, completion, delivery),
    }


def sample_row(
    ctx: RunContext,
    prompt: Prompt,
    teacher: TeacherConfig,
    sample_index: int,
    outcome: Outcome,
    delivered: Delivered = ONLINE,
) -> SampleRow:
    completion = outcome.completion
    assert completion is not None, "sample_row needs a successful outcome"
    answer: AnswerColumns = {
        "response_text": completion.text,
        "response_id": completion.response_id,
        "request_id": completion.request_id,
        "system_fingerprint": completion.system_fingerprint,
        "finish_reason": completion.finish_reason,
        "finish_reason_raw": completion.finish_reason_raw,
        "reasoning_text": completion.reasoning_text,
        "reasoning_visibility": completion.reasoning_visibility,
        "rate_limits": _json(completion.rate_limits),
        "content_hash": content_hash(completion.text),
        "schema_repairs": outcome.repairs,
    }
    usage = usage_columns(ctx.facts(teacher).price, completion, delivered.delivery)
    common = _common(ctx, prompt, teacher, sample_index, outcome, delivered)
    # Each part is checked as its own TypedDict; the merge of SampleRow's parts is one.
    return cast(SampleRow, {**common, **usage, **answer})


def failure_row(
    ctx: RunContext,
    prompt: Prompt,
    teacher: TeacherConfig,
    sample_index: int,
    outcome: Outcome,
    delivered: Delivered = ONLINE,
) -> FailureRow:
    failure = outcome.failure
    assert failure is not None, "failure_row needs a failed outcome"
    error: ErrorColumns = {
        "error_class": failure.error_class,
        "http_status": failure.http_status,
        "message": failure.message[:2000],
    }
    common = _common(ctx, prompt, teacher, sample_index, outcome, delivered)
    return cast(FailureRow, {**common, **error})
