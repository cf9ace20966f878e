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
