"""The managed Prefect server's state file, and the HTTP stack's environment handling."""

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from distillery.emulator import EmulatorOptions, RunningEmulator
from distillery.errors import RunInterruptedError
from distillery.flows import server
from distillery.generators.http import HttpTransportError, make_http_client

from .conftest import serving


def test_a_recycled_pid_is_never_killed(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path))
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        state = {
            "pid": stranger.pid,
            "port": 1,
            "url": "http://127.0.0.1:1",
            "log": "x",
            "started_at": time.time(),
        }
        (tmp_path / "prefect-server.json").write_text(json.dumps(state))
        assert server.status() is None
        assert server.stop() is None  # not ours: nothing stopped
        time.sleep(0.2)
        assert stranger.poll() is None  # still running
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.parametrize("known_base_url", [True, False])
@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_both_transports_honour_proxy_variables(
    transport: str, known_base_url: bool, monkeypatch: pytest.MonkeyPatch, emulator: RunningEmulator
) -> None:
    async def get(url: str) -> int:
        base_url = url if known_base_url else None
        client = make_http_client(transport, 4, 5.0, base_url)  # type: ignore[arg-type]
        try:
            return (await client.request("GET", url, {})).status
        finally:
            await client.aclose()

    stats = f"{emulator.url}/_emulator/stats"
    assert asyncio.run(get(stats)) == 200
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    with pytest.raises(HttpTransportError) as caught:
        asyncio.run(get(stats))
    # The proxy refused the connection: the request never left, so it cannot have been billed.
    assert (caught.value.error_class, caught.value.reached_server) == ("connection_error", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert asyncio.run(get(stats)) == 200


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_all_proxy_is_honoured_like_httpx_does(
    transport: str, monkeypatch: pytest.MonkeyPatch, emulator: RunningEmulator
) -> None:
    async def get(url: str) -> int:
        client = make_http_client(transport, 4, 5.0, emulator.url)  # type: ignore[arg-type]
        try:
            return (await client.request("GET", url, {})).status
        finally:
            await client.aclose()

    stats = f"{emulator.url}/_emulator/stats"
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("all_proxy", "http://127.0.0.1:9")
    with pytest.raises(HttpTransportError) as caught:
        asyncio.run(get(stats))
    assert (caught.value.error_class, caught.value.reached_server) == ("connection_error", False)


def test_the_ui_is_told_its_own_api(prefect_api: str) -> None:
    # The UI fetches /ui-settings to find the API; a wrong address means every link we print
    # opens an error page.
    settings = httpx.get(prefect_api.removesuffix("/api") + "/ui-settings", timeout=10).json()
    assert settings["api_url"] in ("/api", prefect_api)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_cookies_a_server_sets_are_kept_and_sent_back(transport: str) -> None:
    """The client skips cookie parsing for answers without Set-Cookie (generators/http.py);
    one with it (a load balancer's sticky cookie) must still be stored and sent back."""
    from aiohttp import web

    seen: list[str | None] = []

    async def plain(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        return web.json_response({"ok": True})

    async def sticky(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.json_response({"ok": True})
        response.set_cookie("lb", "node-7")
        return response

    async def scenario() -> None:
        app = web.Application()
        app.router.add_get("/plain", plain)
        app.router.add_get("/sticky", sticky)
        async with serving(app) as url:
            client = make_http_client(transport, 4, 5.0, url)  # type: ignore[arg-type]
            try:
                for path in ("plain", "plain", "sticky", "plain"):
                    await client.request("GET", f"{url}/{path}", {})
            finally:
                await client.aclose()

    asyncio.run(scenario())
    assert seen == [None, None, None, "lb=node-7"]


CHAT = ("/v1/chat/completions", b'{"model":"m","messages":[{"role":"user","content":"hi"}]}')


def _post(transport: str, url: str, timeout_s: float = 5.0) -> HttpTransportError:
    async def scenario() -> HttpTransportError:
        client = make_http_client(transport, 4, timeout_s, url)  # type: ignore[arg-type]
        try:
            await client.request(
                "POST", url + CHAT[0], {"content-type": "application/json"}, CHAT[1]
            )
        except HttpTransportError as exc:
            return exc
        finally:
            await client.aclose()
        raise AssertionError("an answer came back")

    return asyncio.run(scenario())


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize(
    ("fault", "error_class", "reached_server"),
    [("reset", "connection_error", True), ("truncate", "connection_error", True)],
)
def test_lost_answers_are_classed_alike_on_both_transports(
    transport: str, fault: str, error_class: str, reached_server: bool
) -> None:
    """A reset or a cut-off body after the request was sent may have been billed: lineage
    counts the retry as possibly bought twice, whichever transport carried it."""
    options = EmulatorOptions(seed=3, fault_rate=1.0, faults=[fault])
    with RunningEmulator(options) as emu:
        exc = _post(transport, emu.url)
        assert emu.stats()["faults"] == {fault: 1}
    assert (exc.error_class, exc.reached_server) == (error_class, reached_server)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_a_read_timeout_is_a_timeout_that_may_have_been_billed(transport: str) -> None:
    options = EmulatorOptions(seed=3, fault_rate=1.0, faults=["timeout"], hang_s=3.0)
    with RunningEmulator(options) as emu:
        exc = _post(transport, emu.url, timeout_s=0.3)
    assert (exc.error_class, exc.reached_server) == ("timeout", True)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_a_refused_connection_was_never_sent(transport: str) -> None:
    exc = _post(transport, "http://127.0.0.1:9")  # nothing listens there
    assert (exc.error_class, exc.reached_server) == ("connection_error", False)
    assert "127.0.0.1" in str(exc) or "refused" in str(exc).lower() or str(exc)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_redirects_are_not_followed(transport: str) -> None:
    """A redirected POST comes back as its 3xx (an error the provider classes), on both
    transports: following it could carry the API key to another host."""
    from aiohttp import web

    followed: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        followed.append(request.headers.get("Authorization", ""))
        return web.json_response({"ok": True})

    async def scenario() -> int:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", moved)
        app.router.add_post("/elsewhere", elsewhere)
        async with serving(app) as url:
            client = make_http_client(transport, 2, 5.0, url)  # type: ignore[arg-type]
            try:
                headers = {"Authorization": "Bearer secret", "content-type": "application/json"}
                answer = await client.request("POST", url + CHAT[0], headers, CHAT[1])
            finally:
                await client.aclose()
        return answer.status

    assert asyncio.run(scenario()) == 307
    assert followed == []


SECRETS = {
    "OPENAI_API_KEY": "sk-canary-openai",
    "AWS_SECRET_ACCESS_KEY": "canary-aws",
    "GITHUB_TOKEN": "canary-token",
    "HTTPS_PROXY": "http://user:canary-pass@127.0.0.1:9",
    "PREFECT_API_KEY": "canary-prefect-client-key",
}


def test_the_server_environment_is_an_allowlist(tmp_path) -> None:
    environ = {
        **SECRETS,
        "PATH": "/usr/bin",
        "HOME": "/root",
        "LC_ALL": "C.UTF-8",
        "PREFECT_API_URL": "http://elsewhere/api",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": "postgresql+asyncpg://p@h/db",
    }
    env = server._server_env(tmp_path, 4321, environ)
    assert not set(SECRETS) & set(env)
    assert "PREFECT_API_URL" not in env
    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/root" and env["LC_ALL"] == "C.UTF-8"
    # The server's own settings pass: e.g. the PostgreSQL a production server runs on.
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == "postgresql+asyncpg://p@h/db"
    assert env["PREFECT_SERVER_API_PORT"] == "4321"


def _session_environs(leader: int) -> list[bytes]:
    """/proc/<pid>/environ of every process in ``leader``'s session (the server started one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == leader:  # field 6 of stat: the session id
                found.append((entry / "environ").read_bytes())
        except (OSError, IndexError, ValueError):
            continue
    return found


@dataclass(frozen=True)
class FreshStart:
    """What this module's one fresh start of the managed server left to check."""

    interrupted: RunInterruptedError | None  # the start asked to stop at its first health check
    asked: int  # how often that start asked whether to stop
    starting_pid: int | None  # the server it had launched (the state file's pid)
    adopted: server.ServerInfo  # what the next ensure_server() returned
    started_now: bool


@pytest.fixture(scope="module")
def fresh_start(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreshStart]:
    """A managed server started from scratch once for the two start-up tests below (a start
    costs 15-60 s of CPU): by a process whose environment holds secrets, stopped as it starts,
    then adopted by the next command. Each test checks its own part of that one start."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISTILLERY_HOME", str(tmp_path_factory.mktemp("fresh") / "home"))
        for name, value in SECRETS.items():
            patch.setenv(name, value)
        asked: list[float] = []

        def stop() -> bool:
            asked.append(time.monotonic())
            return True

        interrupted: RunInterruptedError | None = None
        try:
            try:
                server.ensure_server(stop)
            except RunInterruptedError as exc:
                interrupted = exc
            state = server._read_state()
            info, started_now = server.ensure_server()  # the next command adopts it
            yield FreshStart(
                interrupted, len(asked), state.pid if state else None, info, started_now
            )
        finally:
            server.stop()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_the_server_keeps_no_secret_of_the_run_that_started_it(fresh_start: FreshStart) -> None:
    # Started by ensure_server() in this process, its environment holding SECRETS.
    assert fresh_start.starting_pid is not None
    assert fresh_start.adopted.pid == fresh_start.starting_pid
    environs = _session_environs(fresh_start.adopted.pid)
    assert environs  # the server itself at least
    for environ in environs:
        assert b"PATH=" in environ
        for value in SECRETS.values():
            assert value.encode() not in environ


@pytest.mark.slow
def test_a_stop_while_the_server_starts_ends_the_wait_and_the_next_run_adopts_it(
    fresh_start: FreshStart,
) -> None:
    # A SIGTERM while a fresh server started held the command until the server answered
    # (15 s and more on a loaded machine): the wait now asks between health checks.
    assert fresh_start.interrupted is not None
    assert "nothing was sent" in str(fresh_start.interrupted)
    assert fresh_start.asked == 1  # asked after the first health check, not after it answered
    # The next command adopts the server that was starting instead of starting another.
    assert not fresh_start.started_now
    assert fresh_start.adopted.pid == fresh_start.starting_pid
