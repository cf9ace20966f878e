"""The embedded local teacher for real: llama.cpp's server (xllamacpp) serving SmolLM2-135M.

One server per module answers the API tests (a model load is seconds, not minutes, but several
add up); the lifecycle tests start their own, because stopping one is what they test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from distillery.errors import UserInputError
from distillery.local_teacher import (
    GEMMA3,
    SMOLLM2,
    LocalTeacher,
    answering,
    default_slots,
    find_model,
)

from .conftest import REPO

pytestmark = pytest.mark.slow

STARTUP_S = 180.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_free(port: int) -> bool:
    """Nobody listens on ``port``: a fresh listener can bind it (TIME_WAIT allowed)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone: it holds no memory and no port)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (Linux ``/proc``)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _wait_until(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s:.0f}s: {what}")


CANARY = "sk-canary-local-teacher"


@pytest.fixture(scope="module")
def teacher() -> Iterator[LocalTeacher]:
    # Started by a run whose environment holds an API key (the child must not get it).
    os.environ["OPENAI_API_KEY"] = CANARY
    try:
        with LocalTeacher("127.0.0.1", _free_port()) as running:
            yield running
    finally:
        os.environ.pop("OPENAI_API_KEY", None)


def test_the_teacher_process_gets_no_api_key(teacher: LocalTeacher) -> None:
    assert teacher.process is not None
    environ = Path(f"/proc/{teacher.process.pid}/environ").read_bytes().split(b"\0")
    assert not [entry for entry in environ if CANARY.encode() in entry]
    assert any(entry.startswith(b"PATH=") for entry in environ)  # what it needs does pass


def test_answer_names_the_loaded_weights_whatever_the_request_says(teacher: LocalTeacher) -> None:
    response = httpx.post(
        f"{teacher.base_url}/chat/completions",
        json={
            "model": "some-other-model",
            "messages": [{"role": "user", "content": "Name three colours."}],
            "max_tokens": 24,
            "temperature": 0,
        },
        timeout=300,
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == SMOLLM2.alias  # the lineage comes from the server, not the request
    assert body["usage"]["completion_tokens"] > 0
    assert body["choices"][0]["message"]["content"].strip()


def test_slots_are_sized_to_the_machine(teacher: LocalTeacher) -> None:
    props = httpx.get(teacher.base_url.removesuffix("/v1") + "/props", trust_env=False).json()
    assert props["total_slots"] == default_slots()
    assert default_slots(1) == 2 and default_slots(64) == 16


def test_models_resolve_by_file_name_and_unknown_ones_are_named() -> None:
    assert find_model(None) is SMOLLM2
    assert find_model("smollm2-135m-instruct.q4_1.gguf") is SMOLLM2
    assert find_model(GEMMA3.alias) is GEMMA3
    with pytest.raises(UserInputError, match=r"'llama-7b.gguf': not one of the embedded models"):
        find_model("llama-7b.gguf")


def test_a_model_file_with_another_sha256_is_refused() -> None:
    altered = dataclasses.replace(SMOLLM2, sha256="0" * 64)
    with pytest.raises(UserInputError, match=r"SmolLM2-135M-Instruct\.Q4_1\.gguf: sha256 b179c952"):
        altered.path()


def test_quickstart_job_on_the_local_teacher(prefect_api: str, tmp_path: Path) -> None:
    """`distillery run` starts its own teacher (nothing answers on the port), then stops it."""
    port = _free_port()
    config = tmp_path / "quickstart.yaml"
    text = (REPO / "examples" / "quickstart.yaml").read_text()
    text = text.replace("path: prompts.jsonl", f"path: {REPO / 'examples' / 'prompts.jsonl'}")
    config.write_text(
        text.replace("limit: 12", "limit: 4").replace("max_tokens: 64", "max_tokens: 24")
    )
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "LOCAL_TEACHER_URL": f"http://127.0.0.1:{port}",
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
    assert _port_free(port)  # the run stopped the teacher it started
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
    assert len(rows) == 4  # every prompt answered (kept or rejected by a filter)
    for row in rows:
        assert row["teacher_provider"] == "local"
        assert row["teacher_model_version"] == SMOLLM2.alias
        assert row["usage_terms"] == "apache-2.0"
    assert any(row["completion_tokens"] and row["response_text"].strip() for row in rows)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_teacher_serve_stopped_by_a_signal_leaves_nothing_behind(stop: signal.Signals) -> None:
    port = _free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "distillery", "teacher", "serve", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_until(
            lambda: answering(f"http://127.0.0.1:{port}/v1") or serve.poll() is not None,
            STARTUP_S,
            "teacher serve answering",
        )
        assert serve.poll() is None, "teacher serve exited before answering"
        serve.send_signal(stop)
        assert serve.wait(timeout=60) == 0
        assert serve.stdout is not None and "stopping the local teacher" in serve.stdout.read()
        _wait_until(lambda: not _session_members(serve.pid), 30, "no process of its session left")
        assert _port_free(port)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()


def test_teacher_started_by_a_run_exits_when_the_run_is_killed(tmp_path: Path) -> None:
    """kill -9 of the parent (no cleanup runs in it) still ends the model server."""
    port = _free_port()
    parent_script = tmp_path / "parent.py"
    parent_script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from distillery.local_teacher import LocalTeacher
            teacher = LocalTeacher("127.0.0.1", {port}).start()
            print(teacher.process.pid, flush=True)
            time.sleep(3600)
            """
        )
    )
    parent = subprocess.Popen(
        [sys.executable, str(parent_script)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline() or 0)  # blocks until the teacher answers
        assert child and _alive(child), "the parent did not start a teacher"
        parent.kill()
        parent.wait()
        _wait_until(lambda: not _alive(child), 60, f"teacher pid {child} gone after its parent")
        assert _port_free(port)
    finally:
        for pid in (parent.pid, child):
            if pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_gemma_is_served_with_its_chat_template_and_named_by_its_weights() -> None:
    """Gemma's GGUF carries no chat template; without llama.cpp's built-in one the server falls
    back to ChatML, which this base model merely continues."""
    with LocalTeacher("127.0.0.1", _free_port(), model=GEMMA3.file_name) as gemma:
        root = gemma.base_url.removesuffix("/v1")
        template = httpx.post(
            f"{root}/apply-template",
            json={"messages": [{"role": "user", "content": "Hello"}]},
            timeout=60,
            trust_env=False,
        )
        response = httpx.post(
            f"{gemma.base_url}/chat/completions",
            json={"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8},
            timeout=300,
            trust_env=False,
        )
    assert template.json()["prompt"].startswith("<start_of_turn>user\nHello<end_of_turn>")
    assert response.json()["model"] == GEMMA3.alias
    assert response.json()["usage"]["completion_tokens"] > 0


def test_teacher_serve_with_an_unknown_model_is_a_one_line_error() -> None:
    serve = subprocess.run(
        [sys.executable, "-m", "distillery", "teacher", "serve", "--model", "nope.gguf"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert serve.returncode == 2
    assert serve.stderr.strip().splitlines() == [
        "error: local teacher model 'nope.gguf': not one of the embedded models "
        "(SmolLM2-135M-Instruct.Q4_1.gguf, gemma-3-270m-q4_k_m.gguf)"
    ]
