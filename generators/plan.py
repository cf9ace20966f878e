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

Every teacher is priced both ways: online, and through its provider's batch API (less the
price entry's ``batch_discount``; None for a provider without one). What the job pays is the
price of the teacher's ``delivery``. A batch teacher's time is its provider's window (answers
within 24 h), not its rate limits: submissions are not paced by ``rpm``/``tpm``.
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
from distillery.storage.rows import Delivery

ASSUMED_COMPLETION_TOKENS = 512


@dataclass(frozen=True)
class TeacherPlan:
    teacher: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    completion_is_bound: bool
    #: What the job pays: the price of the teacher's ``delivery``.
    cost_usd: float | None
    #: Online (rate limits) only: the least time the limits allow, and which binds.
    min_minutes: float | None
    binding_limit: str | None
    #: Of ``completion_tokens``, the part expected to be reasoning (0 without reasoning).
    reasoning_tokens: int = 0
    delivery: Delivery = "online"
    #: The same requests bought online, and through the provider's batch API (None: no price,
    #: or no batch API).
    online_cost_usd: float | None = None
    batch_cost_usd: float | None = None
    #: Whether the teacher's provider has a batch API.
    batch_api: bool = False
    #: Hours within which a batch teacher's provider promises its answers (None: online).
    window_h: int | None = None


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
        online = cost_usd(price, prompt_tokens, completion_tokens)
        limits = provider.submission_limits
        batch = None
        if limits is not None:
            batch = cost_usd(price, prompt_tokens, completion_tokens, delivery="batch")
        by_batch = teacher.delivery == "batch"
        plans.append(
            TeacherPlan(
                teacher=teacher.name,
                requests=requests,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                completion_is_bound=teacher.params.max_tokens is not None,
                reasoning_tokens=thinking * requests,
                cost_usd=batch if by_batch else online,
                min_minutes=None if by_batch or binding is None else minutes[binding],
                binding_limit=None if by_batch else binding,
                delivery=teacher.delivery,
                online_cost_usd=online,
                batch_cost_usd=batch,
                batch_api=limits is not None,
                window_h=limits.window_h if by_batch and limits is not None else None,
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
