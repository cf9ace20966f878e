"""Peak RSS of ``distillery export --format hf`` at several dataset sizes (flat, or not?).

Writes a synthetic dataset of N samples (two teachers, answers of 200-2,000 characters, half
with a reasoning trace) as committed shards of 50,000 rows, then runs the export as a child
process — the command a user runs, with two splits and ``--with-reasoning`` off — and reads
the child's peak RSS from ``getrusage(RUSAGE_CHILDREN)`` (one child per size: the maximum is
over every child waited for, so sizes run in increasing order and each is its own process).

    python bench/export_hf_memory.py --sizes 100000 1000000 [--keep DIR]
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from distillery.storage.schema import SAMPLE_SCHEMA  # noqa: E402
from distillery.storage.shards import write_shard  # noqa: E402

CHUNK = 50_000
WORDS = [
    "the",
    "a",
    "model",
    "answer",
    "data",
    "train",
    "split",
    "card",
    "terms",
    "shard",
    "row",
    "teacher",
    "prompt",
]


def _text(rng: random.Random, low: int, high: int) -> str:
    size = rng.randint(low, high)
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < size:
        words.append(rng.choice(WORDS))
    return " ".join(words)


def build(root: Path, rows: int) -> None:
    """Texts are drawn from pools of 1,000 (made once): building 1M rows stays minutes."""
    rng = random.Random(0)
    now = datetime.now(UTC)
    prompts = [_text(rng, 40, 400) for _ in range(1000)]
    answers = [_text(rng, 200, 2000) for _ in range(1000)]
    traces = [_text(rng, 100, 1000) for _ in range(1000)]
    for start in range(0, rows, CHUNK):
        count = min(CHUNK, rows - start)
        columns: dict[str, list[object]] = {name: [] for name in SAMPLE_SCHEMA.names}
        for i in range(start, start + count):
            teacher = "a" if i % 2 else "b"
            record = dict.fromkeys(SAMPLE_SCHEMA.names)
            record.update(
                sample_id=f"s{i}",
                run_id="r1",
                prompt_id=f"p{i // 2}",
                sample_index=0,
                messages=[{"role": "user", "content": rng.choice(prompts)}],
                teacher_name=teacher,
                teacher_provider="local",
                teacher_model=f"smollm-{teacher}",
                usage_terms="apache-2.0",
                created_at=now,
                response_text=rng.choice(answers),
                reasoning_text=rng.choice(traces) if i % 4 == 0 else None,
                reasoning_visibility="full" if i % 4 == 0 else None,
                prompt_tokens=50,
                completion_tokens=300,
                cost_usd=0.0001,
            )
            for name in SAMPLE_SCHEMA.names:
                columns[name].append(record[name])
        write_shard(root, "samples", "r1", pa.table(columns, schema=SAMPLE_SCHEMA), start // CHUNK)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--keep", type=Path, default=None, help="Build the datasets here.")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="export-hf-memory-"))
    try:
        for rows in sorted(args.sizes):
            data = base / f"data-{rows}"
            if not data.exists():
                started = time.monotonic()
                build(data, rows)
                print(f"{rows:>9,} rows built in {time.monotonic() - started:.0f} s", flush=True)
            folder = base / f"release-{rows}"
            shutil.rmtree(folder, ignore_errors=True)
            started = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "distillery", "export", "--format", "hf", "--data",
                 str(data), "-o", str(folder), "--use", "research",
                 "--split", "train=0.98,validation=0.02"],
                check=True, cwd=REPO, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            seconds = time.monotonic() - started
            peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            size_mb = sum(p.stat().st_size for p in (folder / "data").iterdir()) / 2**20
            print(
                f"{rows:>9,} rows: export {seconds:.0f} s, peak RSS {peak_mb:.0f} MB, "
                f"{len(list((folder / 'data').iterdir()))} shards, {size_mb:.0f} MB of Parquet",
                flush=True,
            )
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
