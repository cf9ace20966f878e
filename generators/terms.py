"""The terms registry: under which terms each teacher's outputs were produced.

Vendors' terms often restrict training on their outputs; every sample carries the tag of its
teacher's terms (``usage_terms``) so a dataset's lineage can be proven — and filtered — later.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from distillery.generators.lookup import Keyed, first_match, load_entries

UNKNOWN_TAG = "unknown"


class TermsEntry(Keyed):
    tag: str
    summary: str
    url: str
    reviewed: date


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
