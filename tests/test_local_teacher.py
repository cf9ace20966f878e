"""The embedded local teacher for real: llama.cpp serving Gemma 3 270M, through the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def test_quickstart_job_on_the_local_teacher(prefect_api: str, tmp_path: Path) -> None:
    config = tmp_path / "quickstart.yaml"
    text = (REPO / "examples" / "quickstart.yaml").read_text()
    text = text.replace("path: prompts.jsonl", f"path: {REPO / 'examples' / 'prompts.jsonl'}")
    config.write_text(
        text.replace("limit: 12", "limit: 3").replace("max_tokens: 64", "max_tokens: 24")
    )
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "LOCAL_TEACHER_URL": "http://127.0.0.1:18766",
        "DISTILLERY_OUTPUT": str(tmp_path / "out"),
    }
    run = subprocess.run(
        [sys.executable, "-m", "distillery", "run", str(config), "--run-id", "local"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    query = subprocess.run(
        [
            sys.executable,
            "-m",
            "distillery",
            "query",
            "-d",
            str(tmp_path / "out"),
            "-f",
            "json",
            """SELECT teacher_provider, teacher_model_version, usage_terms, completion_tokens,
                   response_text FROM samples
            UNION ALL BY NAME
            SELECT teacher_provider, teacher_model_version, usage_terms, completion_tokens,
                   response_text FROM rejected""",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = json.loads(query.stdout)
    assert len(rows) == 3  # every prompt answered (kept or rejected by a filter)
    for row in rows:
        assert row["teacher_provider"] == "local"
        assert row["teacher_model_version"].startswith("gemma-3-270m-q4_k_m.gguf@sha256:a5fd3b62")
        assert row["usage_terms"] == "gemma-model-derivative"
    assert any(row["completion_tokens"] and row["response_text"].strip() for row in rows)
