"""Issue 3's proof: 1,200 prompts to three providers at 20% mixed faults.

Every request ends as a sample or a failure row with a reason, no sample id twice, every
answer the emulator served is stored, and the run exits 0 with failures counted by class.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.storage.catalog import open_catalog

from .conftest import write_prompts

pytestmark = pytest.mark.slow

PROMPTS = 1200


def job_file(directory: Path, url: str) -> Path:
    write_prompts(directory / "prompts.jsonl", PROMPTS)
    teachers = [
        ("openai", "gpt-4o-mini", f"{url}/v1"),
        ("anthropic", "claude-3-5-haiku", url),
        ("gemini", "gemini-2.0-flash", url),
    ]
    lines = ["name: fault-matrix", "prompts: {path: prompts.jsonl}", "teachers:"]
    for provider, model, base in teachers:
        lines += [
            f"  - name: {provider}",
            f"    provider: {provider}",
            f"    model: {model}",
            f"    base_url: {base}",
            "    api_key_env: EMULATOR_API_KEY",
            "    params: {max_tokens: 200}",
            "    concurrency: 48",
            "    max_attempts: 4",
            "    timeout_s: 1.0",
        ]
    # "1,200 prompts over the three providers": each prompt to one provider (split routing).
    lines += ["routing: {mode: split}", "batch_size: 200", "max_batches_in_flight: 3"]
    lines += ["output: out"]
    config = directory / "job.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


def test_fault_matrix_three_providers(prefect_api: str, tmp_path: Path) -> None:
    options = EmulatorOptions(seed=11, fault_rate=0.2, hang_s=2.0)
    with RunningEmulator(options) as emulator:
        config = job_file(tmp_path, emulator.url)
        result = subprocess.run(
            [sys.executable, "-m", "distillery", "run", str(config), "--run-id", "faults"],
            env={
                **os.environ,
                "EMULATOR_API_KEY": "k",
                "PREFECT_API_URL": prefect_api,
                "COLUMNS": "200",
            },
            capture_output=True,
            text=True,
            timeout=280,
            check=False,
        )
        stats = emulator.stats()
    assert result.returncode == 0, result.stderr[-3000:]
    con = open_catalog(tmp_path / "out")
    # Answers are kept as samples or set aside in rejected (e.g. empty ones): both are stored.
    samples, distinct = con.execute(
        """SELECT count(*), count(DISTINCT sample_id) FROM
           (SELECT sample_id FROM samples UNION ALL SELECT sample_id FROM rejected)"""
    ).fetchall()[0]
    failures = con.execute("SELECT count(*) FROM failures").fetchall()[0][0]
    assert samples == distinct
    assert samples + failures == PROMPTS  # every request accounted for
    per_provider = con.execute(
        """SELECT teacher_provider, count(*) FROM
           (SELECT teacher_provider FROM samples UNION ALL SELECT teacher_provider FROM rejected
            UNION ALL SELECT teacher_provider FROM failures) GROUP BY ALL"""
    ).fetchall()
    assert len(per_provider) == 3 and all(n > PROMPTS / 4 for _, n in per_provider)
    # Every answer the emulator served (clean or flagged) is stored, nothing else is — but for
    # answers that came after the client's 1 s deadline (on a loaded machine a clean answer can
    # take that long): those attempts were retried and are counted as maybe billed twice, or
    # the request ended as a timeout failure. Nothing stored was not served.
    served_ok, served_flagged = stats["served_ok"], stats["served_flagged"]
    assert isinstance(served_ok, int) and isinstance(served_flagged, int)
    abandoned = (
        con.execute(
            """SELECT coalesce(sum(maybe_billed_twice), 0) FROM
           (SELECT maybe_billed_twice FROM samples UNION ALL SELECT maybe_billed_twice FROM rejected
            UNION ALL SELECT maybe_billed_twice FROM failures)"""
        ).fetchall()[0][0]
        + con.execute("SELECT count(*) FROM failures WHERE error_class = 'timeout'").fetchall()[0][
            0
        ]
    )
    assert samples <= served_ok + served_flagged <= samples + abandoned
    faults = stats["faults"]
    assert isinstance(faults, dict) and sum(faults.values()) > 0.15 * PROMPTS
    classes = dict(
        con.execute("SELECT error_class, count(*) FROM failures GROUP BY ALL").fetchall()
    )
    assert classes, "20% faults with 4 attempts must leave some failures (e.g. 429-long)"
    assert con.execute(
        "SELECT count(*) FROM failures WHERE error_class IS NULL OR message IS NULL"
    ).fetchall() == [(0,)]
    # The summary counts failures by class.
    for error_class, count in classes.items():
        assert f"{error_class} {count}" in result.stdout
    flagged = dict(
        con.execute(
            """SELECT finish_reason, count(*) FROM
               (SELECT finish_reason FROM samples UNION ALL SELECT finish_reason FROM rejected)
               GROUP BY ALL"""
        ).fetchall()
    )
    assert {"length", "content_filter", "refusal"} <= set(flagged)
    retried = con.execute("SELECT count(*) FROM samples WHERE attempts > 1").fetchall()[0][0]
    assert retried > 0
    assert con.execute("SELECT status FROM runs").fetchall() == [("completed",)]
