"""Shared fixtures: isolated homes, one Prefect server per session, emulators on free ports.

The environment is fixed here, before any test module imports Prefect: Prefect reads its
settings when it is first imported. Nothing a test does reaches the user's ``~/.prefect``,
``~/.distillery``, real API keys or proxies.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiohttp import web

if TYPE_CHECKING:
    from distillery.config import JobConfig
    from distillery.generators.batch import WorkItem
    from distillery.generators.records import RunContext
    from distillery.storage.spool import Spool

# Under pytest-xdist the controller imports this file before it starts the workers, which
# inherit its environment: they share one session directory, hence one DISTILLERY_HOME and one
# managed Prefect server (each start costs 15-60 s of CPU). Prefect's client home stays per
# process. The controller stops the server at the end (pytest_sessionfinish).
_SESSION_DIR = Path(
    os.environ.get("DISTILLERY_TESTS_SESSION_DIR") or tempfile.mkdtemp(prefix="distillery-tests-")
)
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
for _name in list(os.environ):
    if _name.startswith("PREFECT_") or _name.upper() in {
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "EMULATOR_URL",
        "EMULATOR_API_KEY",
        "DISTILLERY_OUTPUT",
    }:
        del os.environ[_name]
os.environ.update(
    DISTILLERY_TESTS_SESSION_DIR=str(_SESSION_DIR),
    DISTILLERY_HOME=str(_SESSION_DIR / "home"),
    PREFECT_HOME=str(_SESSION_DIR / f"prefect-client-{_WORKER or 'main'}"),
    TIKTOKEN_CACHE_DIR=str(_SESSION_DIR / "tiktoken"),
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    DO_NOT_TRACK="1",
    PREFECT_LOGGING_TO_API_ENABLED="false",
    PREFECT_LOGGING_LEVEL="WARNING",
)

from distillery.emulator import EmulatorOptions, RunningEmulator  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One managed Prefect server for the whole session (starting one costs 15-60 s)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from distillery.flows import server

    info, _ = server.ensure_server()
    os.environ["PREFECT_API_URL"] = info.api_url
    with temporary_settings(updates={PREFECT_API_URL: info.api_url}):
        yield info.api_url
    if _WORKER is None:  # a worker leaves the shared server to the controller
        server.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that starts Prefect (it asks for ``prefect_api``) is marked ``slow``.

    The session's server costs 15-60 s to start and each flow run seconds more, so
    ``pytest -m "not slow"`` stays the fast loop without each such test having to say so.
    """
    for item in items:
        if "prefect_api" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The xdist controller stops the server its workers shared (a no-op when none ran)."""
    if _WORKER is None and (_SESSION_DIR / "home" / "prefect-server.json").exists():
        from distillery.flows import server

        server.stop()


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with RunningEmulator(EmulatorOptions(seed=7)) as running:
        yield running


def write_prompts(path: Path, count: int) -> Path:
    import json

    topics = ["rivers", "compilers", "bread", "tides", "chess", "volcanoes", "jazz", "bees"]
    with path.open("w") as handle:
        for index in range(count):
            topic = topics[index % len(topics)]
            record = {
                "id": f"p{index}",
                "prompt": f"Explain {topic}, case {index}.",
                "topic": topic,
            }
            handle.write(json.dumps(record) + "\n")
    return path


def write_job(
    directory: Path, base_url: str, prompts: int = 12, extra: str = "", teachers: int = 1
) -> Path:
    write_prompts(directory / "prompts.jsonl", prompts)
    teacher_yaml = "".join(
        f"""
  - name: t{index}
    provider: openai
    model: {("gpt-4o-mini", "gpt-4.1-mini", "gpt-4.1-nano")[index]}
    base_url: {base_url}/v1
    api_key_env: EMULATOR_API_KEY
    params: {{temperature: 0.{index + 1}, max_tokens: 300}}
    concurrency: 8
    max_attempts: 2"""
        for index in range(teachers)
    )
    config = directory / "job.yaml"
    config.write_text(
        f"""name: test-job
prompts:
  path: prompts.jsonl
teachers:{teacher_yaml}
batch_size: 5
output: out
{extra}"""
    )
    return config


def batch_before_commit(job: JobConfig, run_id: str) -> tuple[list[WorkItem], RunContext, Spool]:
    """The first stage's items of ``job``, a run context and the run's spool: what a batch
    holds before it commits, for tests that end one there (a crash) and then resume."""
    from distillery.generators.prompts import load_prompts
    from distillery.generators.recipes import build_recipe, stage_reader
    from distillery.generators.records import RunContext, teacher_facts
    from distillery.storage.location import as_location
    from distillery.storage.spool import Spool

    output = as_location(job.output)
    stage = next(build_recipe(job).stages(load_prompts(job.prompts), stage_reader(output, run_id)))
    items = [item for items in stage.plan(set()) for item in items]
    ctx = RunContext(run_id, job.config_hash(), None, teachers=teacher_facts(job))
    return items, ctx, Spool(output, run_id)


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` served on a free loopback port for the block; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
