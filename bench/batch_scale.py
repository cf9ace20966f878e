"""Batch delivery at scale: memory, submissions and phases of a ``delivery: batch`` run.

Why: a batch teacher's requests are written to the run's journal as provider submissions,
sent, waited for and collected back into shards in chunks (``flows/submissions.py``). Every
one of those steps streams — request lines to disk, results from the provider 500 rows at a
time — so the run's peak RSS should stay about flat from 20,000 requests to 200,000 (goal:
200k <= 1.5x the 20k figure), the requests should be cut at the provider's caps (OpenAI:
50,000 requests or 200 MB per file, so 200k -> 4 submissions), and every request should end
as exactly one sample, rejected or failure row.

For each provider and request count the benchmark writes a one-teacher job (short distinct
prompts, small ``max_tokens``, dedup off, ``delivery: batch`` with the provider's own caps)
and runs ``distillery run`` as a subprocess against a managed Prefect server and a
``distillery emulator`` in its own process (its batch APIs end a submission in
``--batch-seconds``), so the peak RSS is the run's alone, not the emulator's result files.

What it reads back:

* peak RSS of the run process (``ru_maxrss`` from ``os.wait4``) and RSS sampled over time;
* the submissions, from the run's journal (``<output>/submissions/run_id=.../*.json``):
  requests and bytes of each, and the time each step was reached;
* phases, from those step times, the run record and the process's exit: start (launch to
  the flow's start), prepare (to the last submission written), submit (uploads and creates,
  to the last created), wait (to the first seen ended), collect (to the last collected), end
  (run record, compaction, artifacts, to the exit);
* exactly-once, with DuckDB over the committed shards: every prompt's request is one row of
  samples, rejected or failures, none twice, none missing.

Run by hand from the repository root::

    .venv/bin/python bench/batch_scale.py [--sizes 20000 200000] [--providers openai]

It prints a markdown section for ``BENCHMARKS.md`` (``--append`` appends it there).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
from _common import (
    EmulatorProcess,
    exit_cleanly_on_sigterm,
    markdown_table,
    report_section,
)
from _flow_runs import TOPICS, PrefectServer, read_run_record
from run_memory import Ended, run_once

from distillery.emulator.retarget import base_url
from distillery.storage.shards import committed_shards
from distillery.storage.submissions import Journal, Step, SubmissionRecord

GOAL_RATIO = 1.5
MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-3-5-haiku-latest",
    "gemini": "gemini-2.5-flash",
}
PHASES = ("start", "prepare", "submit", "wait", "collect", "end")
TABLES = ("samples", "rejected", "failures")


@dataclass
class Measured:
    provider: str
    requests: int
    run: Ended
    submissions: list[SubmissionRecord]
    #: Phase name -> (start, end) in unix seconds.
    phases: dict[str, tuple[float, float]]
    rows: dict[str, int]
    exactly_once: bool

    def phase_s(self, name: str) -> float:
        start, end = self.phases[name]
        return end - start

    def phase_peak_mb(self, name: str) -> float | None:
        """The highest sampled RSS within a phase (samples every ``--sample-s``)."""
        start, end = self.phases[name]
        inside = [mb for at, mb in self.run.rss_mb if start <= self.run.launched_at + at <= end]
        return max(inside) if inside else None


def write_job(
    directory: Path, url: str, provider: str, requests: int, args: argparse.Namespace
) -> Path:
    """A one-teacher ``delivery: batch`` job over ``requests`` short distinct prompts."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "prompts.jsonl").open("w") as handle:
        for index in range(requests):
            text = f"Explain {TOPICS[index % len(TOPICS)]}, case {index}."
            handle.write(json.dumps({"id": f"p{index}", "prompt": text}) + "\n")
    poll_s = max(0.2, args.batch_seconds / 10)  # as `distillery run --emulator` sets it
    job = {
        "name": "batch-scale",
        "prompts": {"path": "prompts.jsonl"},
        "teachers": [
            {
                "name": "b0",
                "provider": provider,
                "model": MODELS[provider],
                "base_url": base_url(url, provider),
                "api_key_env": None,
                "params": {"max_tokens": args.max_tokens},
                "delivery": "batch",
                "submissions": {
                    "poll_interval_s": poll_s,
                    "wait_s": args.wait_s,
                    **({"max_requests": args.max_requests} if args.max_requests else {}),
                },
            }
        ],
        "curation": {"dedup": {"enabled": False}},
        "output": "out",
    }
    config = directory / "job.yaml"
    config.write_text(json.dumps(job, indent=1) + "\n")
    return config


def phases_of(
    run: Ended, record: dict[str, Any], submissions: list[SubmissionRecord]
) -> dict[str, tuple[float, float]]:
    """The run's phases as (start, end) unix seconds, from the journal's step times."""

    def at(step: Step, pick: Callable[[Iterable[float]], float]) -> float:
        return pick(r.timestamps[step].timestamp() for r in submissions)

    started: datetime = record["started_at"]
    marks = [
        run.launched_at,
        started.timestamp(),
        at("prepared", max),
        at("created", max),
        at("ended", min),
        at("collected", max),
        run.launched_at + run.wall_s,
    ]
    return {name: (marks[i], marks[i + 1]) for i, name in enumerate(PHASES)}


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[int, ...]:
    row = con.execute(sql).fetchone()
    assert row is not None
    return tuple(int(value) for value in row)


def check_rows(config: Path, run_id: str, requests: int) -> tuple[dict[str, int], bool]:
    """Rows per table, and whether every prompt's one request is exactly one row of them."""
    output = config.parent / "out"
    con = duckdb.connect()
    selects = []
    rows: dict[str, int] = {}
    for table in TABLES:
        shards = [str(s) for s in committed_shards(output, table, run_id)]
        if not shards:
            rows[table] = 0
            continue
        selects.append(f"SELECT prompt_id, sample_id FROM read_parquet({shards!r})")
        (rows[table],) = _one(con, f"SELECT count(*) FROM read_parquet({shards!r})")
    con.execute(f"CREATE VIEW answered AS {' UNION ALL '.join(selects)}")
    prompts = str(config.parent / "prompts.jsonl")
    missing, twice, strangers = _one(
        con,
        f"""
        SELECT
          (SELECT count(*) FROM read_json_auto('{prompts}') p
             WHERE p.id NOT IN (SELECT prompt_id FROM answered)),
          (SELECT count(*) FROM (SELECT sample_id FROM answered
             GROUP BY sample_id HAVING count(*) > 1)),
          (SELECT count(*) FROM answered a
             WHERE a.prompt_id NOT IN (SELECT id FROM read_json_auto('{prompts}')))
        """,
    )
    total = sum(rows.values())
    ok = missing == 0 and twice == 0 and strangers == 0 and total == requests
    if not ok:
        print(f"  NOT exactly once: {missing} missing, {twice} twice, {strangers} unknown")
    return rows, ok


def measure(
    provider: str,
    requests: int,
    args: argparse.Namespace,
    server: PrefectServer,
    emulator: EmulatorProcess,
    work: Path,
) -> Measured:
    config = write_job(work / f"{provider}-{requests}", emulator.url, provider, requests, args)
    run_id = f"batch-{provider}-{requests}"
    run = run_once(config, run_id, server.env, None, emulator=False, sample_s=args.sample_s)
    output = config.parent / "out"
    submissions = Journal(output, run_id).records()
    unsettled = [r.submission_id for r in submissions if r.step != "collected"]
    if unsettled:
        raise RuntimeError(f"{run_id}: submissions not collected: {unsettled}")
    phases = phases_of(run, read_run_record(output, run_id), submissions)
    rows, exactly_once = check_rows(config, run_id, requests)
    measured = Measured(provider, requests, run, submissions, phases, rows, exactly_once)
    split = " + ".join(f"{r.requests:,}" for r in submissions)
    print(
        f"{provider} {requests:,} requests: peak {run.peak_mb:.0f} MB, {run.wall_s:.0f} s, "
        f"submissions {split}; "
        + ", ".join(
            f"{p} {measured.phase_s(p):.1f} s ({_peak(measured.phase_peak_mb(p))} MB)"
            for p in PHASES
        )
        + f"; rows {rows}, exactly once: {exactly_once}",
        flush=True,
    )
    samples = ", ".join(
        f"{t:.0f}s {mb:.0f}" for t, mb in run.rss_mb[:: max(1, len(run.rss_mb) // 16)]
    )
    print(f"  RSS (MB) over time: {samples}", flush=True)
    return measured


def _peak(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def report(results: list[Measured]) -> tuple[str, str]:
    main = markdown_table(
        [
            "provider",
            "requests",
            "peak RSS (MB)",
            "wall (s)",
            "submissions (requests each)",
            "MB per file",
            "samples / rejected / failures",
            "exactly once",
        ],
        [
            [
                m.provider,
                f"{m.requests:,}",
                f"{m.run.peak_mb:.0f}",
                f"{m.run.wall_s:.0f}",
                f"{len(m.submissions)} ({' + '.join(f'{r.requests:,}' for r in m.submissions)})",
                " + ".join(f"{r.bytes / 1e6:.1f}" for r in m.submissions),
                " / ".join(f"{m.rows[t]:,}" for t in TABLES),
                "yes" if m.exactly_once else "**no**",
            ]
            for m in results
        ],
    )
    phases = markdown_table(
        ["provider", "requests", *(f"{p}: s (peak MB)" for p in PHASES)],
        [
            [
                m.provider,
                f"{m.requests:,}",
                *(f"{m.phase_s(p):.1f} ({_peak(m.phase_peak_mb(p))})" for p in PHASES),
            ]
            for m in results
        ],
    )
    sentences = []
    for provider in dict.fromkeys(m.provider for m in results):
        runs = [m for m in results if m.provider == provider]
        first, last = runs[0], runs[-1]
        if first is last:
            continue
        ratio = last.run.peak_mb / first.run.peak_mb
        verdict = "met" if ratio <= GOAL_RATIO else "missed"
        sentences.append(
            f"{provider}: {last.requests:,} requests peak at {ratio:.2f}x the "
            f"{first.requests:,}-request run (goal: at most {GOAL_RATIO}x): goal {verdict}."
        )
    sentences.append(
        "Every request ended as exactly one row."
        if all(m.exactly_once for m in results)
        else "Some run did NOT end every request as exactly one row (see the table)."
    )
    conclusion = " ".join(sentences)
    return main + "\n\nPhases (wall seconds; in brackets the highest RSS sampled in it):\n\n" + (
        phases
    ), conclusion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--providers", nargs="+", choices=sorted(MODELS), default=["openai"])
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument(
        "--max-requests", type=int, default=None, help="Per submission (default: the cap)."
    )
    parser.add_argument("--batch-seconds", type=float, default=2.0)
    parser.add_argument("--wait-s", type=float, default=3600.0)
    parser.add_argument("--sample-s", type=float, default=0.5, help="RSS sampling interval.")
    parser.add_argument("--append", action="store_true", help="Append to BENCHMARKS.md.")
    args = parser.parse_args()
    exit_cleanly_on_sigterm()
    emulator = EmulatorProcess()
    emulator.extra += ["--batch-seconds", str(args.batch_seconds)]
    with tempfile.TemporaryDirectory(prefix="batch-scale-") as tmp:
        work = Path(tmp)
        with PrefectServer(work / "home") as server, emulator:
            results = [
                measure(provider, n, args, server, emulator, work)
                for provider in args.providers
                for n in args.sizes
            ]
    table, conclusion = report(results)
    notes = [
        "One teacher, delivery: batch with "
        + (f"max_requests {args.max_requests}" if args.max_requests else "the provider's caps")
        + f", max_tokens "
        f"{args.max_tokens}, dedup off; `distillery emulator --batch-seconds "
        f"{args.batch_seconds:g}` in its own process (not counted in the run's RSS), polled "
        f"every {max(0.2, args.batch_seconds / 10):g} s; peak RSS from os.wait4 (ru_maxrss).",
    ]
    report_section(
        "Batch delivery at scale (bench/batch_scale.py)",
        table,
        conclusion,
        notes,
        append=args.append,
    )


if __name__ == "__main__":
    main()
