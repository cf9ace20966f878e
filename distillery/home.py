"""Where distillery keeps its own state between runs (not the user's data).

``$DISTILLERY_HOME`` or ``~/.distillery``: the managed Prefect server's database and log, and the
tokenizer files unpacked for offline use. Tests point it at a temporary directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def distillery_home() -> Path:
    """The state directory, created on first use."""
    raw = os.environ.get("DISTILLERY_HOME")
    home = Path(raw).expanduser() if raw else Path.home() / ".distillery"
    home.mkdir(parents=True, exist_ok=True)
    return home
