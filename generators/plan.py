"""What a job will cost before anything is sent: tokens, dollars, and the time limits allow.

Token estimates are the provider's (:meth:`.Provider.prompt_tokens`,
:meth:`.Provider.completion_bound`). Prompt tokens are counted with tiktoken (exact for OpenAI
models, an estimate for others); completion tokens are the provider's bound — ``max_tokens``
when set, an upper bound which includes reasoning for every provider (Anthropic needs
budget_tokens < max_tokens; OpenAI's and Gemini's limits count reasoning tokens) — or an
assumed :data:`ASSUMED_COMPLETION_TOKENS` plus, for a reasoning teacher, its thinking budget
(or the effort's, see :mod:`.providers.reasoning`). Reasoning
tokens are billed as output, so they are in the completion tokens and the cost. The minimum
wall time is what the rate limits allow at full utilisation: requests / rpm or tokens / tpm,
whichever binds, for the slowest teacher.

Requests follow the job's routing and ``n``: a teacher counts ``n`` requests per prompt routed
to it first; fallback teachers count none (they are asked only when an earlier one fails).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from distillery.config import JobConfig, TeacherConfig
from distillery.generators.pricing import cost_usd
from distillery.generators.prompts import Prompt
from distillery.generators.providers.base import Provider
from distillery.generators.providers.reasoning import expected_reasoning_tokens
from distillery.generators.providers.registry import get_provider
from distillery.generators.records import teacher_facts
from distillery.generators.routing import Router

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
    #: Of ``completion_tokens``, the part expected to be reasoning (0 without reasoning).
    reasoning_tokens: int = 0


def plan_job(job: JobConfig, prompts: Iterable[Prompt]) -> list[TeacherPlan]:
    """Each teacher's share of the job, the prompts read once as they stream (a plan of a
    million prompts holds none of them: BENCHMARKS.md, "Memory of a run")."""
    facts = teacher_facts(job)
    router = Router(job)
    teachers = {t.name: (t, get_provider(t.provider)) for t in job.teachers}
    routed = dict.fromkeys(teachers, 0)
    tokens_in = dict.fromkeys(teachers, 0)
    for prompt in prompts:
        for chain in router.chains(prompt.prompt_id):
            teacher, provider = teachers[chain[0].name]
            routed[teacher.name] += 1
            tokens_in[teacher.name] += provider.prompt_tokens(prompt.messages, teacher.model)
    plans: list[TeacherPlan] = []
    for teacher in job.teachers:
        provider = get_provider(teacher.provider)
        requests = routed[teacher.name] * job.n
        prompt_tokens = job.n * tokens_in[teacher.name]
        per_answer, thinking = completion_per_answer(teacher, provider)
        completion_tokens = per_answer * requests
        price = facts[teacher.name].price
        minutes: dict[str, float] = {}
        if teacher.limits.rpm:
            minutes["rpm"] = requests / teacher.limits.rpm
        if teacher.limits.tpm:
            minutes["tpm"] = (prompt_tokens + completion_tokens) / teacher.limits.tpm
        binding = max(minutes, key=lambda k: minutes[k]) if minutes else None
        plans.append(
            TeacherPlan(
                teacher=teacher.name,
                requests=requests,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                completion_is_bound=teacher.params.max_tokens is not None,
                reasoning_tokens=thinking * requests,
                cost_usd=cost_usd(price, prompt_tokens, completion_tokens),
                min_minutes=minutes[binding] if binding else None,
                binding_limit=binding,
            )
        )
    return plans


def completion_per_answer(teacher: TeacherConfig, provider: Provider) -> tuple[int, int]:
    """(completion tokens, of which reasoning) expected per answer of ``teacher``.

    A bound (``max_tokens``, or what the provider sends in its place) holds reasoning and
    answer together; the reasoning share is the budget, at most the bound.
    """
    thinking = expected_reasoning_tokens(teacher)
    bound = provider.completion_bound(teacher)
    if bound is not None:
        return bound, min(thinking, bound)
    return ASSUMED_COMPLETION_TOKENS + thinking, thinking
