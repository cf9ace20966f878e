"""Tokens per second of the embedded local teacher (Gemma 3 270M, llama.cpp) on this machine.

Why: the README's main job runs on it, and its speed decides how many prompts a quick start can
afford. Measured through its HTTP API, as distillery uses it: sequential requests, then several
at once (llama-cpp-python's server answers one request at a time, so concurrency should not
raise throughput — this checks it). Run by hand:

    .venv/bin/python bench/local_teacher.py [--requests 6] [--max-tokens 64] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx
from _common import append_section, exit_cleanly_on_sigterm, markdown_table

from distillery.local_teacher import LocalTeacher, free_cores, model_alias

PROMPTS = [
    "Explain why the sky is blue.",
    "Write a haiku about autumn rain.",
    "List three uses of a paperclip.",
    "What is the capital of France, and why is it famous?",
    "Describe how a bicycle works.",
    "Give two tips for learning a new language.",
]


async def _one(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> int:
    response = await client.post(
        f"{url}/chat/completions",
        json={
            "model": model_alias(),
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0.7,
        },
        timeout=600,
    )
    response.raise_for_status()
    return int(response.json()["usage"]["completion_tokens"])


async def _measure(url: str, requests: int, max_tokens: int, concurrency: int) -> float:
    """Completion tokens per wall second for ``requests`` requests, ``concurrency`` at once."""
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(trust_env=False) as client:

        async def gated(index: int) -> int:
            async with gate:
                return await _one(client, url, PROMPTS[index % len(PROMPTS)], max_tokens)

        started = time.perf_counter()
        tokens = sum(await asyncio.gather(*(gated(i) for i in range(requests))))
        return tokens / (time.perf_counter() - started)


def main() -> None:
    exit_cleanly_on_sigterm()
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows: list[list[str]] = []
    threads = free_cores()
    with LocalTeacher("127.0.0.1", 18799, threads) as teacher:
        asyncio.run(_measure(teacher.base_url, 1, 16, 1))  # warm-up
        for concurrency in (1, 3):
            runs = [
                asyncio.run(_measure(teacher.base_url, args.requests, args.max_tokens, concurrency))
                for _ in range(2)
            ]
            rows.append(
                [
                    f"{concurrency}",
                    f"{args.requests} x {args.max_tokens}",
                    f"{statistics.median(runs):.1f}",
                    f"{max(runs):.1f}",
                ]
            )
    table = markdown_table(
        ["requests in flight", "requests x max tokens", "tokens/s (median)", "tokens/s (best)"],
        rows,
    )
    print(table)
    if not args.no_write:
        append_section(
            "Local teacher speed (bench/local_teacher.py)",
            table,
            "llama-cpp-python's server decodes one request at a time, so requests in flight do "
            "not add throughput; the quick-start job keeps concurrency 1 and a few short answers.",
            [f"Model {model_alias()}; {threads} llama.cpp threads (the cores it may use)."],
        )


if __name__ == "__main__":
    main()
