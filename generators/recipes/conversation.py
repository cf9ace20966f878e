"""Multi-turn conversations: the assistant teacher answers, a teacher plays the user, k turns.

**What a row is.** One conversation is one row: it is the unit of training data, and the turns
of a conversation mean nothing apart. The row's ``conversation`` column holds the whole chat
(the prompt's messages, then assistant and user turns alternating, ending with the assistant);
``messages`` keeps its meaning in every table — the prompt as sent first — and
``response_text`` is the last assistant answer, so filters, dedup and the judge look at it.
Tokens, attempts, times (latency, queue, retry) and ``cost_usd`` are summed over every request
of the conversation, the user teacher's included (its share is in the ``user_*`` columns:
``user_teacher``, ``user_prompt_tokens``, ``user_completion_tokens``, ``user_cost_usd``;
``requests`` counts the requests); ``teacher_*`` columns name the assistant teacher, whose
returned model version is the last answer's.

**Half-way failures.** If a turn fails for good, or the run stops after some turns were paid
for, the conversation becomes a *failure* row holding the partial ``conversation``, with the
usage and cost of the turns that were answered in its token and cost columns; a re-run of the
run id starts that conversation again. Each answered turn before the last is also spooled as a
``conversation_interrupted`` failure row with that turn's usage (a user turn's in ``user_*``
too, ``recipe_meta`` naming its role and teacher), which is discarded with the
spool when the batch commits: only a crash (``kill -9``) leaves them, one per paid turn, so even
then no paid-for turn is lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache

import jinja2

from distillery.config import ConversationRecipe, JobConfig, TeacherConfig
from distillery.generators.batch import ItemResult, RowSink, TeacherPool, WorkItem
from distillery.generators.client import Failure, Outcome
from distillery.generators.pricing import answer_cost
from distillery.generators.prompts import Message, Prompt
from distillery.generators.recipes.base import Lineage, Stage, StageRows, register
from distillery.generators.records import RunContext, failure_row, sample_row
from distillery.generators.routing import Router
from distillery.storage.rows import FailureRow, SampleRow, UsageColumns

RECIPE = "conversation"


def transcript(messages: list[Message]) -> str:
    """The conversation as the user teacher reads it (system messages left out)."""
    names = {"user": "User", "assistant": "Assistant"}
    return "\n\n".join(
        f"{names[m['role']]}: {m['content']}" for m in messages if m["role"] in names
    )


@dataclass(frozen=True)
class _Turn:
    teacher: TeacherConfig
    role: str
    outcome: Outcome


@dataclass(frozen=True)
class ConversationRunner:
    """Runs one conversation through ``pool.request``: rate limits, budget and retries apply
    to every turn as to any request."""

    turns: int
    user_teacher: TeacherConfig | None
    user_template: str

    async def __call__(
        self, item: WorkItem, pool: TeacherPool, ctx: RunContext, sink: RowSink | None
    ) -> ItemResult | None:
        template = _compile(self.user_template)
        user_teacher = self.user_teacher or item.teacher
        conversation: list[Message] = list(item.prompt.messages)
        done: list[_Turn] = []
        for turn in range(1, self.turns + 1):
            if turn > 1:
                content = template.render(transcript=transcript(conversation), turn=turn)
                request = WorkItem(
                    Prompt(f"{item.prompt.prompt_id}/user-{turn}", [user(content)]), user_teacher
                )
                if not await _ask(pool, request, "user", done, conversation):
                    break
                self._spool_turn(item, ctx, sink, conversation, done)
            request = WorkItem(Prompt(item.prompt.prompt_id, list(conversation)), item.teacher)
            if not await _ask(pool, request, "assistant", done, conversation):
                break
            if turn < self.turns:
                self._spool_turn(item, ctx, sink, conversation, done)
        if not done:
            return None
        last = done[-1].outcome
        finished = last.failure is None and len(conversation) - len(item.prompt.messages) == (
            2 * self.turns - 1
        )
        if finished:
            row = sample_row(ctx, item.prompt, item.teacher, item.sample_index, last)
            _sum_turns(row, ctx, done)
            self._put_conversation(row, ctx, done, user_teacher, conversation)
            return "samples", row, last
        failed = last.failure is not None
        turns_done = sum(1 for t in done if t.role == "assistant" and t.outcome.failure is None)
        failure = last.failure or Failure(
            "stopped", f"the run stopped after {turns_done} of {self.turns} answers", None
        )
        if failed:
            failure = Failure(
                failure.error_class,
                f"{done[-1].role} turn {turns_done + 1} of {self.turns} failed: " + failure.message,
                failure.http_status,
            )
        return "failures", self._failure(item, ctx, done, failure, conversation, user_teacher), last

    def _spool_turn(
        self,
        item: WorkItem,
        ctx: RunContext,
        sink: RowSink | None,
        conversation: list[Message],
        done: list[_Turn],
    ) -> None:
        """Spool the turn just answered, so a crash before the batch commits keeps it."""
        if sink is None:
            return
        turn = done[-1]
        failure = Failure(
            "conversation_interrupted",
            f"the process ended during this conversation, after {len(done)} requests",
            None,
        )
        row = failure_row(
            ctx, item.prompt, item.teacher, item.sample_index, _failed(turn.outcome, failure)
        )
        _put_usage(row, _usage(ctx, [turn]))
        if turn.role == "user":
            _put_user_share(row, ctx, [turn], turn.teacher)
        row.update(
            {
                "route": item.route,
                "route_step": item.route_step,
                "conversation": list(conversation),
                "recipe_meta": json.dumps(
                    {"role": turn.role, "teacher": turn.teacher.name}, sort_keys=True
                ),
            }
        )
        sink("failures", row)

    def _failure(
        self,
        item: WorkItem,
        ctx: RunContext,
        done: list[_Turn],
        failure: Failure,
        conversation: list[Message],
        user_teacher: TeacherConfig,
    ) -> FailureRow:
        last = _failed(done[-1].outcome, failure)
        row = failure_row(ctx, item.prompt, item.teacher, item.sample_index, last)
        _sum_turns(row, ctx, done)
        self._put_conversation(row, ctx, done, user_teacher, conversation)
        return row

    def _put_conversation(
        self,
        row: SampleRow | FailureRow,
        ctx: RunContext,
        done: list[_Turn],
        user_teacher: TeacherConfig,
        conversation: list[Message],
    ) -> None:
        """The conversation, its requests and the user teacher's share of its totals."""
        row["conversation"] = conversation
        row["requests"] = len(done)
        row["recipe_meta"] = json.dumps({"turns": self.turns}, sort_keys=True)
        _put_user_share(row, ctx, [t for t in done if t.role == "user"], user_teacher)


async def _ask(
    pool: TeacherPool,
    request: WorkItem,
    role: str,
    done: list[_Turn],
    conversation: list[Message],
) -> bool:
    """Send one turn; True if it was answered (and appended to ``conversation``)."""
    outcome = await pool.request(request)
    if outcome is None:
        return False
    done.append(_Turn(request.teacher, role, outcome))
    if outcome.completion is None:
        return False
    conversation.append({"role": role, "content": outcome.completion.text})
    return True


@cache
def _compile(template: str) -> jinja2.Template:
    return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template)


def user(content: str) -> Message:
    return {"role": "user", "content": content}


def _failed(outcome: Outcome, failure: Failure) -> Outcome:
    return Outcome(
        None,
        failure,
        outcome.attempts,
        list(outcome.attempt_statuses),
        outcome.maybe_billed_twice,
        outcome.request_hash,
        outcome.latency_ms,
        outcome.started_at,
        queue_ms=outcome.queue_ms,
        retry_ms=outcome.retry_ms,
    )


def _sum_turns(row: SampleRow | FailureRow, ctx: RunContext, done: list[_Turn]) -> None:
    """Sum the usage, attempts and times of every turn into ``row``; its time is the first's."""
    _put_usage(row, _usage(ctx, done))
    row["attempts"] = sum(t.outcome.attempts for t in done)
    row["attempt_statuses"] = [s for t in done for s in t.outcome.attempt_statuses]
    row["maybe_billed_twice"] = sum(t.outcome.maybe_billed_twice for t in done)
    row["latency_ms"] = round(sum(t.outcome.latency_ms for t in done), 3)
    row["queue_ms"] = round(sum(t.outcome.queue_ms for t in done), 3)
    row["retry_ms"] = round(sum(t.outcome.retry_ms for t in done), 3)
    row["created_at"] = done[0].outcome.started_at


def _put_usage(row: SampleRow | FailureRow, usage: UsageColumns) -> None:
    row["prompt_tokens"] = usage.get("prompt_tokens")
    row["completion_tokens"] = usage.get("completion_tokens")
    row["cached_tokens"] = usage.get("cached_tokens")
    row["cache_write_tokens"] = usage.get("cache_write_tokens")
    row["reasoning_tokens"] = usage.get("reasoning_tokens")
    row["cost_usd"] = usage.get("cost_usd")


def _put_user_share(
    row: SampleRow | FailureRow, ctx: RunContext, users: list[_Turn], user_teacher: TeacherConfig
) -> None:
    """The ``user_*`` columns: what the user turns among a row's requests cost."""
    usage = _usage(ctx, users)
    row["user_teacher"] = user_teacher.name
    row["user_model_versions"] = sorted(
        {t.outcome.completion.model_version or "" for t in users if t.outcome.completion}
    )
    row["user_prompt_tokens"] = usage.get("prompt_tokens")
    row["user_completion_tokens"] = usage.get("completion_tokens")
    row["user_cost_usd"] = usage.get("cost_usd")


def _usage(ctx: RunContext, turns: list[_Turn]) -> UsageColumns:
    """Tokens and cost of the answered requests among ``turns`` (cost null if any is unpriced)."""
    answered = [(t.teacher, t.outcome.completion) for t in turns if t.outcome.completion]
    costs = [answer_cost(ctx.facts(teacher).price, c) for teacher, c in answered]

    def total(name: str) -> int | None:
        values = [getattr(c, name) for _, c in answered]
        return sum(values) if values and all(v is not None for v in values) else None

    return {
        "prompt_tokens": total("prompt_tokens"),
        "completion_tokens": total("completion_tokens"),
        "cached_tokens": total("cached_tokens"),
        "cache_write_tokens": total("cache_write_tokens"),
        "reasoning_tokens": total("reasoning_tokens"),
        "cost_usd": sum(c for c in costs if c is not None)
        if costs and all(c is not None for c in costs)
        else None,
    }


@register(RECIPE)
@dataclass
class Conversations:
    """The recipe: one stage in which every prompt x teacher is a conversation."""

    config: ConversationRecipe
    job: JobConfig

    @classmethod
    def plan_note(cls, config: ConversationRecipe, prompts: int) -> str:
        requests = 2 * config.turns - 1
        return (
            f"recipe conversation: each prompt x teacher is {requests} requests "
            f"({config.turns} answers, {config.turns - 1} user turns), each sending the "
            "conversation so far: expect more than that many times the table's tokens"
        )

    def stages(self, seeds: Iterable[Prompt], read: StageRows) -> Iterator[Stage]:
        by_name = {t.name: t for t in self.job.teachers}
        runner = ConversationRunner(
            self.config.turns,
            by_name[self.config.user_teacher] if self.config.user_teacher else None,
            self.config.user_template,
        )
        lineage = Lineage(RECIPE, RECIPE)
        prompts = [Prompt(p.prompt_id, p.messages, p.meta, lineage.columns()) for p in seeds]
        yield Stage(RECIPE, prompts, Router(self.job), runner=runner, label="conversations")
