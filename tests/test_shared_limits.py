"""Two worker processes, one teacher limit held by the Prefect server.

The emulator enforces the limit server-side (as a provider does), so any moment the two workers
together went over it would show up as a 429 it refused.
"""

from pathlib import Path

import pytest

from .workers import run_split_job

pytestmark = pytest.mark.slow


def test_two_workers_share_one_limit(prefect_api: str, tmp_path: Path) -> None:
    stats = run_split_job(tmp_path, prefect_api, prompts=80, rpm=2400, window=3.0)
    assert stats["rate_limited"] == 0  # together they never went over the limit
    assert stats["served_ok"] == 160
