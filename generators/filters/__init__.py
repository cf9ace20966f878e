"""Sample filters: one small class per check, each returning keep or (drop, reason).

Configured as a list in the job file, e.g.
``filters: [{type: length, min_tokens: 5}, {type: refusal}]``, and built with
:func:`build_filters`. Importing this package registers every filter below.
"""

from distillery.generators.filters import (
    empty,
    json_output,
    language,
    length,
    reasoning,
    refusal,
    regex,
    repetition,
    truncated,
)
from distillery.generators.filters.base import (
    FILTERS,
    KEEP,
    Filter,
    FilterOptions,
    Verdict,
    build_filters,
    drop,
    parse_filters,
    register,
    run_filters,
)

__all__ = [
    "FILTERS",
    "KEEP",
    "Filter",
    "FilterOptions",
    "Verdict",
    "build_filters",
    "drop",
    "empty",
    "json_output",
    "language",
    "length",
    "parse_filters",
    "reasoning",
    "refusal",
    "regex",
    "register",
    "repetition",
    "run_filters",
    "truncated",
]
