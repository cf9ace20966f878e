"""Requests/s of each HTTP stack distillery could send teacher requests with.

Why: ``generators/http.py`` sends with aiohttp directly by default, on the claim that httpx's
API costs several times aiohttp's CPU per request — on httpx's own transport and still on
aiohttp's transport (httpx-aiohttp). This measures that claim on the machine at hand, against
bare aiohttp as the ceiling, and measures what distillery's own layer
(``TeacherClient.complete``: tenacity retries, headers, JSON parsing) costs on top.

The emulator runs as a separate process (latency 0) so it does not share the client's GIL; its
CPU use is reported too: the emulator's share of a core, because a saturated emulator would cap
every stack alike, and the client's CPU milliseconds per request, which other processes on a
shared machine disturb far less than requests/s. Stacks are measured round-robin (each repeat
runs every stack once) so background load spreads over all of them instead of hitting one.

Run by hand from the repository root::

    .venv/bin/python bench/http_stack.py [--requests 3000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
from _common import (
    EmulatorProcess,
    append_section,
    exit_cleanly_on_sigterm,
    markdown_table,
    process_cpu_s,
)

from distillery.config import TeacherConfig
from distillery.generators.client import TeacherClient
from distillery.generators.http import Transport, make_http_client
from distillery.generators.providers.registry import get_provider

MODEL = "gpt-4o-mini"
TIMEOUT_S = 600.0  # TeacherConfig's default read timeout
WARMUP_REQUESTS = 100
BASELINE = "bare aiohttp.ClientSession"
_WORDS = (
    *("river", "delta", "sediment", "compiler", "parser", "token", "bread", "yeast", "crust"),
    *("tide", "moon", "orbit", "chess", "opening", "gambit", "volcano", "magma", "basalt"),
    *("jazz", "chord", "tempo", "bee", "hive", "pollen", "lattice", "vector", "kernel", "cache"),
)

Messages = list[dict[str, str]]
Send = Callable[[Messages], Awaitable[None]]
Stack = Callable[[str, int], AbstractAsyncContextManager[Send]]


def make_prompts(count: int, size: int = 1024, seed: int = 0) -> list[Messages]:
    """``count`` distinct user prompts of about ``size`` characters each."""
    rng = random.Random(seed)
    prompts: list[Messages] = []
    for index in range(count):
        words = [f"Request {index}: explain the following in depth."]
        length = len(words[0])
        while length < size:
            word = rng.choice(_WORDS)
            words.append(word)
            length += len(word) + 1
        prompts.append([{"role": "user", "content": " ".join(words)}])
    return prompts


def _body(messages: Messages, max_tokens: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": messages}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def _check(status: int, content: bytes) -> None:
    if status != 200 or not content:
        raise RuntimeError(f"unexpected answer: HTTP {status}, {len(content)} bytes")


def httpx_stack(transport: Transport, max_tokens: int | None) -> Stack:
    """httpx.AsyncClient pooled for ``concurrency``, on httpx's or aiohttp's transport."""

    @asynccontextmanager
    async def stack(base_url: str, concurrency: int) -> AsyncIterator[Send]:
        url = f"{base_url}/v1/chat/completions"
        timeout = httpx.Timeout(TIMEOUT_S, connect=10.0, pool=None)
        if transport == "aiohttp":
            from httpx_aiohttp import AiohttpTransport

            def session() -> aiohttp.ClientSession:
                connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=30)
                return aiohttp.ClientSession(connector=connector)

            client = httpx.AsyncClient(transport=AiohttpTransport(client=session), timeout=timeout)
        else:
            limits = httpx.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency
            )
            client = httpx.AsyncClient(limits=limits, timeout=timeout)
        async with client:

            async def send(messages: Messages) -> None:
                response = await client.post(url, json=_body(messages, max_tokens))
                _check(response.status_code, response.content)

            yield send

    return stack


def aiohttp_stack(max_tokens: int | None) -> Stack:
    """aiohttp.ClientSession with the same connector settings ``make_http_client`` uses."""

    @asynccontextmanager
    async def stack(base_url: str, concurrency: int) -> AsyncIterator[Send]:
        url = f"{base_url}/v1/chat/completions"
        connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=30)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def send(messages: Messages) -> None:
                async with session.post(url, json=_body(messages, max_tokens)) as response:
                    _check(response.status, await response.read())

            yield send

    return stack


def teacher_stack(transport: Transport, max_tokens: int | None) -> Stack:
    """The full per-request path of a run: ``TeacherClient.complete`` on a pooled client."""

    @asynccontextmanager
    async def stack(base_url: str, concurrency: int) -> AsyncIterator[Send]:
        teacher = TeacherConfig.model_validate(
            {
                "name": "bench",
                "provider": "openai",
                "model": MODEL,
                "base_url": f"{base_url}/v1",
                "api_key_env": None,
                "concurrency": concurrency,
                "params": {} if max_tokens is None else {"max_tokens": max_tokens},
            }
        )
        # With the base URL, as a run builds it (the proxy resolved once, not per request).
        http = make_http_client(transport, concurrency, TIMEOUT_S, teacher.base_url)
        client = TeacherClient(teacher, get_provider("openai"), http)

        async def send(messages: Messages) -> None:
            outcome = await client.complete(messages)
            if outcome.completion is None or outcome.attempts != 1:
                raise RuntimeError(f"request failed or retried: {outcome}")

        try:
            yield send
        finally:
            await http.aclose()

    return stack


async def _drive(send: Send, prompts: list[Messages], concurrency: int) -> float:
    """Send every prompt with ``concurrency`` requests in flight; return the seconds taken."""
    queue = iter(prompts)

    async def worker() -> None:
        for messages in queue:  # one shared iterator: each prompt is taken exactly once
            await send(messages)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


@dataclass
class Result:
    """Every repeat of one stack: requests/s and CPU ms per request of client and emulator."""

    rates: list[float] = field(default_factory=list)
    client_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)

    def server_share(self) -> float:
        """Median share of one core the emulator used (1.0: it was the bottleneck)."""
        pairs = zip(self.rates, self.server_ms, strict=True)
        return statistics.median(rate * ms / 1000 for rate, ms in pairs)


async def measure(
    stack: Stack, emulator: EmulatorProcess, prompts: list[Messages], concurrency: int
) -> tuple[float, float, float]:
    """One repeat: warm up, then time ``prompts``.

    Returns (requests/s, client CPU ms per request, emulator CPU ms per request).
    """
    warmup, timed = prompts[:WARMUP_REQUESTS], prompts[WARMUP_REQUESTS:]
    async with stack(emulator.url, concurrency) as send:
        await _drive(send, warmup, concurrency)
        await asyncio.to_thread(emulator.reset)
        client_cpu, server_cpu = time.process_time(), process_cpu_s(emulator.pid)
        elapsed = await _drive(send, timed, concurrency)
        client_cpu = time.process_time() - client_cpu
        server_cpu = process_cpu_s(emulator.pid) - server_cpu
    stats = await asyncio.to_thread(emulator.stats)
    if stats["requests"] != len(timed) or stats["by_status"] != {"200": len(timed)}:
        raise RuntimeError(f"the emulator saw something else than {len(timed)} OKs: {stats}")
    return len(timed) / elapsed, client_cpu * 1000 / len(timed), server_cpu * 1000 / len(timed)


def stacks(max_tokens: int | None) -> dict[str, Stack]:
    return {
        "httpx.AsyncClient, httpx transport": httpx_stack("httpx", max_tokens),
        "httpx.AsyncClient, AiohttpTransport": httpx_stack("aiohttp", max_tokens),
        BASELINE: aiohttp_stack(max_tokens),
        "TeacherClient.complete, aiohttp sender (default)": teacher_stack("aiohttp", max_tokens),
        "TeacherClient.complete, httpx transport": teacher_stack("httpx", max_tokens),
    }


async def run(args: argparse.Namespace, emulator: EmulatorProcess) -> dict[str, Result]:
    prompts = make_prompts(WARMUP_REQUESTS + args.requests)
    results = {name: Result() for name in stacks(args.max_tokens)}
    for repeat in range(args.repeats):
        for name, stack in stacks(args.max_tokens).items():
            rate, client_ms, server_ms = await measure(stack, emulator, prompts, args.concurrency)
            result = results[name]
            result.rates.append(rate)
            result.client_ms.append(client_ms)
            result.server_ms.append(server_ms)
            print(f"  repeat {repeat + 1}: {name}: {rate:,.0f} req/s", flush=True)
    return results


def report(results: dict[str, Result]) -> tuple[str, str]:
    """The markdown table and a conclusion drawn from the numbers."""
    baseline = statistics.median(results[BASELINE].rates)
    rows: list[list[str]] = []
    medians: dict[str, float] = {}
    for name, result in results.items():
        median = medians[name] = statistics.median(result.rates)
        rows.append(
            [
                name,
                f"{median:,.0f}",
                f"{max(result.rates):,.0f}",
                f"{median / baseline:.2f}",
                f"{statistics.median(result.client_ms):.2f}",
                f"{result.server_share():.0%}",
            ]
        )
    headers = ["stack", "req/s (median)", "req/s (best)", "ratio to bare aiohttp"]
    headers += ["client CPU ms/req", "emulator CPU"]
    names = list(results)
    cpu = {name: statistics.median(result.client_ms) for name, result in results.items()}
    httpx_own, on_aiohttp, bare, teacher_aiohttp, teacher_httpx = names
    spread = max(max(r.rates) / min(r.rates) for r in results.values())
    server_ms = statistics.median(ms for r in results.values() for ms in r.server_ms)
    server_busy = max(r.server_share() for r in results.values())
    conclusion = (
        f"Per request, bare aiohttp cost the client {cpu[bare]:.2f} ms of CPU, httpx's API on "
        f"the aiohttp transport {cpu[on_aiohttp]:.2f} ms and httpx on its own transport "
        f"{cpu[httpx_own]:.2f} ms (median rates {medians[bare]:,.0f}, "
        f"{medians[on_aiohttp]:,.0f} and {medians[httpx_own]:,.0f} req/s). distillery's "
        f"TeacherClient (retries, limiter, parsing) on its default aiohttp sender adds "
        f"{cpu[teacher_aiohttp] - cpu[bare]:.2f} ms to bare aiohttp "
        f"({medians[teacher_aiohttp]:,.0f} req/s; {medians[teacher_httpx]:,.0f} on the "
        "httpx transport). "
        f"The emulator needed {server_ms:.2f} ms of CPU per request, a ceiling of about "
        f"{1000 / server_ms:,.0f} req/s on one core, and used at most {server_busy:.0%} of a core"
        + (
            ", so it may have capped the fastest stacks."
            if server_busy > 0.75
            else "; the client side (or other load on the machine) set the pace."
        )
        + (
            f" Rates varied up to {spread:.1f}x between repeats (other processes competed for "
            "the CPUs), so compare the CPU-per-request column rather than req/s."
            if spread > 1.3
            else ""
        )
    )
    return markdown_table(headers, rows), conclusion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="timed requests per repeat")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per stack")
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="cap on answer length (default: none)"
    )
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()
    exit_cleanly_on_sigterm()
    with EmulatorProcess(latency_ms=0) as emulator:
        print(f"emulator pid {emulator.pid} at {emulator.url}", flush=True)
        results = asyncio.run(run(args, emulator))
    table, conclusion = report(results)
    print()
    print(table)
    print()
    print(conclusion)
    notes = [
        f"{args.requests} timed POST /v1/chat/completions per repeat after {WARMUP_REQUESTS} "
        f"warm-up requests, {args.concurrency} in flight, {args.repeats} repeats per stack "
        "(round-robin); ~1 KB prompt, distinct per request; "
        + (
            "answers uncapped (~1,300 tokens, ~10 KB JSON)."
            if args.max_tokens is None
            else f"max_tokens {args.max_tokens}."
        ),
        "Emulator: `distillery emulator --latency-ms 0` in its own process on loopback. "
        "Client: default asyncio event loop, one process. httpx rows: httpx.AsyncClient pooled "
        f"for {args.concurrency} connections, on its own transport or httpx-aiohttp's; "
        "TeacherClient rows: make_http_client() with the teacher's base URL, as a run does.",
        "Client CPU ms/req: the client process's CPU time over the timed part divided by the "
        "requests (median over repeats; lower is cheaper, and less disturbed by other processes "
        "than req/s). Emulator CPU: its CPU seconds per wall second, median over repeats "
        "(100% = one core busy: it would then cap the rate).",
    ]
    print(json.dumps({name: [round(r) for r in result.rates] for name, result in results.items()}))
    if not args.no_write:
        append_section("HTTP stack throughput (bench/http_stack.py)", table, conclusion, notes)


if __name__ == "__main__":
    main()
