"""What a job will cost before anything is sent: tokens, dollars, and the time limits allow.

Prompt tokens are counted with tiktoken (exact for OpenAI models, an estimate for others);
completion tokens are ``max_tokens`` when set — an upper bound — or an assumed
:data:`ASSUMED_COMPLETION_TOKENS`. The minimum wall time is what the rate limits allow at full
utilisation: requests / rpm or tokens / tpm, whichever binds, for the slowest teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from distillery.config import JobConfig
from distillery.generators.pricing import cost_usd
from distillery.generators.prompts import Prompt
from distillery.generators.records import teacher_facts
from distillery.generators.tokens import count_message_tokens

ASSUMED_COMPLETION_TOKENS = 512


@dataclass(frozen=True)
class TeacherPlan:
    teacher: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    completion_is_bound: bool
    cost_usd: float | None
    min_minutes: float | None
    binding_limit: str | None


def plan_job(job: JobConfig, prompts: Sequence[Prompt]) -> list[TeacherPlan]:
    facts = teacher_facts(job)
    plans: list[TeacherPlan] = []
    for teacher in job.teachers:
        prompt_tokens = sum(count_message_tokens(p.messages, teacher.model) for p in prompts)
        per_answer = teacher.params.max_tokens or ASSUMED_COMPLETION_TOKENS
        completion_tokens = per_answer * len(prompts)
        price = facts[teacher.name].price
        minutes: dict[str, float] = {}
        if teacher.limits.rpm:
            minutes["rpm"] = len(prompts) / teacher.limits.rpm
        if teacher.limits.tpm:
            minutes["tpm"] = (prompt_tokens + completion_tokens) / teacher.limits.tpm
        binding = max(minutes, key=lambda k: minutes[k]) if minutes else None
        plans.append(
            TeacherPlan(
                teacher=teacher.name,
                requests=len(prompts),
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                completion_is_bound=teacher.params.max_tokens is not None,
                cost_usd=cost_usd(price, prompt_tokens, completion_tokens),
                min_minutes=minutes[binding] if binding else None,
                binding_limit=binding,
            )
        )
    return plans
