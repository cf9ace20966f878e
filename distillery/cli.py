"""The ``distillery`` command line (typer + rich).

Every user-facing failure is one line on stderr naming the file, field or variable at fault,
with exit code 2 for bad input and 1 for a run that had to stop (see :mod:`distillery.errors`).
Prefect is imported only by the commands that need it, after the Prefect API to use is decided.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import secrets
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from distillery.cli_app import DistilleryApp
from distillery.config import JobConfig, load_config, require_api_keys
from distillery.entry import Interrupted, arm, disarm
from distillery.errors import (
    DistilleryError,
    FatalRunError,
    RunInterruptedError,
    RunWaitingError,
    UserInputError,
    UserInputErrors,
    output_errors,
)
from distillery.names import check_run_id
from distillery.render import print_rows, print_table

if TYPE_CHECKING:
    from distillery.flows.generate import RunSummary
    from distillery.generators.prompts import Prompt
    from distillery.storage.location import Location

app = DistilleryApp(
    name="distillery",
    help="Synthetic data from teacher models: Prefect fan-out, Parquet out, lineage on every row.",
    no_args_is_help=True,
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
server_app = DistilleryApp(
    help="The local Prefect server distillery manages.", no_args_is_help=True
)
app.add_typer(server_app, name="server")
teacher_app = DistilleryApp(
    help="The embedded local teacher (SmolLM2-135M-Instruct on llama.cpp).", no_args_is_help=True
)
app.add_typer(teacher_app, name="teacher")

out = Console()
err = Console(stderr=True)
P = ParamSpec("P")
R = TypeVar("R")


def _reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a DistilleryError into its one-line message and exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            arm()
            return command(*args, **kwargs)
        except KeyboardInterrupt:  # Typer would exit 130 without a word
            raise Interrupted from None
        except DistilleryError as exc:
            for line in str(exc).splitlines() or [""]:
                err.print(
                    f"[bold red]error:[/] {line}", highlight=False, markup=True, soft_wrap=True
                )
            raise typer.Exit(exc.exit_code) from None
        finally:
            disarm()

    return wrapper


def _connect_prefect() -> str:
    """Point this process at a Prefect API (the user's, or our managed server); return its UI."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        return configured.removesuffix("/api")
    from distillery.flows import server
    from distillery.flows.progress import STOP

    def stop() -> bool:
        return STOP.requested

    running = server.running()
    if running is not None:
        info, _ = server.ensure_server(stop)
    else:
        with err.status("starting the local Prefect server (first run only; kept for later)..."):
            info, _ = server.ensure_server(stop)
    os.environ["PREFECT_API_URL"] = info.api_url
    return info.url


def _quiet_prefect_console(verbose: bool) -> None:
    """Keep Prefect's log lines off the terminal, where the progress bar and our own one-line
    errors speak; the Prefect UI still shows every log. ``--verbose`` lets them through.

    Prefect configures logging from ``logging.yml``, whose values environment variables
    override; a user's own setting wins.
    """
    level = "INFO" if verbose else "CRITICAL"
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", level)


@contextlib.contextmanager
def _emulated(job: JobConfig) -> Iterator[JobConfig]:
    """Run the job against an in-process emulator instead of its real teachers."""
    from distillery.emulator.retarget import emulated

    with emulated(job) as (retargeted, url):
        err.print(f"sending every request to the built-in emulator at {url}")
        yield retargeted


@app.command()
@_reports_errors
def run(
    config: Annotated[Path, typer.Argument(help="Job file (YAML).")],
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="Dataset directory or s3://bucket/prefix (overrides config)."
        ),
    ] = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Name of this run; reuse one to resume it.")
    ] = None,
    emulator: Annotated[
        bool,
        typer.Option("--emulator", help="Dry run: send every request to a built-in emulator."),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show Prefect's logs on the terminal too.")
    ] = False,
    allow_changed_job: Annotated[
        bool,
        typer.Option(
            "--allow-changed-job",
            help="Resume a run id even though the job's prompts, teachers, routing or "
            "curation changed since it started.",
        ),
    ] = False,
) -> None:
    """Generate a dataset: prompts to teachers (as the job routes them), into Parquet shards."""
    from distillery.flows.signals import cancel_deadline, on_stop_signal

    # SIGTERM while starting up (loading, starting servers) is noted, and the start stops at the
    # next step, unwinding what was started; an exception raised at any instant could land
    # inside a library's own start-up. A second one, or the grace period running out, aborts.
    # Once the run is under way, _run_with_progress stops it gracefully.
    previous = signal.signal(signal.SIGTERM, on_stop_signal)
    try:
        _run(config, output, run_id, emulator, verbose, allow_changed_job)
    except KeyboardInterrupt:
        raise RunInterruptedError("stopped while starting; nothing was sent") from None
    finally:
        cancel_deadline()
        signal.signal(signal.SIGTERM, previous)


def _check_before_starting(job: JobConfig, emulator: bool) -> None:
    """Every problem of the job that can be found before anything starts, reported at once
    (prompts, output, prices and terms, keys), in the order they are fixed."""
    from distillery.generators.prompts import check_prompts
    from distillery.generators.records import teacher_facts

    checks: list[Callable[[], object]] = [
        lambda: check_prompts(job.prompts),
        lambda: _output_is_no_file(job.output),
        lambda: teacher_facts(job),
    ]
    if not emulator:  # the emulator needs no key: every teacher is retargeted to it
        local = [t for t in job.teachers if t.provider == "local"]
        keyed = job.model_copy(update={"teachers": [t for t in job.teachers if t not in local]})
        checks.append(lambda: require_api_keys(keyed) if keyed.teachers else None)
    problems: list[UserInputError] = []
    for check in checks:
        try:
            check()
        except UserInputErrors as several:
            problems += several.problems
        except UserInputError as problem:
            problems.append(problem)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise UserInputErrors(problems)
    _prepare_output(job.output)  # creates it: only once the job is otherwise sound


def _output_is_no_file(output: Path | str) -> None:
    """The part of the output check that creates nothing: a file in the directory's place."""
    if isinstance(output, Path) and output.exists() and not output.is_dir():
        raise UserInputError(f"output {output}: is a file, not a directory")


def _stop_if_asked() -> None:
    """Between start-up steps: end here if a SIGTERM asked the run to stop."""
    from distillery.flows.progress import STOP

    if STOP.requested:
        raise RunInterruptedError("stopped while starting; nothing was sent")


def _run(
    config: Path,
    output: str | None,
    run_id: str | None,
    emulator: bool,
    verbose: bool,
    allow_changed_job: bool,
) -> None:
    job = load_config(config)
    if output is not None:
        job = job.model_copy(update={"output": _output_option(output)})
    run_id = run_id or datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
    check_run_id(run_id)
    _check_before_starting(job, emulator)
    with contextlib.ExitStack() as stack:
        if emulator:
            job = stack.enter_context(_emulated(job))
        else:
            _start_local_teachers(job, stack)
        require_api_keys(job)
        _preload_tokenizers(job)
        _stop_if_asked()
        ui = _connect_prefect()
        _stop_if_asked()
        with output_errors(str(job.output), run_id):  # e.g. a resume while the disk is full
            summary = _run_with_progress(job, run_id, str(config), verbose, allow_changed_job)
    _print_summary(summary, ui)
    if summary.status == "failed":
        classes = ", ".join(f"{k} {v}" for k, v in sorted(summary.failures_by_class.items()))
        raise FatalRunError(
            f"every request failed ({classes}); why: distillery query --data {summary.output} "
            f'"SELECT teacher_name, error_class, message FROM failures WHERE run_id = '
            f"'{run_id}' LIMIT 5\""
        )
    if summary.status == "stopped":
        raise RunInterruptedError(
            f"stopped before the end; resume with: distillery run {config} --run-id {run_id}"
        )
    if summary.status == "waiting":
        raise RunWaitingError(
            f"{summary.requests_at_provider:,} requests are with the provider's batch API; "
            f"collect them later with: distillery run {config} --run-id {run_id}"
        )


def _preload_tokenizers(job: JobConfig) -> None:
    """Load the teachers' tokenizers in a thread while Prefect starts the flow run.

    Loading one takes CPU, part of it in tiktoken's Rust tables holding the GIL; done by the
    teacher pool as the first batch starts, it held the first requests back (BENCHMARKS.md,
    "Flow overhead"). Here it overlaps importing Prefect and creating the flow run; the pool's
    own preload then finds the encodings loaded.
    """
    from distillery.generators.tokens import preload

    judge = job.curation.judge
    preload([t.model for t in job.teachers] + ([judge.teacher.model] if judge else []))


def _output_option(output: str) -> Path | str:
    """``--output``: an absolute local path, or a normalised object-storage URI."""
    from distillery.storage.location import resolve_output

    try:
        return resolve_output(output)
    except ValueError as exc:
        raise UserInputError(f"--output {output}: {exc}") from None


def _prepare_output(output: Path | str) -> None:
    """Create a local output directory, or check that an object-storage bucket answers."""
    from distillery.storage.location import as_location, is_uri

    if isinstance(output, str) and is_uri(output):
        problem = as_location(output).unreachable()
        if problem:
            raise UserInputError(f"output {output}: {problem}")
        return
    try:
        Path(output).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"output {output}: cannot create ({exc.strerror})") from exc
    _check_writable(Path(output))


def _check_writable(output: Path) -> None:
    """Refuse an output directory this process cannot write, before anything is sent.

    An existing directory passes ``mkdir(exist_ok=True)`` however it is mounted or
    permitted; the first spool append then failed mid-run with a traceback. Creating and
    deleting a file is the only check that answers for root, read-only mounts and ACLs alike.
    """
    try:
        probe, name = tempfile.mkstemp(prefix=".distillery-probe-", dir=output)
        os.close(probe)
        Path(name).unlink()
    except OSError as exc:
        raise UserInputError(f"output {output}: cannot write ({exc.strerror or exc})") from exc


_DATA_HELP = "Dataset directory, or s3://bucket/prefix."
_VIEWS = "samples, rejected, failures, failures_log, runs, teachers"


def _dataset(data: str, *also: str) -> Path | Location:
    """``--data``: an existing local directory, or an object-storage prefix that has data.

    A local directory must hold one of the tables' folders, or one of ``also`` (``submissions``:
    a run whose teachers all deliver by batch may have nothing else yet).

    Object storage is read with the standard AWS variables (``AWS_ENDPOINT_URL`` for an
    S3-compatible server, ``AWS_ACCESS_KEY_ID``, ...); an unreachable bucket is one line here
    rather than a stack trace from the first query.
    """
    from distillery.storage.location import as_location, is_uri

    if not is_uri(data):
        from distillery.storage.schema import TABLES

        path = Path(data)
        if not path.is_dir():
            raise UserInputError(f"--data {data}: no such directory")
        folders = [*TABLES, *also]
        if not any((path / folder).is_dir() for folder in folders):
            # Not an error to DuckDB (every view is empty), but never what the user meant.
            raise UserInputError(
                f"--data {data}: no dataset there (no {', '.join(folders)} folder); "
                "name the run's output directory"
            )
        return path
    try:
        location = as_location(data)
    except UserInputError as exc:
        raise UserInputError(f"--data {exc}") from None
    problem = location.unreachable()
    if problem is None and not location.is_dir():
        problem = "no dataset there (nothing under this prefix)"
    if problem:
        raise UserInputError(f"--data {location.uri}: {problem}")
    return location


def _start_local_teachers(job: JobConfig, stack: contextlib.ExitStack) -> None:
    """Start the embedded teacher for each ``provider: local`` teacher nobody serves yet."""
    from urllib.parse import urlsplit

    from distillery.local_teacher import LocalTeacher, answering

    for teacher in job.teachers:
        if teacher.provider != "local" or answering(teacher.base_url):
            continue
        where = urlsplit(teacher.base_url)
        if where.hostname not in ("127.0.0.1", "localhost") or where.port is None:
            raise UserInputError(
                f"teacher {teacher.name!r}: nothing answers at {teacher.base_url}, and the "
                "local teacher can only be started on 127.0.0.1 with an explicit port"
            )
        with err.status(f"starting the local teacher on port {where.port}..."):
            stack.enter_context(LocalTeacher("127.0.0.1", where.port, model=teacher.model))


def _run_with_progress(
    job: JobConfig, run_id: str, config_path: str, verbose: bool, allow_changed_job: bool
) -> RunSummary:
    """Run the flow under a progress bar; Ctrl-C (or SIGTERM) stops it gracefully.

    The first signal stops new requests and lets the answers in flight land, be spooled and
    committed; a second one aborts at once (whatever arrived is in the spool, replayed on resume).
    """
    _quiet_prefect_console(verbose)
    from prefect.exceptions import TerminationSignal

    from distillery.flows.generate import generate
    from distillery.flows.progress import STOP, set_listener
    from distillery.flows.signals import cancel_deadline, grace_s, on_stop_signal
    from distillery.flows.terminal import ProgressBar

    def tell() -> None:
        err.print(
            "stopping: waiting for the answers in flight, at most "
            f"{grace_s():.0f}s (press Ctrl-C again to abort)"
        )

    resume = f"distillery run {config_path} --run-id {run_id}"
    STOP.notify.append(tell)
    previous = {sig: signal.signal(sig, on_stop_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ProgressBar(err) as bar:
            set_listener(bar)
            return asyncio.run(
                generate(
                    job=job,
                    run_id=run_id,
                    config_path=config_path,
                    allow_changed_job=allow_changed_job,
                )
            )
    except (KeyboardInterrupt, TerminationSignal):
        # A second signal, the grace period running out, or a signal in the instant Prefect's
        # engine holds SIGTERM (before the flow body takes it back).
        raise RunInterruptedError(
            f"interrupted; answers received so far are kept; resume with: {resume}"
        ) from None
    finally:
        cancel_deadline()
        STOP.notify.remove(tell)
        set_listener(None)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _print_summary(summary: RunSummary, ui: str) -> None:
    table = Table(title=f"run {summary.run_id} — {summary.status}", show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    ended = summary.samples + sum(summary.rejected.values()) + summary.failures
    sent = summary.http_requests or ended
    rate = sent / summary.elapsed_s if summary.elapsed_s else 0.0
    answered = summary.samples + sum(summary.rejected.values())
    # A failure followed by a fallback is not where its prompt ended.
    unsent = summary.requests_planned - answered - (summary.failures - summary.fell_back)
    # Rows collected from an earlier invocation's submissions were not planned by this one;
    # requests this one submitted that have not ended were sent, not left unsent.
    unsent += summary.collected_earlier - summary.open_planned_now
    table.add_row("prompts", f"{summary.prompts:,}")
    # A conversation of three turns is one planned request and five HTTP requests; retries
    # are more HTTP requests too. The line says both when they differ.
    over_http = (
        f" as {summary.http_requests:,} HTTP requests (counting turns and retries)"
        if summary.http_requests > summary.requests_planned
        else ""
    )
    # A stopped run sent only part of its plan: say that part, not the plan.
    sent_line = (
        f"{summary.requests_planned - unsent:,} sent of {summary.requests_planned:,} planned"
        if unsent > 0
        else f"{summary.requests_planned:,} sent"
    )
    answered_earlier = summary.requests_skipped - summary.held_by_submissions
    held = (
        f", {summary.held_by_submissions:,} in submissions made earlier"
        if summary.held_by_submissions
        else ""
    )
    table.add_row(
        "requests",
        f"{sent_line}{over_http}, {answered_earlier:,} already answered earlier{held}",
    )
    table.add_row("samples", f"{summary.samples:,} kept")
    if summary.rejected:
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(summary.rejected.items()))
        table.add_row("rejected", f"{sum(summary.rejected.values()):,} ({reasons})")
    failures = ", ".join(f"{k} {v:,}" for k, v in sorted(summary.failures_by_class.items()))
    if summary.fell_back:
        failures += f"{'; ' if failures else ''}{summary.fell_back:,} then sent to the next teacher"
    table.add_row("failures", f"{summary.failures:,}" + (f" ({failures})" if failures else ""))
    for name, why in sorted(summary.unusable.items()):
        table.add_row("skipped teacher", f"{name}: {why}")
    if summary.collected_earlier:
        table.add_row(
            "collected",
            f"{summary.collected_earlier:,} answers and failures of submissions made earlier",
        )
    if summary.submissions_open:
        table.add_row(
            "submitted",
            f"{summary.requests_at_provider:,} requests in {summary.submissions_open:,} "
            f"provider submissions, not ended yet (distillery submissions {summary.run_id} "
            f"--data {summary.output})",
        )
    for submission, why in sorted(summary.submission_problems.items()):
        table.add_row("submission", f"{submission}: {why}")
    if unsent > 0:
        why = "budget reached; raise budget_usd and " if summary.status == "budget_reached" else ""
        table.add_row(
            "not sent", f"{unsent:,} ({why}re-run with --run-id {summary.run_id} to finish)"
        )
    table.add_row("tokens", f"{summary.prompt_tokens:,} in, {summary.completion_tokens:,} out")
    table.add_row("cost", f"${summary.cost_usd:.4f} (models without a price count as $0)")
    if summary.maybe_billed_twice:
        table.add_row(
            "maybe billed twice",
            f"{summary.maybe_billed_twice} retries after an answer may have been produced",
        )
    table.add_row("time", f"{summary.elapsed_s:.1f}s ({rate:.1f} HTTP requests/s)")
    if len(summary.processes) > 1:
        table.add_row("processes", f"{len(summary.processes)} ran batches (task_runner: dask)")
    table.add_row("output", summary.output)
    out.print(table)
    # A URL and a command are copied, not read: printed whole on their own lines (the terminal
    # wraps them if it must), never folded into the table's column.
    if summary.flow_run_id:
        out.print(
            f"[bold]Prefect UI[/bold]  {ui}/runs/flow-run/{summary.flow_run_id}", soft_wrap=True
        )
    query = (
        f"distillery query --data {summary.output} "
        f"\"SELECT teacher_name, count(*) FROM samples WHERE run_id = '{summary.run_id}' "
        'GROUP BY ALL"'
    )
    out.print(f"[bold]query[/bold]  {query}", soft_wrap=True, markup=True, highlight=False)


@app.command()
@_reports_errors
def plan(
    config: Annotated[Path, typer.Argument(help="Job file (YAML).")],
    fmt: Annotated[
        Literal["table", "csv", "json"], typer.Option("--format", "-f", help="Output format.")
    ] = "table",
) -> None:
    """Before sending anything: prompts, estimated tokens and cost (online and batch), time."""
    from distillery.generators.plan import plan_job
    from distillery.generators.prompts import iter_prompts
    from distillery.generators.recipes import plan_note
    from distillery.plan_report import plan_notes, plan_records, plan_table

    job = load_config(config)
    counted = 0

    def prompts() -> Iterator[Prompt]:
        nonlocal counted
        for prompt in iter_prompts(job.prompts):
            counted += 1
            yield prompt

    plans = plan_job(job, prompts())
    if fmt != "table":
        print_rows(out, *plan_records(job, plans), fmt)
        return
    columns, rows = plan_table(plans)
    print_table(out, f"plan for {job.name}", columns, rows, right=frozenset(columns[1:-1]))
    for line in plan_notes(job, plans):
        out.print(line)
    note = plan_note(job, counted)
    if note is not None:
        out.print(note)


@app.command(help=f"Run SQL over a dataset's views: {_VIEWS}.")
@_reports_errors
def query(
    sql: Annotated[str, typer.Argument(help=f"DuckDB SQL over the views: {_VIEWS}.")],
    data: Annotated[str, typer.Option("--data", "-d", help=_DATA_HELP)] = "out",
    fmt: Annotated[
        Literal["table", "csv", "json"], typer.Option("--format", "-f", help="Output format.")
    ] = "table",
) -> None:
    import duckdb

    from distillery.storage.catalog import open_catalog

    con = open_catalog(_dataset(data))
    try:
        cursor = con.execute(sql)
        rows = cursor.fetchall()
    except duckdb.Error as exc:
        first = str(exc).splitlines()[0]
        if isinstance(exc, duckdb.CatalogException):  # a table that is not one of the views
            first += f" (the views: {_VIEWS})"
        raise UserInputError(f"query: {first}") from exc
    columns = [d[0] for d in cursor.description or []]
    print_rows(out, columns, rows, fmt)


@app.command()
@_reports_errors
def lineage(
    sample_id: Annotated[str, typer.Argument(help="A sample_id (or a failure's).")],
    data: Annotated[str, typer.Option("--data", "-d", help=_DATA_HELP)] = "out",
) -> None:
    """Everything known about one sample: teacher, terms, parameters, usage, cost, run."""
    from distillery.generators.terms import load_terms
    from distillery.storage.catalog import open_catalog

    con = open_catalog(_dataset(data))
    for view in ("samples", "rejected", "failures"):
        cursor = con.execute(f"SELECT * FROM {view} WHERE sample_id = ?", [sample_id])
        row = cursor.fetchall()
        if row:
            columns = [d[0] for d in cursor.description or []]
            record = dict(zip(columns, row[0], strict=True))
            break
    else:
        raise UserInputError(f"sample {sample_id!r}: not found in {data}")
    table = Table(title=f"{sample_id} ({view})", show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for column, value in record.items():
        table.add_row(column, "" if value is None else str(value))
    terms = {entry.tag: entry for entry in load_terms()}.get(str(record.get("usage_terms")))
    if terms is not None:
        table.add_row("terms summary", terms.summary)
        table.add_row("terms url", terms.url or "-")
        table.add_row("terms reviewed", str(terms.reviewed))
    run = con.execute(
        "SELECT dataset, config_hash, status, started_at, ended_at, invocations FROM runs "
        "WHERE run_id = ?",
        [record["run_id"]],
    ).fetchall()
    if run:
        labels = ("dataset", "config", "status", "started", "ended", "invocations")
        table.add_row("run", ", ".join(f"{k} {v}" for k, v in zip(labels, run[0], strict=True)))
    out.print(table)


@app.command()
@_reports_errors
def submissions(
    run_id: Annotated[
        str | None,
        typer.Argument(help="The run; without it, one line per run that has submissions."),
    ] = None,
    data: Annotated[str, typer.Option("--data", "-d", help=_DATA_HELP)] = "out",
    fmt: Annotated[
        Literal["table", "csv", "json"], typer.Option("--format", "-f", help="Output format.")
    ] = "table",
) -> None:
    """A run's provider submissions (delivery: batch): batch id, step, counts, estimate, age.

    Without RUN_ID: one line per run that has submissions (csv, json: all their rows).

    csv and json carry every field of each submission, unrounded, ages in seconds.
    """
    from rich.markup import escape

    from distillery.storage.location import as_location
    from distillery.storage.submissions import TABLE_DIR, Journal
    from distillery.submissions_report import (
        RECORD_FIELDS,
        now,
        runs_with_submissions,
        submission_records,
        submission_table,
        total_line,
    )

    if run_id is not None:
        check_run_id(run_id, "RUN_ID")
    output = as_location(_dataset(data, TABLE_DIR))
    runs = [run_id] if run_id is not None else runs_with_submissions(output)
    when = now()
    listed = {run: rows for run in runs if (rows := Journal(output, run).summary(when))}
    if not listed:
        which = f"run {run_id!r} has no" if run_id is not None else "no run has"
        raise UserInputError(
            f"--data {data}: {which} provider submissions (only delivery: batch teachers make them)"
        )
    if fmt != "table":
        records = [r for run, rows in listed.items() for r in submission_records(run, rows, fmt)]
        print_rows(out, list(RECORD_FIELDS), records, fmt)
        return
    if run_id is None:
        for run, rows in listed.items():
            out.print(f"{run}: {total_line(rows)}", highlight=False)
        out.print(
            f"[bold]one run[/bold]  distillery submissions RUN_ID --data {escape(data)}",
            soft_wrap=True,
            highlight=False,
        )
        return
    columns, table = submission_table(listed[run_id])
    right = frozenset({"requests", "~USD", "age"})
    print_table(out, f"submissions of run {run_id}", columns, table, right=right)
    out.print(total_line(listed[run_id]), highlight=False)


@app.command()
@_reports_errors
def catalog(
    db: Annotated[Path, typer.Option("--db", help="DuckDB database file to write.")],
    data: Annotated[str, typer.Option("--data", "-d", help=_DATA_HELP)] = "out",
) -> None:
    """Write a DuckDB database with views over the dataset, for the DuckDB CLI or any client."""
    from distillery.storage.catalog import write_catalog

    dataset = _dataset(data)
    write_catalog(dataset, db)
    where = dataset.resolve() if isinstance(dataset, Path) else dataset
    out.print(f"wrote {db}: views samples, rejected, failures, runs, teachers over {where}")


_HF_ONLY = (
    "--use",
    "--split",
    "--decontaminate",
    "--ngram",
    "--accept-terms",
    "--exclude-restricted",
    "--terms-max-age-days",
    "--terms-file",
    "--overwrite",
)


@app.command()
@_reports_errors
def export(
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="File to write (chat-jsonl) or folder to create (hf)."),
    ],
    data: Annotated[str, typer.Option("--data", "-d", help=_DATA_HELP)] = "out",
    fmt: Annotated[
        Literal["chat-jsonl", "hf"],
        typer.Option(
            "--format", "-f", help="chat-jsonl: one file; hf: a Hugging Face dataset folder."
        ),
    ] = "chat-jsonl",
    with_reasoning: Annotated[
        bool,
        typer.Option(
            "--with-reasoning",
            help="Put each sample's reasoning trace in the assistant turn; samples whose trace "
            "is redacted, hidden or missing are skipped.",
        ),
    ] = False,
    reasoning_style: Annotated[
        Literal["think", "field"],
        typer.Option(
            help="think: a <think> block before the answer; field: a separate key of the "
            "assistant message (see --reasoning-key)."
        ),
    ] = "think",
    reasoning_key: Annotated[
        str, typer.Option(help="The key of the 'field' style (reasoning_content for Qwen3).")
    ] = "reasoning",
    where: Annotated[
        str | None,
        typer.Option(help="SQL condition on the samples view, e.g. \"teacher_name = 'r1'\"."),
    ] = None,
    use: Annotated[
        str | None,
        typer.Option(
            metavar="USE",
            help="hf: the intended use, checked against every teacher's terms: research, "
            "internal, commercial or competing-model (training a model that competes with a "
            "teacher's vendor).",
        ),
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            metavar="NAME=SHARE,...",
            help="hf: splits and their shares, assigned by a stable hash of each prompt's "
            "family, e.g. train=0.98,validation=0.02.",
        ),
    ] = "train=1",
    decontaminate: Annotated[
        list[str] | None,
        typer.Option(
            metavar="[NAME=]PATH:FIELD",
            help="hf: an evaluation set, PATH:FIELD or NAME=PATH:FIELD (JSONL, CSV or "
            "Parquet); rows sharing an n-gram with one of its items are left out. Repeatable.",
        ),
    ] = None,
    ngram: Annotated[
        int | None,
        typer.Option(min=1, help="hf: words per n-gram of --decontaminate (13 by default)."),
    ] = None,
    accept_terms: Annotated[
        list[str] | None,
        typer.Option(
            metavar="TAG",
            help="hf: export rows of this terms tag although its terms do not permit --use "
            "(recorded in the card with the date). Repeatable.",
        ),
    ] = None,
    exclude_restricted: Annotated[
        bool,
        typer.Option(
            "--exclude-restricted",
            help="hf: leave out rows whose terms do not permit --use (counted in the card).",
        ),
    ] = False,
    terms_max_age_days: Annotated[
        int,
        typer.Option(min=1, help="hf: flag terms entries reviewed longer ago than this."),
    ] = 180,
    terms_file: Annotated[
        Path | None,
        typer.Option(
            help="hf: the job's own terms_file: its entries decide its tags (tried first)."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="hf: replace a non-empty --output folder.")
    ] = False,
) -> None:
    """Write the samples as training data: chat JSONL, or a Hugging Face dataset folder with
    splits, a dataset card and plots (docs/release.md)."""
    given = {arg.split("=")[0] for arg in sys.argv}
    if not with_reasoning and given & {"--reasoning-style", "--reasoning-key"}:
        raise UserInputError(
            "--reasoning-style and --reasoning-key shape the trace of --with-reasoning; "
            "add --with-reasoning (without it no trace is exported)"
        )
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", reasoning_key) or reasoning_key in (
        "role",
        "content",
    ):
        raise UserInputError(f"--reasoning-key {reasoning_key!r}: use a plain identifier")
    reasoning = reasoning_style if with_reasoning else None
    if fmt == "hf":
        if use is None:
            raise UserInputError(
                "--format hf needs --use (research, internal, commercial or competing-model): "
                "the teachers' terms are checked against it"
            )
        _export_hf(
            output,
            data,
            reasoning,
            reasoning_key,
            where,
            use,
            split,
            decontaminate or [],
            ngram,
            set(accept_terms or []),
            exclude_restricted,
            terms_max_age_days,
            terms_file,
            overwrite,
        )
        return
    if given & set(_HF_ONLY):
        raise UserInputError(f"{', '.join(sorted(given & set(_HF_ONLY)))}: only for --format hf")
    _export_jsonl(output, data, reasoning, reasoning_key, where, fmt)


def _export_jsonl(
    output: Path,
    data: str,
    reasoning: Literal["think", "field"] | None,
    reasoning_key: str,
    where: str | None,
    fmt: str,
) -> None:
    from distillery.storage.export import export_chat_jsonl

    result = export_chat_jsonl(
        _dataset(data), output, reasoning=reasoning, reasoning_key=reasoning_key, where=where
    )
    out.print(
        f"wrote {result.written} samples to {output} ({fmt}"
        + (f", reasoning as {reasoning}" if reasoning else "")
        + ")"
        + _skipped_note(result.skipped),
        highlight=False,
        soft_wrap=True,
    )


def _skipped_note(skipped: Counter[str]) -> str:
    """How many samples were left out for want of a usable reasoning trace, and why."""
    if not skipped:
        return ""
    reasons = ", ".join(
        f"{count} {'without a trace' if why == 'none' else why}"
        for why, count in sorted(skipped.items())
    )
    return f"; skipped {sum(skipped.values())} without a usable trace ({reasons})"


def _export_hf(
    output: Path,
    data: str,
    reasoning: Literal["think", "field"] | None,
    reasoning_key: str,
    where: str | None,
    use: str,
    split: str,
    decontaminate: list[str],
    ngram: int | None,
    accept: set[str],
    exclude_restricted: bool,
    terms_max_age_days: int,
    terms_file: Path | None,
    overwrite: bool,
) -> None:
    """``export --format hf``: every input checked before anything is written; the gate's
    refusal is its table (teacher, model, tag, rows, terms) on stderr and exit code 2."""
    from distillery.storage.release.decontam import DEFAULT_NGRAM, parse_eval_set
    from distillery.storage.release.hf import (
        HfOptions,
        TermsRefused,
        check_eval_sets,
        check_folder,
        check_use,
        export_hf,
    )
    from distillery.storage.release.splits import parse_splits

    check_use(use)
    options = HfOptions(
        use=use,
        splits=parse_splits(split),
        reasoning=reasoning,
        reasoning_key=reasoning_key,
        where=where,
        eval_sets=[parse_eval_set(spec) for spec in decontaminate],
        ngram=DEFAULT_NGRAM if ngram is None else ngram,
        accept=frozenset(accept),
        exclude_restricted=exclude_restricted,
        terms_max_age_days=terms_max_age_days,
        terms_file=terms_file,
        overwrite=overwrite,
    )
    check_folder(output, overwrite)
    check_eval_sets(options.eval_sets)

    try:
        result = export_hf(_dataset(data), output, options)
    except TermsRefused as refused:
        err.print(refused.table, highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    written = result.written
    splits = ", ".join(f"{name} {rows:,}" for name, rows in written.rows.items())
    notes = []
    if written.decontaminated_rows:
        notes.append(f"{written.decontaminated_rows:,} left out by decontamination")
    excluded = sum(group.rows for group in result.gate.excluded)
    if excluded:
        notes.append(f"{excluded:,} left out by their terms")
    out.print(
        f"wrote {output} ({splits}; use {use})"
        + (f"; {', '.join(notes)}" if notes else "")
        + _skipped_note(result.skipped)
        + f"; the card: {output / 'README.md'}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
@_reports_errors
def compact(
    data: Annotated[str, typer.Option("--data", "-d", help=_DATA_HELP)] = "out",
    target_rows: Annotated[
        int, typer.Option(min=1, help="Rows per merged shard (BENCHMARKS.md: shard sizing).")
    ] = 50_000,
) -> None:
    """Merge small shards of every run into larger ones, atomically."""
    from distillery.storage.compact import compact as compact_output

    done = compact_output(_dataset(data), target_rows)
    for result in done.results:
        out.print(
            f"{result.table}/run_id={result.run_id}: {result.shards_before} -> "
            f"{result.shards_after} shards ({result.rows} rows merged)"
        )
    for reason in done.skipped.values():
        err.print(f"skipped: {reason}", highlight=False, soft_wrap=True)
    if not done.results:
        out.print("nothing to compact")


@app.command()
@_reports_errors
def dedup(
    data: Annotated[str, typer.Option("--data", "-d", help=_DATA_HELP)] = "out",
    threshold: Annotated[
        float, typer.Option(min=0.01, max=1.0, help="Shingle Jaccard for near duplicates.")
    ] = 0.8,
    exact_only: Annotated[bool, typer.Option(help="Skip near-duplicate detection.")] = False,
) -> None:
    """Re-run duplicate removal over every run of a dataset, oldest run first."""
    dataset = _dataset(data)
    _quiet_prefect_console(verbose=False)
    _connect_prefect()
    from distillery.config import DedupConfig
    from distillery.flows.curate import dedup_dataset

    removed = dedup_dataset(
        dataset.resolve() if isinstance(dataset, Path) else dataset.uri,
        DedupConfig(threshold=threshold, near=not exact_only),
    )
    for run_id, counts in removed.items():
        detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing"
        out.print(f"run {run_id}: removed {detail}")


@app.command("emulator")
@_reports_errors
def emulator_command(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    seed: Annotated[int, typer.Option(help="Seed of the deterministic answers.")] = 0,
    latency_ms: Annotated[float, typer.Option(help="Mean added latency per request.")] = 0.0,
    require_key: Annotated[
        str | None, typer.Option(help="Answer 401 to any other API key.")
    ] = None,
    fault_rate: Annotated[
        float, typer.Option(help="Share of requests (0..1) answered with an injected fault.")
    ] = 0.0,
    faults: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated faults to draw from (default: all but invalid-json and "
            "schema-mismatch), e.g. 429,reset."
        ),
    ] = None,
    hang_s: Annotated[
        float, typer.Option(help="Seconds the 'timeout' fault holds a request before closing it.")
    ] = 600.0,
    rpm: Annotated[
        int | None,
        typer.Option(help="Enforce requests per minute (429 over it; scales with --window-s)."),
    ] = None,
    tpm: Annotated[
        int | None,
        typer.Option(help="Enforce tokens per minute: prompt + max tokens, charged at admission."),
    ] = None,
    max_concurrency: Annotated[
        int | None, typer.Option(help="Enforce at most this many requests in flight (429 over it).")
    ] = None,
    window_s: Annotated[
        float,
        typer.Option(
            help="Sliding window of --rpm/--tpm in seconds; under 60 compresses the minute "
            "(--rpm 1200 --window-s 6 admits 120 requests per 6 s)."
        ),
    ] = 60.0,
    quantum_s: Annotated[
        float | None,
        typer.Option(
            help="Also enforce --rpm/--tpm over every slice of this many seconds, as OpenAI "
            "may enforce 60,000 RPM as 1,000 per second."
        ),
    ] = None,
    dup_rate: Annotated[
        float,
        typer.Option(help="Share of clean answers (0..1) that repeat an earlier answer verbatim."),
    ] = 0.0,
    near_dup_rate: Annotated[
        float,
        typer.Option(
            help="Share of clean answers (0..1) that repeat an earlier answer lightly edited "
            "(5-word-shingle Jaccard >= 0.85 to it); with --dup-rate at most 1 in total."
        ),
    ] = 0.0,
    reasoning_redact_rate: Annotated[
        float,
        typer.Option(
            help="Share of reasoning traces (0..1) withheld: Anthropic sends redacted_thinking, "
            "OpenAI and Gemini only the token count."
        ),
    ] = 0.0,
    openai_reasoning: Annotated[
        Literal["auto", "field", "inline", "hidden"],
        typer.Option(
            metavar="<mode>",  # the four modes are in the help; as a type they cut option names
            help="Where the OpenAI route puts a trace: reasoning_content (field), <think> tags "
            "(inline), nowhere (hidden); auto: hidden for o-series/gpt-5 names, else field.",
        ),
    ] = "auto",
    batch_seconds: Annotated[
        float,
        typer.Option(
            help="How long a batch of the batch APIs takes: their 24-hour window, compressed."
        ),
    ] = 2.0,
    batch_expire_rate: Annotated[
        float,
        typer.Option(
            help="Share of batches (0..1) that expire at the end of their window with half "
            "their requests done."
        ),
    ] = 0.0,
) -> None:
    """Serve a local emulator of the teachers' HTTP APIs (for tests and dry runs)."""
    from pydantic import ValidationError

    from distillery.emulator import EmulatorOptions, serve

    settings: dict[str, Any] = {
        "seed": seed,
        "latency_ms": latency_ms,
        "require_key": require_key,
        "fault_rate": fault_rate,
        "hang_s": hang_s,
        "rpm": rpm,
        "tpm": tpm,
        "max_concurrency": max_concurrency,
        "window_s": window_s,
        "quantum_s": quantum_s,
        "dup_rate": dup_rate,
        "near_dup_rate": near_dup_rate,
        "reasoning_redact_rate": reasoning_redact_rate,
        "openai_reasoning": openai_reasoning,
        "batch_seconds": batch_seconds,
        "batch_expire_rate": batch_expire_rate,
    }
    if faults is not None:
        settings["faults"] = faults
    try:
        options = EmulatorOptions(**settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise UserInputError(f"--{field.replace('_', '-')}: {message}") from None
    serve(options, host, port)


@teacher_app.command("serve")
@_reports_errors
def teacher_serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8766,
    model: Annotated[
        str | None,
        typer.Option(
            help="GGUF file name of an embedded model: SmolLM2-135M-Instruct.Q4_1.gguf "
            "(default) or gemma-3-270m-q4_k_m.gguf."
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads (default: the cores this process may use).")
    ] = None,
    slots: Annotated[
        int | None,
        typer.Option(
            min=1, help="Requests decoded together (default: two per thread, at most 16)."
        ),
    ] = None,
    exit_with_parent: Annotated[
        bool, typer.Option(hidden=True, help="Exit when stdin closes (a parent's pipe).")
    ] = False,
) -> None:
    """Serve a small local model on OpenAI- and Anthropic-compatible APIs until stopped.

    llama.cpp's server runs inside this process, so SIGTERM or Ctrl-C stops the model with it.
    """
    from distillery.local_teacher import ModelServer, find_model, wait_for_stop

    with ModelServer(find_model(model), host, port, threads, slots) as server:
        out.print(
            f"local teacher {server.model.alias} answering at {server.base_url} "
            f"({server.slots} slots, {server.threads} threads; Ctrl-C stops)",
            soft_wrap=True,
        )
        try:
            wait_for_stop(exit_with_parent)
        except KeyboardInterrupt:
            out.print("stopping the local teacher")


@server_app.command("status")
@_reports_errors
def server_status() -> None:
    """Show whether the managed Prefect server runs, and where."""
    from distillery.flows import server

    info = server.status()
    if info is None:
        out.print("the local Prefect server is not running (the next `distillery run` starts it)")
        raise typer.Exit(3)
    out.print(f"running: pid {info.pid}, UI {info.url}, log {info.log}")


@server_app.command("start")
@_reports_errors
def server_start() -> None:
    """Start the managed Prefect server now (runs do it themselves when needed)."""
    from distillery.flows import server

    info, started = server.ensure_server()
    out.print(f"{'started' if started else 'already running'}: pid {info.pid}, UI {info.url}")


@server_app.command("stop")
@_reports_errors
def server_stop() -> None:
    """Stop the managed Prefect server."""
    from distillery.flows import server

    info = server.stop()
    out.print(f"stopped pid {info.pid}" if info else "the local Prefect server was not running")


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True)
    ] = False,
) -> None:
    """Synthetic data from teacher models: Prefect fan-out, Parquet out, lineage on every row."""
    if version:
        from distillery import __version__

        out.print(f"distillery {__version__}")
        raise typer.Exit(0)


def main() -> None:
    app()
