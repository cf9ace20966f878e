"""The explicit Arrow schemas of everything distillery writes.

One schema per table, declared once: shards from different runs and versions stay readable
together by DuckDB, Polars or pandas, and a column never changes type because one batch happened
to hold only nulls. ``params``, ``prompt_meta``, ``rate_limits``, ``recipe_meta`` and
``response_json`` are JSON (Parquet's JSON logical type), so DuckDB reads them as JSON:
``params->>'temperature'``. They describe a row; what it cost (tokens, dollars, requests, a
conversation's user share) is in typed columns, never in JSON that SQL must parse to sum.

``storage/rows.py`` gives each table's rows a TypedDict with the same columns (a test holds
them together). A new column is added, never retyped: shards written before it read it as
null (``union_by_name`` locally, the schema given to pyarrow's dataset remotely).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

JSON = pa.json_(pa.string())
TIMESTAMP: pa.DataType = pa.timestamp("us", tz="UTC")
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

_REQUEST_COLUMNS: list[pa.Field[Any]] = [
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("sample_index", pa.int32(), nullable=False),
    pa.field("prompt", pa.string()),
    pa.field("messages", pa.list_(MESSAGE)),
    pa.field("prompt_meta", JSON),
    pa.field("teacher_name", pa.string(), nullable=False),
    pa.field("teacher_provider", pa.string(), nullable=False),
    pa.field("teacher_model", pa.string(), nullable=False),
    pa.field("teacher_base_url", pa.string()),
    pa.field("params", JSON),
    pa.field("usage_terms", pa.string()),
    pa.field("attempts", pa.int16()),
    pa.field("attempt_statuses", pa.list_(pa.string())),
    pa.field("maybe_billed_twice", pa.int16()),
    # Where the request's time went (generators/client.py, Outcome): latency_ms is the last
    # attempt's, from its admission to its answer (the teacher's); queue_ms the waits for the
    # limiter's admission (our pacing); retry_ms earlier attempts and the backoffs between
    # them. Shards written before the split have queue_ms and retry_ms null, and a latency_ms
    # that is the whole request (queue and retries included).
    pa.field("latency_ms", pa.float64()),
    pa.field("queue_ms", pa.float64()),
    pa.field("retry_ms", pa.float64()),
    pa.field("created_at", TIMESTAMP),
    pa.field("config_hash", pa.string()),
    pa.field("template_hash", pa.string()),
    pa.field("request_hash", pa.string()),
    pa.field("flow_run_id", pa.string()),
    pa.field("task_run_id", pa.string()),
    # How the teacher was chosen: all | split | fallback, and 0 for the first choice, 1 after
    # one fallback, ... (null in shards written before routing existed).
    pa.field("route", pa.string()),
    pa.field("route_step", pa.int16()),
    # How the answer was bought: 'online' (one HTTP request) or 'batch' (through the provider's
    # batch API, whose id for the submission that carried it is provider_batch_id; null
    # online). Shards written before these columns read delivery as 'online' in the views.
    pa.field("delivery", pa.string()),
    pa.field("provider_batch_id", pa.string()),
    # Recipes (docs/recipes.md); null for plain one-shot answers.
    pa.field("recipe", pa.string()),
    pa.field("stage", pa.string()),
    pa.field("generation", pa.int16()),
    pa.field("parent_sample_id", pa.string()),
    pa.field("operation", pa.string()),
    pa.field("conversation", pa.list_(MESSAGE)),
    pa.field("recipe_meta", JSON),
    # A conversation's accounting, in columns SQL sums as they are (shards written before
    # these existed hold it in recipe_meta; the teachers view reads either): the requests
    # the row took, and the share of its totals spent by the teacher that played the user.
    pa.field("requests", pa.int16()),
    pa.field("user_teacher", pa.string()),
    pa.field("user_model_versions", pa.list_(pa.string())),
    pa.field("user_prompt_tokens", pa.int32()),
    pa.field("user_completion_tokens", pa.int32()),
    pa.field("user_cost_usd", pa.float64()),
]

#: What an answer was paid for; on a failure, what was paid for before it failed.
_USAGE_COLUMNS: list[pa.Field[Any]] = [
    pa.field("teacher_model_version", pa.string()),
    pa.field("prompt_tokens", pa.int32()),
    pa.field("completion_tokens", pa.int32()),
    # Prompt tokens read from (cached_tokens) and written to (cache_write_tokens) a prompt
    # cache; both are part of prompt_tokens, for every provider. Shards written before
    # cache_write_tokens existed read it as null, and their Anthropic rows count only the
    # uncached part of the prompt in prompt_tokens.
    pa.field("cached_tokens", pa.int32()),
    pa.field("cache_write_tokens", pa.int32()),
    pa.field("reasoning_tokens", pa.int32()),
    pa.field("cost_usd", pa.float64()),
]
_USAGE = {column.name: column for column in _USAGE_COLUMNS}

SAMPLE_SCHEMA = pa.schema(
    [
        *_REQUEST_COLUMNS,
        pa.field("response_text", pa.string()),
        _USAGE["teacher_model_version"],
        pa.field("response_id", pa.string()),
        pa.field("request_id", pa.string()),
        pa.field("system_fingerprint", pa.string()),
        pa.field("finish_reason", pa.string()),
        pa.field("finish_reason_raw", pa.string()),
        _USAGE["prompt_tokens"],
        _USAGE["completion_tokens"],
        _USAGE["cached_tokens"],
        _USAGE["cache_write_tokens"],
        _USAGE["reasoning_tokens"],
        pa.field("reasoning_text", pa.string()),
        pa.field("reasoning_visibility", pa.string()),
        _USAGE["cost_usd"],
        pa.field("rate_limits", JSON),
        pa.field("content_hash", pa.string()),
        pa.field("dedup_bands", pa.list_(pa.uint64())),
        pa.field("judge_teacher", pa.string()),
        pa.field("judge_score", pa.float64()),
        pa.field("judge_model_version", pa.string()),
        pa.field("judge_response_id", pa.string()),
        pa.field("judge_text", pa.string()),
        pa.field("judge_cost_usd", pa.float64()),
        # Structured output (generators/structured.py): the validated answer, and how many
        # repair requests it took (their tokens and cost are in this row's totals).
        pa.field("response_json", JSON),
        pa.field("schema_repairs", pa.int16()),
    ]
)

REJECTED_SCHEMA = pa.schema(
    [
        *SAMPLE_SCHEMA,
        pa.field("filter", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("duplicate_of", pa.string()),
    ]
)

FAILURE_SCHEMA = pa.schema(
    [
        *_REQUEST_COLUMNS,
        pa.field("error_class", pa.string(), nullable=False),
        pa.field("http_status", pa.int16()),
        pa.field("message", pa.string()),
        # Null unless something was paid for before the failure: the answered turns of a
        # conversation, an answer whose schema repair was interrupted (in shards written
        # before these columns, recipe_meta holds it).
        *_USAGE_COLUMNS,
    ]
)

RUN_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("invocation_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string()),
        pa.field("config_hash", pa.string()),
        pa.field("config_path", pa.string()),
        pa.field("flow_run_id", pa.string()),
        pa.field("started_at", TIMESTAMP),
        pa.field("ended_at", TIMESTAMP),
        pa.field("status", pa.string()),
        pa.field("prompts", pa.int64()),
        pa.field("requests_planned", pa.int64()),
        pa.field("requests_skipped", pa.int64()),
        # The samples this invocation wrote that the run still keeps once it ends (by
        # flow_run_id): a resume that finishes an earlier invocation's dedup stays >= 0.
        pa.field("samples", pa.int64()),
        pa.field("failures", pa.int64()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("rejected", pa.int64()),
        pa.field("dedup_params", pa.string()),
        pa.field("distillery_version", pa.string()),
        # JobConfig.shape() as JSON: what a resume of the run must not change.
        pa.field("job_shape", pa.string()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "samples": SAMPLE_SCHEMA,
    "rejected": REJECTED_SCHEMA,
    "failures": FAILURE_SCHEMA,
    "runs": RUN_SCHEMA,
}
