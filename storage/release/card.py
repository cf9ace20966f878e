"""The dataset card of a release: ``README.md`` with the Hub's YAML header, from a template.

The header is what the Hub and the ``datasets`` library read: ``configs`` (one default config,
``data_files`` per split as path globs), the license, task and size categories, language, tags,
and a ``distillery`` block with the lineage summary (teachers, runs, the stated use). The body
says, for a human, where every row came from and under which terms (``card.md.j2``, which
includes ``facts.md.j2``: the part the Prefect run's card artifact shows too).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import yaml

from distillery.storage.release.facts import Facts

if TYPE_CHECKING:
    from distillery.generators.terms import TermsEntry
    from distillery.storage.release.plots import Plot, Skipped
    from distillery.storage.release.terms_gate import GateDecision

#: Terms tags that are, as such, a license the Hub knows by id. Any other tag, or several
#: different ones, make the header ``license: other`` with a name and a link.
HUB_LICENSES = {
    "apache-2.0": "apache-2.0",
    "mit": "mit",
    "llama-3.1-attribution": "llama3.1",
    "gemma-model-derivative": "gemma",
}
#: The Hub's size buckets, upper bounds.
SIZES = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
]


@dataclass(frozen=True)
class EvalSetResult:
    name: str
    path: str
    field: str
    items: int
    short: int  # items with fewer words than can identify a match: read, never matched
    removed: int


@dataclass(frozen=True)
class Decontamination:
    ngram: int
    sets: list[EvalSetResult]
    rows: int


@dataclass(frozen=True)
class Card:
    """Everything the release card states."""

    name: str
    source: str
    where: str | None
    reasoning: str | None
    facts: Facts
    gate: GateDecision
    max_age_days: int
    shares: dict[str, float]
    rows: Mapping[str, int]
    files: dict[str, list[str]]
    plots: list[Plot]
    skipped: list[Skipped]
    decontamination: Decontamination | None
    exported_at: datetime
    version: str


def size_category(rows: int) -> str:
    for bound, name in SIZES:
        if rows < bound:
            return name
    return "n>1B"


def license_fields(tags: list[str], entries: Mapping[str, TermsEntry]) -> dict[str, str]:
    """``license`` when every row's terms are one license the Hub knows; otherwise ``other``
    with ``license_name`` (the tag, or ``mixed-teacher-terms``) and ``license_link`` (the
    tag's terms, or this card's terms section)."""
    ids = {HUB_LICENSES.get(tag) for tag in tags}
    if len(ids) == 1 and None not in ids:
        return {"license": str(ids.pop())}
    if len(tags) == 1:
        entry = entries.get(tags[0])
        return {
            "license": "other",
            "license_name": tags[0],
            "license_link": entry.url if entry is not None and entry.url else "README.md",
        }
    return {
        "license": "other",
        "license_name": "mixed-teacher-terms",
        "license_link": "README.md#terms-of-use",
    }


def header(card: Card) -> dict[str, Any]:
    facts = card.facts
    total = sum(card.rows.values())
    fields: dict[str, Any] = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [
                    {"split": split, "path": f"data/{split}-*"}
                    for split in card.shares
                    if card.files.get(split)
                ],
            }
        ],
        **license_fields(facts.tags, card.gate.entries),
        "task_categories": ["text-generation"],
        "size_categories": [size_category(total)],
    }
    if facts.languages:
        fields["language"] = facts.languages
    fields["tags"] = ["synthetic", "distillation"]
    fields["distillery"] = {
        "version": card.version,
        "use": card.gate.use,
        "exported_at": card.exported_at.isoformat(timespec="seconds"),
        "teachers": [
            {
                "name": t.name,
                "provider": t.provider,
                "model": t.model,
                "versions": t.versions,
                "rows": t.rows,
                "cost_usd": round(t.cost_usd, 6),
                "terms": t.tags,
            }
            for t in facts.teachers
        ],
        "runs": [
            {"run_id": r.run_id, "config_hash": r.config_hash, "version": r.distillery_version}
            for r in facts.runs
        ],
        "splits": dict(card.rows),
        "decontaminated_rows": card.decontamination.rows if card.decontamination else 0,
    }
    return fields


def _cell(value: object) -> str:
    """A value inside a Markdown table cell: one line, pipes escaped."""
    return " ".join(str("" if value is None else value).split()).replace("|", "\\|")


def _when(value: datetime | date | None) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return value.isoformat()


def _terms_link(tag: str, terms: Mapping[str, TermsEntry | None]) -> str:
    entry = terms.get(tag)
    return f"[{tag}]({entry.url})" if entry is not None and entry.url else tag


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent),
        autoescape=False,  # Markdown, not HTML
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["cell"] = _cell
    env.filters["when"] = _when
    env.filters["terms_link"] = _terms_link
    return env


def render_facts(facts: Facts, terms: Mapping[str, TermsEntry | None]) -> str:
    """The facts section alone (the Prefect run's card artifact shows it)."""
    text = (
        environment()
        .get_template("facts.md.j2")
        .render(facts=facts, terms=terms, terms_used={tag: terms.get(tag) for tag in facts.tags})
    )
    return _tidy(text)


def _tidy(markdown: str) -> str:
    """At most one blank line in a row (the templates' blocks leave more)."""
    return re.sub(r"\n{3,}", "\n\n", markdown)


def render_card(card: Card) -> str:
    gate = card.gate
    included: dict[str, int] = {}
    for group in gate.included:
        included[group.tag] = included.get(group.tag, 0) + group.rows
    terms: dict[str, TermsEntry | None] = {tag: gate.entries.get(tag) for tag in card.facts.tags}
    text = (
        environment()
        .get_template("card.md.j2")
        .render(
            header=yaml.safe_dump(header(card), sort_keys=False, allow_unicode=True).strip(),
            name=card.name,
            version=card.version,
            total=sum(card.rows.values()),
            reasoning=card.reasoning,
            exported_at=card.exported_at,
            source=card.source,
            where=card.where,
            gate=gate,
            included_tags=included,
            obligations={tag: gate.obligations[tag] for tag in sorted(gate.obligations)},
            max_age_days=card.max_age_days,
            facts=card.facts,
            terms=terms,
            terms_used={},  # the terms section above says it per tag
            shares=card.shares,
            rows=card.rows,
            files=card.files,
            decontamination=card.decontamination,
            plots=card.plots,
            skipped=card.skipped,
        )
    )
    return _tidy(text)
