"""The terms registry: under which terms each teacher's outputs were produced, and what they allow.

Vendors' terms often restrict training on their outputs; every sample carries the tag of its
teacher's terms (``usage_terms``) so a dataset's lineage can be proven — and filtered — later.
Each entry also says which intended uses of a model trained on those outputs its terms permit
(``permits``) and what comes with them (``obligations``), so that a release export can refuse
rows whose terms forbid the use it states (``storage/release/terms_gate.py``). An entry without
``permits`` permits nothing: terms nobody summarised are treated as restrictive, never as free.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field

from distillery.generators.lookup import Keyed, first_match, load_entries

UNKNOWN_TAG = "unknown"

#: Intended uses of a model trained on the outputs: non-commercial research; a model used inside
#: an organisation only; a model sold, served or distributed commercially; a model that competes
#: with the teacher's vendor (e.g. a general chat model trained on a proprietary API's answers).
Use = Literal["research", "internal", "commercial", "competing-model"]
USES: tuple[Use, ...] = get_args(Use)


class TermsEntry(Keyed):
    tag: str
    summary: str
    url: str
    reviewed: date
    permits: list[Use] = Field(default_factory=list)  # none: restricted
    obligations: list[str] = Field(default_factory=list)


def load_terms(extra: Path | None = None) -> list[TermsEntry]:
    return load_entries(TermsEntry, "terms.yaml", extra)


def terms_for(entries: list[TermsEntry], provider: str, model: str) -> TermsEntry:
    """The matching entry, or an explicit "unknown" one (never silently no tag)."""
    found = first_match(entries, provider, model)
    if found is not None:
        return found
    return TermsEntry(
        provider=provider,
        model=model,
        tag=UNKNOWN_TAG,
        summary="No terms entry matches this teacher: review its terms and add one.",
        url="",
        reviewed=date(1970, 1, 1),
    )


def entry_for_tag(entries: Sequence[TermsEntry], tag: str) -> TermsEntry | None:
    """The first entry carrying ``tag`` (a job's own entries come first, so they override), or
    None for ``unknown`` and tags no entry carries any more."""
    if tag == UNKNOWN_TAG:
        return None
    return next((entry for entry in entries if entry.tag == tag), None)
