"""``distillery submissions``: a run's provider submissions as the journal holds them, at 80
columns or as csv/json, and the one-line errors of a folder or run without any.

The journal is real (``storage/submissions.py`` writes and advances its records, as a run's
flow does); no provider is needed to read it, nor Prefect, so the CLI runs in-process
(typer's CliRunner). The journal's clock and the command's (``submissions_report.now``) are
set, so ages are exact.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from distillery import submissions_report
from distillery.cli import app
from distillery.generators.providers.base import SubmissionLimits
from distillery.storage.submissions import Entry, Journal, SubmissionItem, SubmissionRecord
from distillery.submissions_report import RECORD_FIELDS, age

from .test_object_storage import bucket, s3, s3_endpoint  # noqa: F401  (fixtures)

#: When the command runs (``submissions_report.now``), and how long before it the submissions
#: were prepared.
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
AGE = timedelta(hours=3, minutes=12, seconds=30)
OPENAI_BATCH = "batch_67a1b2c3d4e5f60718293a4b5c6d7e8f"
ANTHROPIC_BATCH = "msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d"
#: Brackets, as a provider's message may have, are printed as they are (not taken as markup).
EXPIRED = "[expired] the provider's 24 h window ended before it answered"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def entries(teacher: str, count: int, cost: float) -> Iterator[Entry]:
    for n in range(count):
        custom_id = f"{teacher}-{n}"
        item = SubmissionItem(
            custom_id=custom_id,
            prompt_id=f"p{n}",
            sample_index=0,
            teacher=teacher,
            messages=[{"role": "user", "content": f"question {n}"}],
        )
        yield Entry(custom_id, json.dumps({"custom_id": custom_id}).encode(), item, cost)


def submit(
    journal: Journal, teacher: str, provider: str, count: int, cost: float = 0.001
) -> SubmissionRecord:
    writer = journal.new_submission(
        teacher, provider, f"{provider}-model", SubmissionLimits(None, 1 << 20)
    )
    [record] = writer.write(entries(teacher, count, cost))
    return record


@pytest.fixture
def dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``out`` in the working directory: run r1 with a collected, an open and an abandoned
    submission; run r2 with one prepared, unsent."""
    monkeypatch.setattr(submissions_report, "now", lambda: NOW)
    clock = Clock(NOW - AGE)
    r1 = Journal(tmp_path / "out", "r1", clock=clock)
    done = submit(r1, "gpt", "openai", 40)
    done = r1.advance(done, "created", provider_batch_id=OPENAI_BATCH)
    clock.now = NOW - timedelta(minutes=20)  # it ended (and was collected) 20 minutes ago
    done = r1.advance(
        done,
        "ended",
        provider_state="completed",
        counts={"total": 40, "completed": 38, "failed": 2},
    )
    r1.advance(done, "collected")
    open_ = submit(r1, "claude", "anthropic", 10, cost=0.002)
    r1.advance(
        open_,
        "created",
        provider_batch_id=ANTHROPIC_BATCH,
        provider_state="in_progress",
        counts={"processing": 10, "succeeded": 0, "errored": 0},
    )
    clock.now = NOW - AGE
    lost = submit(r1, "claude", "anthropic", 2)
    r1.advance(lost, "abandoned", error=EXPIRED)
    submit(Journal(tmp_path / "out", "r2", clock=clock), "gpt", "openai", 5)
    monkeypatch.chdir(tmp_path)  # `--data out`: the lines that name it fit 80 columns too
    return tmp_path / "out"


def invoke(*args: str, columns: int = 80) -> Result:
    """The command in this process, printing ``columns`` wide: the CLI's consoles are made at
    import, with whatever width the process had then (another test's, under xdist)."""
    from rich.console import Console

    from distillery import cli

    saved = cli.out, cli.err
    cli.out, cli.err = Console(width=columns), Console(width=columns, stderr=True)
    try:
        return CliRunner().invoke(app, ["submissions", *args], env={"COLUMNS": str(columns)})
    finally:
        cli.out, cli.err = saved


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_a_run_at_80_columns_is_a_block_per_submission(dataset: Path) -> None:
    result = invoke("r1", "--data", "out")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "…" not in text
    for expected in (
        OPENAI_BATCH,
        ANTHROPIC_BATCH,
        "total 40, completed 38, failed 2",  # the provider's order, without its zeros
        "created (in_progress)",  # our step and the provider's word
        "processing 10",
        "3h12m",
        "0.0400",  # 40 requests at $0.001
        EXPIRED,
    ):
        assert expected in text, (expected, text)
    assert "succeeded 0" not in text
    assert "\n gpt " not in text
    titles = [line for line in lines(text) if line.startswith("s0000")]
    assert len(titles) == 3, text  # a block per submission, titled by its id
    assert " ".join(text.split()).endswith(  # the total, wrapped at 80 columns
        "3 submissions, 52 requests, ~$0.0620: 1 at the provider, 1 collected, 1 abandoned"
    )


def test_a_wide_terminal_gets_a_row_per_submission(dataset: Path) -> None:
    result = invoke("r1", "--data", "out", columns=300)  # the table is 219 wide
    assert result.exit_code == 0, result.output
    rows = [line.strip() for line in lines(result.stdout) if line.strip().startswith("s0000")]
    assert len(rows) == 3, result.stdout
    assert OPENAI_BATCH in rows[0] and "collected" in rows[0] and "3h12m" in rows[0]
    assert ANTHROPIC_BATCH in rows[1] and "created (in_progress)" in rows[1]
    assert EXPIRED in rows[2] and "abandoned" in rows[2]


def test_json_carries_every_field_ages_in_seconds(dataset: Path) -> None:
    result = invoke("r1", "--data", "out", "--format", "json")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [list(r) for r in records] == [list(RECORD_FIELDS)] * 3
    done, open_, lost = records
    assert (done["run_id"], done["teacher"], done["provider"], done["model"]) == (
        "r1",
        "gpt",
        "openai",
        "openai-model",
    )
    assert (done["step"], done["provider_batch_id"], done["requests"]) == (
        "collected",
        OPENAI_BATCH,
        40,
    )
    assert done["counts"] == {"total": 40, "completed": 38, "failed": 2}
    assert done["estimated_cost_usd"] == pytest.approx(0.04)
    assert (done["age_s"], done["step_age_s"]) == (AGE.total_seconds(), 20 * 60.0)
    assert open_["counts"] == {"processing": 10, "succeeded": 0, "errored": 0}  # zeros kept
    assert (open_["provider_state"], open_["error"]) == ("in_progress", None)
    assert (lost["step"], lost["error"], lost["provider_batch_id"]) == ("abandoned", EXPIRED, None)


def test_csv_has_a_header_and_counts_as_json(dataset: Path) -> None:
    result = invoke("r1", "--data", "out", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == list(RECORD_FIELDS)
    assert [r["submission_id"][:6] for r in rows] == ["s00000", "s00001", "s00002"]
    assert json.loads(rows[0]["counts"]) == {"total": 40, "completed": 38, "failed": 2}
    assert (rows[1]["requests"], rows[1]["bytes"]) == (
        "10",
        str(sum(len(json.dumps({"custom_id": f"claude-{n}"})) + 1 for n in range(10))),
    )
    assert (rows[2]["age_s"], rows[2]["step_age_s"]) == (str(AGE.total_seconds()),) * 2


def test_without_a_run_one_line_per_run(dataset: Path) -> None:
    result = invoke("--data", "out")
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 80, result.stdout
    text = " ".join(result.stdout.split())  # a line rich wrapped at 80 columns, joined
    assert (
        "r1: 3 submissions, 52 requests, ~$0.0620: 1 at the provider, 1 collected, 1 abandoned"
        in text
    )
    assert "r2: 1 submission, 5 requests, ~$0.0050: 1 prepared, not sent" in text
    assert lines(result.stdout)[-1] == "one run  distillery submissions RUN_ID --data out"
    # csv and json: every submission of every run.
    machine = json.loads(invoke("--data", "out", "--format", "json").stdout)
    assert [(r["run_id"], r["step"]) for r in machine] == [
        ("r1", "collected"),
        ("r1", "created"),
        ("r1", "abandoned"),
        ("r2", "prepared"),
    ]


def errors(result: Result) -> list[str]:
    return lines(result.stderr)


def test_no_dataset_or_no_submissions_is_one_line_exit_2(tmp_path: Path, dataset: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = invoke("r1", "--data", "empty")
    assert result.exit_code == 2
    [line] = errors(result)
    assert "--data empty: no dataset there" in line and "submissions" in line

    missing = invoke("r9", "--data", "out")
    assert missing.exit_code == 2
    assert errors(missing) == [
        "error: --data out: run 'r9' has no provider submissions (only delivery: batch "
        "teachers make them)"
    ]
    (tmp_path / "online" / "samples").mkdir(parents=True)  # a dataset of online runs only
    none = invoke("--data", "online")
    assert none.exit_code == 2
    assert errors(none) == [
        "error: --data online: no run has provider submissions (only delivery: batch "
        "teachers make them)"
    ]
    bad = invoke("../r1", "--data", "out")
    assert bad.exit_code == 2
    [line] = errors(bad)
    assert line.startswith("error: RUN_ID '../r1': use 1-128 letters")


def test_a_corrupt_record_is_one_line_naming_the_file(dataset: Path) -> None:
    journal = Journal(dataset, "r1")
    [first, *_] = journal.records()
    record = journal.record_location(first.submission_id).local_path
    assert record is not None
    record.write_text(record.read_text().replace('"requests": 40', '"requests": 0'))
    result = invoke("r1", "--data", "out")
    assert result.exit_code == 1
    [line] = errors(result)
    named = record.relative_to(dataset.parent)  # as --data names the output
    assert line.startswith(f"error: {named}: not a valid submission record (requests:"), line


def test_an_output_in_object_storage(bucket: str) -> None:  # noqa: F811
    output = f"s3://{bucket}/data"
    journal = Journal(output, "r1")
    record = journal.advance(submit(journal, "gpt", "openai", 3), "created", provider_batch_id="b1")
    submit(Journal(output, "r2"), "gpt", "openai", 2)
    result = invoke("r1", "--data", output, "--format", "json")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert (row["submission_id"], row["provider_batch_id"], row["requests"]) == (
        record.submission_id,
        "b1",
        3,
    )
    runs = invoke("--data", output)
    assert runs.exit_code == 0, runs.output
    assert [line.split(":")[0] for line in lines(runs.stdout)[:2]] == ["r1", "r2"]
    empty = invoke("--data", f"s3://{bucket}/nothing")
    assert empty.exit_code == 2
    assert errors(empty) == [
        f"error: --data s3://{bucket}/nothing: no dataset there (nothing under this prefix)"
    ]


def test_help_says_what_no_run_id_lists() -> None:
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    assert "submissions [OPTIONS] [RUN_ID]" in result.stdout
    assert "Without RUN_ID: one line per run" in result.stdout
    assert "…" not in result.stdout


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4, "0s"),
        (45, "45s"),
        (725, "12m05s"),
        (11_550, "3h12m"),
        (2 * 86_400 + 4 * 3_600, "2d04h"),
        (-3, "0s"),
    ],
)
def test_ages_read_in_two_units(seconds: float, text: str) -> None:
    assert age(seconds) == text
