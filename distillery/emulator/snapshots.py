"""Dated model snapshots, as real APIs return them instead of the alias that was asked for.

Clients must record the *returned* model (the snapshot that answered); the emulator makes the
two differ so that code path is exercised. Dates come from a stable hash of the name, so an
unknown model gets the same snapshot in every run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re

# -YYYY-MM-DD (OpenAI), -YYYYMMDD (Anthropic), -MMDD (older OpenAI, e.g. gpt-4-0613).
_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")
_EPOCH = dt.date(2023, 1, 1)
_SPAN_DAYS = 3 * 365


def is_dated(model: str) -> bool:
    """True if the name already pins a snapshot, so it is returned unchanged."""
    return _DATE_SUFFIX.search(model) is not None


def snapshot_date(model: str) -> dt.date:
    """A release date for ``model``, the same in every process."""
    digest = hashlib.blake2b(model.encode(), digest_size=8).digest()
    return _EPOCH + dt.timedelta(days=int.from_bytes(digest, "big") % _SPAN_DAYS)
