"""The command line as a user runs it: a subprocess, exit codes, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from distillery.emulator import RunningEmulator

from .conftest import REPO, write_job


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distillery", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=240,
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("max_attempts: 2", "max_attempts: 2\n    colour: blue"),
            r"teachers[0].colour: unknown field",
        ),
        (("prompts.jsonl", "absent.jsonl"), "absent.jsonl: cannot read prompts"),
        (
            ("path: prompts.jsonl", "path: prompts.jsonl\n  template: '{{ oops'"),
            "prompts.template:",
        ),
        (
            ("api_key_env: EMULATOR_API_KEY", "api_key_env: NOT_SET_ANYWHERE"),
            "NOT_SET_ANYWHERE is not set",
        ),
        (
            ("batch_size: 5", "batch_size: 0"),
            "batch_size: Input should be greater than or equal to 1",
        ),
        (
            ("output: out", "output: ${DATA_ROOT}/out"),
            "output: environment variable DATA_ROOT is not set",
        ),
        (
            ("output: out", "output: out\ncuration: {filters: [{type: regex, exclude: ['(']}]}"),
            "curation.filters: [0] (regex).exclude: Value error, invalid regular expression",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, edit: tuple[str, str], expected: str
) -> None:
    config = write_job(tmp_path, "http://127.0.0.1:9")
    config.write_text(config.read_text().replace(*edit))
    result = cli("run", str(config), env={"EMULATOR_API_KEY": "k"})
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    assert line.startswith("error: ") and expected in line
    assert not (tmp_path / "out").exists()  # nothing was written


@pytest.mark.slow
def test_run_query_and_rerun(prefect_api: str, emulator: RunningEmulator, tmp_path: Path) -> None:
    config = write_job(tmp_path, emulator.url, prompts=7)
    env = {"EMULATOR_API_KEY": "k", "PREFECT_API_URL": prefect_api}
    first = cli("run", str(config), "--run-id", "cli-run", env=env)
    assert first.returncode == 0, first.stderr
    assert "samples" in first.stdout and "cli-run" in first.stdout
    again = cli("run", str(config), "--run-id", "cli-run", env=env)
    assert again.returncode == 0, again.stderr
    assert "7 already answered" in again.stdout

    query = cli(
        "query",
        "--data",
        str(tmp_path / "out"),
        "--format",
        "json",
        "SELECT run_id, count(*) AS n, count(DISTINCT sample_id) AS ids FROM samples GROUP BY 1",
    )
    assert query.returncode == 0, query.stderr
    assert json.loads(query.stdout) == [{"run_id": "cli-run", "n": 7, "ids": 7}]
    as_csv = cli("query", "-d", str(tmp_path / "out"), "-f", "csv", "SELECT invocations FROM runs")
    assert as_csv.stdout.splitlines() == ["invocations", "2"]
    bad_sql = cli("query", "-d", str(tmp_path / "out"), "SELECT nope FROM samples")
    assert bad_sql.returncode == 2 and "nope" in one_error_line(bad_sql)


@pytest.mark.slow
def test_output_override_and_emulator_flag(prefect_api: str, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere"
    env = {"PREFECT_API_URL": prefect_api}
    result = cli(
        "run",
        str(REPO / "examples" / "emulator.yaml"),
        "--emulator",
        "-o",
        str(out),
        "--run-id",
        "demo",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    rows = cli("query", "-d", str(out), "-f", "json", "SELECT count(*) AS n FROM samples")
    assert json.loads(rows.stdout) == [{"n": 240}]


@pytest.mark.parametrize("run_id", ["r1\n", "../up", "-dash", "a b", "x" * 129])
def test_run_ids_are_matched_whole(tmp_path: Path, run_id: str) -> None:
    config = write_job(tmp_path, "http://127.0.0.1:9")
    result = cli("run", str(config), "--run-id", run_id, env={"EMULATOR_API_KEY": "k"})
    assert result.returncode == 2, result.stderr
    assert "--run-id" in one_error_line(result)
    assert not (tmp_path / "out").exists()


def test_query_skips_a_partition_that_is_no_run_id(tmp_path: Path) -> None:
    from distillery.storage.shards import write_shard

    from .test_storage import sample

    write_shard(tmp_path, "samples", "good", [sample("a", "good")], 0)
    write_shard(tmp_path, "samples", "bad\n", [sample("b", "bad\n")], 0)
    result = cli("query", "-d", str(tmp_path), "-f", "json", "SELECT run_id FROM samples")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"run_id": "good"}]
    assert "not a valid run id" in result.stderr


def test_query_on_missing_directory(tmp_path: Path) -> None:
    result = cli("query", "--data", str(tmp_path / "nope"), "SELECT 1")
    assert result.returncode == 2
    assert "no such directory" in one_error_line(result)


def test_query_on_a_folder_that_holds_no_dataset(tmp_path: Path) -> None:
    # Every view of an empty folder is empty: 0 rows and exit 0 read as "the run made nothing".
    (tmp_path / "notes").mkdir()
    result = cli("query", "--data", str(tmp_path), "SELECT count(*) FROM samples")
    assert result.returncode == 2
    assert "no dataset there" in one_error_line(result)


@pytest.mark.slow
def test_a_run_in_which_every_request_failed_exits_1(prefect_api: str, tmp_path: Path) -> None:
    # Nothing listens on port 9: every attempt is refused. It used to say "completed", exit 0.
    config = write_job(tmp_path, "http://127.0.0.1:9", prompts=3)
    result = cli("run", str(config), "--run-id", "down", env={"EMULATOR_API_KEY": "k"})
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "every request failed (connection_error 3)" in errors[0]
    assert "FROM failures" in errors[0]
    assert "run down — failed" in result.stdout
    runs = cli("query", "-d", str(tmp_path / "out"), "-f", "csv", "SELECT status FROM runs")
    assert runs.stdout.splitlines() == ["status", "failed"]


@pytest.mark.slow
def test_wrong_key_exits_1_without_leaking_it(prefect_api: str, tmp_path: Path) -> None:
    from distillery.emulator import EmulatorOptions

    with RunningEmulator(EmulatorOptions(require_key="the-right-one")) as emulator:
        config = write_job(tmp_path, emulator.url, prompts=20)
        secret = "wrong-but-secret-key-for-tests-0123"
        result = cli(
            "run", str(config), env={"EMULATOR_API_KEY": secret, "PREFECT_API_URL": prefect_api}
        )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "EMULATOR_API_KEY" in errors[0]
    assert "Traceback" not in result.stderr
    assert secret not in result.stderr + result.stdout
    for path in (tmp_path / "out").rglob("*.parquet"):
        assert secret.encode() not in path.read_bytes()


@pytest.mark.slow
def test_lineage_and_catalog_commands(
    prefect_api: str, emulator: RunningEmulator, tmp_path: Path
) -> None:
    config = write_job(tmp_path, emulator.url, prompts=3)
    env = {"EMULATOR_API_KEY": "k", "PREFECT_API_URL": prefect_api}
    assert cli("run", str(config), "--run-id", "lin", env=env).returncode == 0
    out = str(tmp_path / "out")
    ids = cli("query", "-d", out, "-f", "json", "SELECT sample_id FROM samples ORDER BY 1")
    sample_id = json.loads(ids.stdout)[0]["sample_id"]
    shown = cli("lineage", "-d", out, sample_id)
    assert shown.returncode == 0, shown.stderr
    for expected in (
        "teacher_model_version",
        "gpt-4o-mini-",
        "openai-no-competing-models",
        "https://openai.com/policies/terms-of-use/",
        "cost_usd",
    ):
        assert expected in shown.stdout
    missing = cli("lineage", "-d", out, "no-such-id")
    assert missing.returncode == 2 and "not found" in one_error_line(missing)

    database = tmp_path / "catalog.duckdb"
    assert cli("catalog", "--db", str(database), "-d", out).returncode == 0
    import duckdb

    con = duckdb.connect(str(database), read_only=True)
    teachers = con.execute("SELECT teacher_name, samples, cost_usd > 0 FROM teachers").fetchall()
    assert teachers == [("t0", 3, True)]


def test_plan_estimates_tokens_cost_and_time(tmp_path: Path) -> None:
    config = write_job(tmp_path, "http://127.0.0.1:9", prompts=30)
    text = config.read_text().replace(
        "    max_attempts: 2", "    max_attempts: 2\n    limits: {rpm: 60, tpm: 1000000}"
    )
    config.write_text(text + "budget_usd: 5\n")
    result = cli("plan", str(config))
    assert result.returncode == 0, result.stderr
    # 30 requests at 60 rpm bind before 1M tpm: 30 s at full use.
    assert "30s" in result.stdout and "rpm" in result.stdout
    assert "9,000" in result.stdout  # 30 x max_tokens 300
    assert "total: $0.00" in result.stdout and "budget_usd: 5" in result.stdout
    assert not (tmp_path / "out").exists()  # a plan writes nothing


def summary_text(width: int = 120, **fields: Any) -> str:
    """What the CLI prints for a run summary of ``fields`` (on a recording console)."""
    from rich.console import Console

    import distillery.cli as cli_module
    from distillery.flows.generate import RunSummary

    defaults: dict[str, Any] = {"run_id": "r", "dataset": "d", "output": "o"}
    summary = RunSummary(**{**defaults, "requests_skipped": 0, **fields})
    console = Console(record=True, width=width)
    original, cli_module.out = cli_module.out, console
    try:
        cli_module._print_summary(summary, "http://ui")
    finally:
        cli_module.out = original
    return console.export_text()


def test_summary_counts_rejected_answers_as_sent() -> None:
    text = summary_text(
        status="completed", prompts=12, requests_planned=12, samples=9, rejected={"repetition": 3}
    )
    assert "3 (repetition 3)" in text and "9 kept" in text
    assert "not sent" not in text and "12 sent, 0 already answered" in text


def test_a_stopped_runs_summary_says_what_it_sent_not_what_it_planned() -> None:
    """A run of 1,000,000 prompts stopped after 153,328 answers printed "1000000 sent"."""
    text = summary_text(
        run_id="big",
        status="stopped",
        prompts=1_000_000,
        requests_planned=1_000_000,
        samples=153_328,
    )
    assert "153,328 sent of 1,000,000 planned, 0 already answered earlier" in text
    assert "153,328 kept" in text and "1,000,000" in text
    assert "846,672 (re-run with --run-id big to finish)" in text


def test_a_reasoning_style_without_with_reasoning_is_refused(tmp_path: Path) -> None:
    # It used to be ignored silently: the export had no trace and said nothing.
    result = cli("export", "--data", str(tmp_path), "-o", str(tmp_path / "x.jsonl"),
                 "--reasoning-style", "field")  # fmt: skip
    assert result.returncode == 2
    assert "add --with-reasoning" in one_error_line(result)


def test_the_paths_of_a_job_are_normalised(tmp_path: Path) -> None:
    from distillery.config import load_config

    (tmp_path / "jobs").mkdir()
    config = write_job(tmp_path / "jobs", "http://127.0.0.1:9")
    (tmp_path / "jobs" / "prompts.jsonl").rename(tmp_path / "prompts.jsonl")
    text = config.read_text().replace("output: out", "output: ../out")
    config.write_text(text.replace("prompts.jsonl", "../prompts.jsonl"))
    job = load_config(config)
    assert job.output == tmp_path / "out"
    assert job.prompts.path == tmp_path / "prompts.jsonl"  # as errors and records name it


def test_every_problem_of_a_job_is_reported_at_once_before_anything_starts(
    tmp_path: Path,
) -> None:
    config = write_job(tmp_path, "http://127.0.0.1:9")
    config.write_text(config.read_text().replace("prompts.jsonl", "absent.jsonl"))
    (tmp_path / "out").write_text("a file where the output directory goes")
    result = cli("run", str(config), env={"EMULATOR_API_KEY": ""})
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 3, result.stderr
    assert "absent.jsonl" in errors[0]  # in the order they are fixed
    assert "out" in errors[1]
    assert "EMULATOR_API_KEY is empty" in errors[2]  # set, but to nothing: not "not set"
    with_emulator = cli("run", str(config), "--emulator")
    assert with_emulator.returncode == 2
    assert "emulator" not in with_emulator.stderr  # refused before it was started


def test_plan_names_a_teachers_own_budget(tmp_path: Path) -> None:
    config = write_job(tmp_path, "http://127.0.0.1:9", prompts=3000)
    text = config.read_text().replace(
        "    max_attempts: 2", "    max_attempts: 2\n    budget_usd: 0.01"
    )
    config.write_text(text)
    result = cli("plan", str(config))
    assert result.returncode == 0, result.stderr
    assert "t0: budget_usd 0.01 — below its estimate: it will stop early" in result.stdout


def test_plan_as_json_and_csv_prices_each_teacher_as_it_is_sent(tmp_path: Path) -> None:
    config = write_job(tmp_path, "http://127.0.0.1:9", prompts=30, teachers=2)
    text = config.read_text().replace(
        "temperature: 0.2, max_tokens: 300}",
        "temperature: 0.2, max_tokens: 300}\n    delivery: batch",
    )
    config.write_text(text)
    result = cli("plan", str(config), "--format", "json")
    assert result.returncode == 0, result.stderr
    online, batch = json.loads(result.stdout)  # nothing but the records on stdout
    assert (online["delivery"], batch["delivery"]) == ("online", "batch")
    assert online["cost_usd"] == online["online_cost_usd"] > online["batch_cost_usd"] > 0
    assert batch["cost_usd"] == batch["batch_cost_usd"]
    assert batch["batch_cost_usd"] == pytest.approx(batch["online_cost_usd"] / 2)
    assert (batch["window_h"], batch["min_minutes"], online["window_h"]) == (24, None, None)
    table = cli("plan", str(config), "--format", "csv")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.startswith("teacher,delivery,requests,") and "batch_cost_usd" in header
    assert [row.split(",")[:2] for row in rows] == [["t0", "online"], ["t1", "batch"]]


def test_version() -> None:
    from distillery import __version__

    version = cli("--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"distillery {__version__}")


def test_a_wrong_table_name_lists_the_views(tmp_path: Path) -> None:
    from distillery.storage.shards import write_shard

    from .test_storage import sample

    write_shard(tmp_path, "samples", "r1", [sample("a")], 0)
    result = cli("query", "--data", str(tmp_path), "SELECT * FROM sample")
    assert result.returncode == 2
    assert "(the views: samples, rejected, failures" in one_error_line(result)


def test_query_reads_at_80_columns(tmp_path: Path) -> None:
    from distillery.storage.shards import write_shard

    from .test_storage import sample

    write_shard(tmp_path, "samples", "r1", [sample("a") | {"cost_usd": 0.0007797000000000001}], 0)
    wide = cli("query", "-d", str(tmp_path), "SELECT * FROM samples", env={"COLUMNS": "80"})
    assert wide.returncode == 0, wide.stderr
    lines = wide.stdout.splitlines()
    assert lines[0].strip() == "row 1"  # one block per row, a column a line
    assert any(line.split()[:2] == ["sample_id", "a"] for line in lines)
    assert all(len(line) <= 80 for line in lines)
    narrow = cli(
        "query", "-d", str(tmp_path), "SELECT cost_usd FROM samples", env={"COLUMNS": "80"}
    )
    assert "0.0007797 " in narrow.stdout and "0.00077970000" not in narrow.stdout
    exact = cli("query", "-d", str(tmp_path), "-f", "csv", "SELECT cost_usd FROM samples")
    assert exact.stdout.splitlines()[1] == "0.0007797000000000001"  # csv keeps every digit


def test_plan_reads_at_80_columns(tmp_path: Path) -> None:
    config = write_job(tmp_path, "http://127.0.0.1:9", prompts=30)
    result = cli("plan", str(config), env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), result.stdout
    assert "…" not in result.stdout  # no header or value cut short ("reques…")
    header = " ".join(lines[:6])
    for word in ("teacher", "requests", "prompt", "answer", "online", "batch", "bound by"):
        assert word in header, result.stdout
    narrow = cli("plan", str(config), env={"COLUMNS": "40"})
    assert narrow.returncode == 0, narrow.stderr
    assert "…" not in narrow.stdout  # too narrow for a table: a block per teacher
    assert any(line.split()[:2] == ["requests", "30"] for line in narrow.stdout.splitlines())


@pytest.mark.parametrize("command", [[], ["run"], ["query"], ["server"], ["emulator"]])
def test_help_names_arguments_as_the_docs_do(command: list[str]) -> None:
    result = cli(*command, "--help", env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    assert "<bool>" not in result.stdout  # a flag takes no value
    assert "…" not in result.stdout  # no option name cut ("--reasoning-redact-ra…")
    assert "{" not in result.stdout.splitlines()[1]  # usage: `run [OPTIONS] CONFIG`
    if command == ["run"]:
        assert "run [OPTIONS] CONFIG" in result.stdout
