"""An LLM judge: a teacher that grades answers, through the same rate-limited clients.

A judge is a filter that costs a request per sample, so it runs after the cheap filters, on the
answers they kept, concurrently within the batch, admitted by its own limiter like any teacher.
Its verdict is lineage too: every judged row records the score, the judge's returned model
version, its response id, what it said and what it cost. An answer the judge could not grade
(its request failed, or no score could be read) is kept with ``judge_score`` null — a failing
judge must not silently empty the dataset.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import jinja2

from distillery.config import JudgeConfig
from distillery.generators.client import TeacherClient
from distillery.generators.pricing import PriceEntry, answer_cost
from distillery.storage.rows import JudgeColumns, RejectedRow, SampleRow, rejected_row

_SCORE = re.compile(r"score\s*[:=]?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


@dataclass(frozen=True)
class Grade:
    """The judge's verdict on one row, and the ``judge_*`` columns it writes there."""

    score: float | None
    columns: JudgeColumns

    def mark(self, row: SampleRow) -> None:
        """Set the row's ``judge_*`` columns."""
        columns = self.columns
        row["judge_teacher"] = columns["judge_teacher"]
        row["judge_score"] = columns.get("judge_score")
        row["judge_model_version"] = columns.get("judge_model_version")
        row["judge_response_id"] = columns.get("judge_response_id")
        row["judge_text"] = columns.get("judge_text")
        row["judge_cost_usd"] = columns.get("judge_cost_usd")


def parse_score(text: str, scale: float) -> float | None:
    """The first ``Score: N`` in the judge's answer, if it is within 0..scale."""
    match = _SCORE.search(text)
    if match is None:
        return None
    value = float(match.group(1))
    return value if 0 <= value <= scale else None


class Judge:
    """Grades sample rows with one teacher and a prompt template."""

    def __init__(self, config: JudgeConfig, client: TeacherClient, price: PriceEntry | None):
        self.config = config
        self.client = client
        self.price = price
        environment = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
        self.template = environment.from_string(config.template)

    async def grade(self, row: SampleRow) -> Grade:
        # A conversation (recipe) is graded on its last answer, after everything said before it.
        conversation = row.get("conversation") or []
        said = conversation[:-1]
        prompt = (None if said else row.get("prompt")) or "\n\n".join(
            f"{m['role']}: {m['content']}" for m in said or row.get("messages") or []
        )
        content = self.template.render(prompt=prompt, response=row.get("response_text") or "")
        outcome = await self.client.complete([{"role": "user", "content": content}])
        columns: JudgeColumns = {"judge_teacher": self.config.teacher.name}
        if outcome.completion is None:
            failure = outcome.failure
            columns["judge_text"] = f"judge failed: {failure.error_class}" if failure else None
            return Grade(None, columns)
        done = outcome.completion
        score = parse_score(done.text, self.config.scale)
        columns.update(
            {
                "judge_score": score,
                "judge_model_version": done.model_version,
                "judge_response_id": done.response_id,
                "judge_text": done.text[:2000],
                "judge_cost_usd": answer_cost(self.price, done),
            }
        )
        return Grade(score, columns)

    async def apply(self, rows: list[SampleRow]) -> tuple[list[SampleRow], list[RejectedRow]]:
        """Grade ``rows`` concurrently; (kept, rejected) with the judge's columns on each."""
        grades = await asyncio.gather(*(self.grade(row) for row in rows))
        kept: list[SampleRow] = []
        rejected: list[RejectedRow] = []
        for row, grade in zip(rows, grades, strict=True):
            grade.mark(row)
            if grade.score is not None and grade.score < self.config.threshold:
                detail = f"score {grade.score:g} < {self.config.threshold:g}"
                rejected.append(rejected_row(row, "judge", "low_score", detail))
            else:
                kept.append(row)
        return kept, rejected
