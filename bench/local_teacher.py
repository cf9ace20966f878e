"""The embedded local teacher on this machine: which model, how many slots, which wait policy.

Why: the README's main job runs on it, so its model and its speed decide what a newcomer sees
in the first minutes. For each embedded model (SmolLM2-135M-Instruct, Gemma 3 270M) this starts
``distillery teacher serve`` as ``distillery run`` does and measures, through the HTTP API:
start-up until it answers, resident memory, completion tokens per wall second with one request
in flight and with as many as the server has slots (continuous batching), and a few answers to
the quick-start prompts. More rows run the default model with OpenMP's spinning wait policy
(llama.cpp's default) against the passive one the teacher sets, on a quiet machine and with one
busy-looping process per core beside it (another program wanting the CPU). Run by hand:

    .venv/bin/python bench/local_teacher.py [--requests 8] [--max-tokens 64] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from _common import REPO, append_section, exit_cleanly_on_sigterm, markdown_table

from distillery.local_teacher import (
    GEMMA3,
    SMOLLM2,
    LocalModel,
    LocalTeacher,
    default_slots,
    free_cores,
)

PORT = 18799


def _prompts(count: int) -> list[str]:
    lines = (REPO / "examples" / "prompts.jsonl").read_text().splitlines()
    return [json.loads(line)["prompt"] for line in lines[:count]]


async def _one(
    client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int, temperature: float
) -> tuple[int, str]:
    response = await client.post(
        f"{url}/chat/completions",
        json={
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "seed": 1,
        },
        timeout=900,
    )
    response.raise_for_status()
    body = response.json()
    return int(body["usage"]["completion_tokens"]), str(body["choices"][0]["message"]["content"])


async def _measure(url: str, prompts: list[str], max_tokens: int, concurrency: int) -> float:
    """Completion tokens per wall second for ``prompts``, ``concurrency`` requests at once."""
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(trust_env=False) as client:

        async def gated(prompt: str) -> int:
            async with gate:
                return (await _one(client, url, prompt, max_tokens, 0.7))[0]

        started = time.perf_counter()
        tokens = sum(await asyncio.gather(*(gated(prompt) for prompt in prompts)))
        return tokens / (time.perf_counter() - started)


async def _samples(url: str, prompts: list[str], max_tokens: int) -> list[str]:
    async with httpx.AsyncClient(trust_env=False) as client:
        return [(await _one(client, url, prompt, max_tokens, 0.0))[1] for prompt in prompts]


def _rss_mib(pid: int) -> tuple[float, float]:
    """Resident and peak resident memory of ``pid`` in MiB (Linux ``/proc``)."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


@contextlib.contextmanager
def _hogs(count: int) -> Iterator[None]:
    """``count`` busy-looping processes for the length of the block."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def _run(
    model: LocalModel, prompts: list[str], max_tokens: int, omp: str, samples: int, hogs: int = 0
) -> tuple[list[str], list[str]]:
    os.environ["OMP_WAIT_POLICY"] = omp  # the child reads it when it loads llama.cpp
    slots = default_slots()
    started = time.perf_counter()
    with _hogs(hogs), LocalTeacher("127.0.0.1", PORT, model=model.file_name) as teacher:
        load_s = time.perf_counter() - started
        url = teacher.base_url
        asyncio.run(_measure(url, prompts[:1], 8, 1))  # warm-up
        single = asyncio.run(_measure(url, prompts, max_tokens, 1))
        batched = asyncio.run(_measure(url, prompts, max_tokens, slots))
        answers = asyncio.run(_samples(url, prompts[:samples], max_tokens)) if samples else []
        assert teacher.process is not None
        rss, peak = _rss_mib(teacher.process.pid)
    row = [
        model.file_name,
        f"{omp}{f', {hogs} busy loops' if hogs else ''}",
        f"{load_s:.1f}",
        f"{rss:.0f} / {peak:.0f}",
        f"{single:.1f}",
        f"{slots}",
        f"{batched:.1f}",
        f"{batched / single:.2f}",
    ]
    return row, answers


def main() -> None:
    exit_cleanly_on_sigterm()
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    prompts = _prompts(args.requests)
    rows: list[list[str]] = []
    answers: dict[str, list[str]] = {}
    for model in (SMOLLM2, GEMMA3):
        row, answers[model.file_name] = _run(
            model, prompts, args.max_tokens, "PASSIVE", args.samples
        )
        rows.append(row)
        print(markdown_table(["model"], [[" | ".join(row)]]), flush=True)
    few = prompts[: max(4, default_slots())]
    rows.append(_run(SMOLLM2, few, args.max_tokens, "ACTIVE", 0)[0])
    for omp in ("PASSIVE", "ACTIVE"):
        rows.append(_run(SMOLLM2, few, args.max_tokens, omp, 0, hogs=free_cores())[0])
    table = markdown_table(
        [
            "model",
            "OMP_WAIT_POLICY, beside",
            "start to answering (s)",
            "RSS / peak (MiB)",
            "tokens/s, 1 in flight",
            "slots",
            "tokens/s, slots in flight",
            "gain",
        ],
        rows,
    )
    print(table)
    for name, texts in answers.items():
        print(f"\n### {name}\n")
        for prompt, text in zip(prompts, texts, strict=False):
            print(f"- **{prompt}**\n\n  > {' '.join(text.split())}\n")
    if not args.no_write:
        append_section(
            "Local teacher: xllamacpp, models and slots (bench/local_teacher.py)",
            table,
            "See docs/local-teacher.md for the sample answers and the choice of default.",
            [
                f"{free_cores()} llama.cpp threads (the cores this process may use); "
                f"{args.requests} quick-start prompts x max_tokens {args.max_tokens}, "
                "temperature 0.7; the last three rows send fewer prompts (one is slow).",
            ],
        )


if __name__ == "__main__":
    main()
