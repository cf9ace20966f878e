"""The managed Prefect server's state file, and the HTTP stack's environment handling."""

import asyncio
import json
import subprocess
import time

import httpx
import pytest

from distillery.emulator import RunningEmulator
from distillery.flows import server
from distillery.generators.http import make_http_client


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
            return (await client.get(url)).status_code
        finally:
            await client.aclose()

    stats = f"{emulator.url}/_emulator/stats"
    assert asyncio.run(get(stats)) == 200
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    with pytest.raises(httpx.TransportError):
        asyncio.run(get(stats))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert asyncio.run(get(stats)) == 200


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

    async def scenario() -> httpx.Cookies:
        app = web.Application()
        app.router.add_get("/plain", plain)
        app.router.add_get("/sticky", sticky)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}"
        client = make_http_client(transport, 4, 5.0, url)  # type: ignore[arg-type]
        try:
            await client.get(f"{url}/plain")
            assert not client.cookies
            await client.get(f"{url}/sticky")
            await client.get(f"{url}/plain")
            return client.cookies
        finally:
            await client.aclose()
            await runner.cleanup()

    cookies = asyncio.run(scenario())
    assert cookies.get("lb") == "node-7"
    assert seen == [None, None, "lb=node-7"]
