"""The rows distillery writes, as types mypy checks: one TypedDict per table of ``schema.py``.

A row travels from the request that made it (``generators/records.py``) through curation, the
judge and the write-ahead spool to a Parquet shard; typed, a misspelt column or a value of the
wrong kind is a type error where it is written, not a null column or an Arrow error at commit.
``tests/test_rows.py`` holds each TypedDict to its Arrow schema (the same columns, compatible
types), so the two cannot drift.

TypedDicts rather than dataclasses because a row is what pyarrow (``Table.from_pylist``) and the
spool (JSON lines) take as they are: no conversion per row on the hot path. Keys are
``Required`` where every row has them from the start and ``NotRequired`` where a later step adds
them (routing, dedup keys, the judge) or only some rows have them (recipes, structured output).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, NotRequired, TypedDict

#: A chat message as stored in ``messages`` and ``conversation``.
Message = dict[str, str]

#: How an answer was bought, as the ``delivery`` column and a teacher's ``delivery:`` say it:
#: one HTTP request (``online``), or through the provider's batch API (``batch``).
Delivery = Literal["online", "batch"]


class LineageColumns(TypedDict, total=False):
    """The recipe columns of a derived prompt's rows (docs/recipes.md); absent for plain
    answers. ``recipe_meta`` is JSON: how the row was derived, never what it cost."""

    recipe: str | None
    stage: str | None
    generation: int | None
    parent_sample_id: str | None
    operation: str | None
    recipe_meta: str | None


class ConversationColumns(TypedDict, total=False):
    """A conversation's accounting (recipe ``conversation``), typed so SQL sums it as it is.

    The row's token and cost columns hold every turn; ``user_*`` is the share of the teacher
    that played the user (part of those totals), ``requests`` the requests the row took.
    """

    conversation: list[Message] | None
    requests: int | None
    user_teacher: str | None
    user_model_versions: list[str] | None
    user_prompt_tokens: int | None
    user_completion_tokens: int | None
    user_cost_usd: float | None


class RequestRow(LineageColumns, ConversationColumns):
    """Columns every table of requests shares: the request, its teacher and its lineage."""

    sample_id: str
    run_id: str
    prompt_id: str
    sample_index: int
    prompt: str | None
    messages: list[Message]
    prompt_meta: str | None  # JSON
    teacher_name: str
    teacher_provider: str
    teacher_model: str
    teacher_base_url: str | None
    params: str | None  # JSON
    usage_terms: str | None
    attempts: int | None
    attempt_statuses: list[str] | None
    maybe_billed_twice: int | None
    latency_ms: float | None
    queue_ms: float | None
    retry_ms: float | None
    created_at: datetime | None
    config_hash: str | None
    template_hash: str | None
    request_hash: str | None
    flow_run_id: str | None
    task_run_id: str | None
    route: NotRequired[str | None]
    route_step: NotRequired[int | None]
    delivery: Delivery
    provider_batch_id: str | None


class UsageColumns(TypedDict, total=False):
    """What an answer was paid for: tokens, cost and the model version that answered. Every
    sample has them; a failure only if something was paid before it failed (the answered
    turns of a conversation, an answer whose schema repair was interrupted)."""

    teacher_model_version: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int | None
    cache_write_tokens: int | None
    reasoning_tokens: int | None
    cost_usd: float | None


class AnswerColumns(TypedDict):
    """The answer itself, as the teacher returned it."""

    response_text: str | None
    response_id: str | None
    request_id: str | None
    system_fingerprint: str | None
    finish_reason: str | None
    finish_reason_raw: str | None
    reasoning_text: str | None
    reasoning_visibility: str | None
    rate_limits: str | None  # JSON
    content_hash: str | None
    schema_repairs: int | None


class JudgeColumns(TypedDict, total=False):
    """The LLM judge's grade of an answer and what grading it cost."""

    judge_teacher: str | None
    judge_score: float | None
    judge_model_version: str | None
    judge_response_id: str | None
    judge_text: str | None
    judge_cost_usd: float | None


class CurationColumns(JudgeColumns, total=False):
    """What curation adds to an answer after it arrived: dedup keys, the judge's grade, the
    structured answer once validated."""

    dedup_bands: list[int] | None
    response_json: str | None  # JSON


class SampleRow(RequestRow, UsageColumns, AnswerColumns, CurationColumns):
    """A row of ``samples``: an answer and everything about how it was made."""


class RejectedRow(SampleRow):
    """A row of ``rejected``: a sample a filter, dedup or the judge set aside, and why."""

    filter: str
    reason: str
    detail: str | None
    duplicate_of: NotRequired[str | None]


def rejected_row(
    row: SampleRow, filter: str, reason: str, detail: str | None, duplicate_of: str | None = None
) -> RejectedRow:
    """``row`` set aside by ``filter`` (a filter's name, ``judge``, ``dedup``), and why."""
    return {
        **row,
        "filter": filter,
        "reason": reason,
        "detail": detail,
        "duplicate_of": duplicate_of,
    }


class ErrorColumns(TypedDict):
    """How a request failed for good."""

    error_class: str
    http_status: int | None
    message: str | None


class FailureRow(RequestRow, ErrorColumns, UsageColumns):
    """A row of ``failures``: a request that failed for good, and how."""


class RunRow(TypedDict):
    """A row of ``runs``: one invocation of a run and what it came to."""

    run_id: str
    invocation_id: str
    dataset: str | None
    config_hash: str | None
    config_path: str | None
    flow_run_id: str | None
    started_at: datetime | None
    ended_at: datetime | None
    status: str | None
    prompts: int | None
    requests_planned: int | None
    requests_skipped: int | None
    samples: int | None
    failures: int | None
    prompt_tokens: int | None
    completion_tokens: int | None
    rejected: int | None
    dedup_params: str | None
    distillery_version: str | None
    job_shape: str | None  # JSON


#: A row of any table of requests, as the spool and the shard writer take them.
Row = SampleRow | RejectedRow | FailureRow

#: Each table's row type, by table name (``schema.TABLES`` has the same keys).
ROW_TYPES: dict[str, type] = {
    "samples": SampleRow,
    "rejected": RejectedRow,
    "failures": FailureRow,
    "runs": RunRow,
}
