"""Screenshots of the Prefect UI after a distillery run, for the README.

Why: the README says every run shows a progress artifact, a per-teacher table and a dataset
card in the Prefect UI; these pictures show it. The script regenerates them from scratch, so
they stay true when Prefect's UI or distillery's artifacts change.

How: it needs Debian's Chromium (``apt-get install -y chromium``; another binary can be given
in ``$CHROMIUM``) and the project's venv. From the repository root::

    .venv/bin/python docs/screenshot.py

It starts a managed Prefect server in a temporary ``DISTILLERY_HOME`` (``distillery server
start``), runs ``examples/emulator.yaml`` against the built-in emulator as run ``screenshot``,
opens the run's pages in headless Chromium and writes, under ``docs/img/``:

- ``prefect-run.png``: the flow run page (state, timeline of batch tasks, logs);
- ``prefect-artifacts.png``: the run's Artifacts tab (teachers table, progress, card);
- ``prefect-card.png``: the markdown dataset card artifact;
- ``prefect-teachers.png``: the per-teacher table artifact.

The server is stopped and the temporary directories removed at the end, whatever happens.
It takes about a minute (the server's first start dominates); nothing needs a network beyond
127.0.0.1.

The pages are Prefect's V2 UI (``/v2/...``): its flow run page honours ``?tab=Artifacts``,
whereas the V1 page falls back to its Logs tab on a deep link. Chromium's
``--virtual-time-budget`` lets the single-page app fetch and render before the screenshot;
each page's DOM is checked for the text it must show first, so a blank page fails loudly.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"
JOB = ROOT / "examples" / "emulator.yaml"
RUN_ID = "screenshot"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Lower-case dataset name, as flows/artifacts.py builds artifact keys.
DATASET = "emulator-example"
WINDOW = (1600, 1000)
ATTEMPTS = 3
COMMAND_TIMEOUT_S = 600.0
BROWSER_TIMEOUT_S = 180.0


def distillery(args: Sequence[str], env: dict[str, str]) -> str:
    """Run the distillery CLI of this interpreter's environment; return its stdout."""
    result = subprocess.run(
        [sys.executable, "-m", "distillery", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"distillery {' '.join(args)} exited with {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def chromium(
    mode: Sequence[str], url: str, budget_ms: int, window: tuple[int, int] = WINDOW
) -> str:
    """Load ``url`` in a fresh headless Chromium profile; return its stdout."""
    with tempfile.TemporaryDirectory(prefix="distillery-chromium-") as profile:
        result = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={window[0]},{window[1]}",
                f"--virtual-time-budget={budget_ms}",
                *mode,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=BROWSER_TIMEOUT_S,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited with {result.returncode} on {url}:\n{result.stderr}")
    return result.stdout


def screenshot(
    url: str, must_show: Sequence[str], target: Path, window: tuple[int, int] = WINDOW
) -> None:
    """Screenshot ``url`` once its rendered DOM contains every string of ``must_show``."""
    budget_ms = 15_000
    for attempt in range(1, ATTEMPTS + 1):
        dom = chromium(["--dump-dom"], url, budget_ms)
        missing = [text for text in must_show if text not in dom]
        if not missing:
            break
        if attempt == ATTEMPTS:
            raise RuntimeError(f"{url} never showed {missing}")
        budget_ms *= 2
        time.sleep(2)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    chromium([f"--screenshot={target}"], url, budget_ms, window)
    if not target.is_file():
        raise RuntimeError(f"chromium wrote no screenshot of {url}")
    print(f"{target.relative_to(ROOT)}  {target.stat().st_size // 1024} KB  {url}")


def flow_run_id(summary: str, api: str) -> str:
    """The run's id: from the summary's UI link, else from the API by the run's name."""
    found = re.search(r"/runs/flow-run/([0-9a-f-]{36})", summary)
    if found:
        return found.group(1)
    response = httpx.post(
        f"{api}/flow_runs/filter",
        json={"flow_runs": {"name": {"any_": [f"{DATASET}/{RUN_ID}"]}}, "limit": 1},
        timeout=30,
        trust_env=False,
    )
    response.raise_for_status()
    runs: list[dict[str, object]] = response.json()
    if not runs:
        raise RuntimeError(f"no flow run named {DATASET}/{RUN_ID}:\n{summary}")
    return str(runs[0]["id"])


def artifact_ids(api: str, run: str) -> dict[str, str]:
    """The run's artifacts, key -> id."""
    response = httpx.post(
        f"{api}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [run]}}},
        timeout=30,
        trust_env=False,
    )
    response.raise_for_status()
    artifacts: list[dict[str, object]] = response.json()
    return {str(a["key"]): str(a["id"]) for a in artifacts if a.get("key")}


def main() -> None:
    if not Path(CHROMIUM).is_file():
        sys.exit(f"{CHROMIUM} not found: apt-get install -y chromium (or set $CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="distillery-screenshot-") as tmp:
        # The user's own Prefect server, if any, stays out of this.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
        env.update(
            DISTILLERY_HOME=str(Path(tmp) / "home"),
            # The UI asks the server where its API is. Prefect derives that from its port
            # setting (default 4200), not from `prefect server start --port`, so on the
            # managed server's free port the browser would call :4200; a relative URL is
            # right on any port.
            PREFECT_UI_API_URL="/api",
            PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false",
            # One line per summary row, so the flow run's link is not wrapped.
            COLUMNS="250",
            NO_COLOR="1",
        )
        try:
            started = distillery(["server", "start"], env)
            found = re.search(r"UI (http://\S+)", started)
            if not found:
                raise RuntimeError(f"no UI URL in: {started!r}")
            ui = found.group(1).rstrip("/")
            api = f"{ui}/api"
            print(f"Prefect server: {ui}")
            summary = distillery(
                [
                    "run",
                    str(JOB),
                    "--emulator",
                    "-o",
                    str(Path(tmp) / "out"),
                    "--run-id",
                    RUN_ID,
                ],
                {**env, "PREFECT_API_URL": api},
            )
            run = flow_run_id(summary, api)
            artifacts = artifact_ids(api, run)
            card = artifacts[f"{DATASET}-card"]
            teachers = artifacts[f"{DATASET}-teachers"]
            print(f"flow run {run}; artifacts {sorted(artifacts)}")
            page = f"{ui}/v2/runs/flow-run/{run}"
            screenshot(
                page,
                ["Completed", f"{DATASET}/{RUN_ID}", "Beginning flow run", "batch 0:"],
                IMG / "prefect-run.png",
            )
            screenshot(
                f"{page}?tab=Artifacts",
                ["Completed", f"{DATASET}-teachers", f"{DATASET}-progress", f"{DATASET}-card"],
                IMG / "prefect-artifacts.png",
            )
            screenshot(
                f"{ui}/v2/artifacts/artifact/{card}",
                [f"run {RUN_ID}", "Teachers", "Counts", "Examples"],
                IMG / "prefect-card.png",
            )
            screenshot(
                f"{ui}/v2/artifacts/artifact/{teachers}",
                ["completion_tokens", "emulated-gpt"],
                IMG / "prefect-teachers.png",
                window=(1600, 560),
            )
        finally:
            # Not distillery(): a failure to stop must not hide the error that got us here.
            stopped = subprocess.run(
                [sys.executable, "-m", "distillery", "server", "stop"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
            print((stopped.stdout + stopped.stderr).strip())


if __name__ == "__main__":
    main()
