"""Named crash points, so tests can kill a process at each step of a commit and see what it
leaves behind (as fail-rs and FoundationDB's simulation do).

``DISTILLERY_FAILPOINT=NAME`` (or ``NAME@N`` for the Nth time the point is reached) makes the
process end with :func:`os._exit` there: no ``finally`` block, no flush, no cleanup — what
``kill -9`` does at that instant. Unset (always, outside tests), a point costs one dictionary
look-up.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

ENV = "DISTILLERY_FAILPOINT"
# The exit status of a process killed by SIGKILL, as a shell reports it.
KILLED = 137
_hits: Counter[str] = Counter()


def failpoint(name: str) -> None:
    """End the process here if ``DISTILLERY_FAILPOINT`` names this point (and hit)."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition("@")
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] == int(nth or 1):
        sys.stderr.flush()
        os._exit(KILLED)
