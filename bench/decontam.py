"""Decontamination at release size: 1M rows against 100,000 evaluation items, wall time and RSS.

Why: issue 19 asks that leaving benchmark items out of a release take minutes, not hours, on
2 cores, with memory bounded, for 1M rows (a prompt and an answer of ~200 words each) against
100,000 evaluation items. Each size runs in its own process, so its peak RSS is its own:

1. write the evaluation sets: half the items as JSON Lines, half as Parquet (both readers),
   40-120 words each, from the Zipf vocabulary of ``dedup_quality.TextMaker``;
2. ``Contamination.build`` over both files (timed; RSS after it is the evaluation side);
3. rows are generated in batches of 10,000 (not timed) and each batch's prompts and answers
   go through ``Contamination.matches`` (timed). 1% of the rows carry a 13-25-word slice of a
   random evaluation item, re-cased and re-punctuated, in the prompt or the answer.

Reported: build and match seconds, rows per second, CPU seconds, peak RSS, how many planted
rows were found (recall must be 1: equal words give equal hashes) and how many unplanted rows
were flagged (a 13-word overlap between independent Zipf texts, or a 64-bit collision).

Run by hand from the repository root::

    .venv/bin/python bench/decontam.py [--rows 100000 1000000] [--eval-items 100000] [--no-append]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _common import append_section, markdown_table
from dedup_quality import TextMaker

from distillery.storage.release.decontam import DEFAULT_NGRAM, Contamination, EvalSet

BATCH_ROWS = 10_000
PLANTED_SHARE = 0.01
SEPARATORS = np.array([" ", " ", " ", ", ", ". ", "\n", " - ", "; "], dtype=object)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Words:
    """Word sequences from ``TextMaker``'s Zipf vocabulary (fixed by ``seed``), drawn by numpy
    in bulk (the draws fixed by ``draws``)."""

    def __init__(self, seed: int, draws: int = 0) -> None:
        maker = TextMaker(seed)
        self.words = np.array(maker.words, dtype=object)
        weights = np.diff(np.array([0.0, *maker.cumulative]))
        self.p = weights / weights.sum()
        self.rng = np.random.default_rng([seed, draws])

    def texts(self, n: int, low: int, high: int) -> list[list[str]]:
        counts = self.rng.integers(low, high + 1, n)
        drawn = self.rng.choice(len(self.words), size=int(counts.sum()), p=self.p)
        tokens: list[str] = self.words[drawn].tolist()
        ends = np.cumsum(counts).tolist()
        return [tokens[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]

    def sentence(self, words: list[str]) -> str:
        """The words as prose: a capital, full stops every dozen words."""
        out = [w + ". " if i % 12 == 11 else w + " " for i, w in enumerate(words)]
        return "".join(out).capitalize().strip()


def generate(rows: int, eval_items: int, directory: Path, seed: int) -> dict[str, Any]:
    """The evaluation files, and ``plants.json``: which rows get which slice, and where."""
    words = Words(seed)
    rng = np.random.default_rng(seed + 1)
    items = words.texts(eval_items, 40, 120)
    half = eval_items // 2
    with (directory / "eval_a.jsonl").open("w") as handle:
        for i, item in enumerate(items[:half]):
            handle.write(json.dumps({"id": i, "question": words.sentence(item)}) + "\n")
    texts_b = [words.sentence(item) for item in items[half:]]
    pq.write_table(
        pa.table({"prompt": texts_b}), directory / "eval_b.parquet", row_group_size=10_000
    )
    plants: dict[int, tuple[str, bool]] = {}
    for row in np.flatnonzero(rng.random(rows) < PLANTED_SHARE).tolist():
        item = items[int(rng.integers(eval_items))]
        size = int(rng.integers(DEFAULT_NGRAM, 26))
        start = int(rng.integers(0, len(item) - size + 1))
        seps = rng.choice(SEPARATORS, size)
        pairs = zip(item[start : start + size], seps, strict=True)
        text = "".join(w.upper() + s if k % 5 == 0 else w + s for k, (w, s) in enumerate(pairs))
        plants[row] = (text, bool(rng.random() < 0.5))
    (directory / "plants.json").write_text(json.dumps(plants))
    return {"planted": len(plants)}


def child(rows: int, eval_items: int, directory: Path, seed: int) -> dict[str, Any]:
    """Build from the files, then match generated rows batch by batch (this process's RSS)."""
    words = Words(seed, draws=1)  # the same vocabulary, other words
    plants = {
        int(k): (v[0], v[1]) for k, v in json.loads((directory / "plants.json").read_text()).items()
    }
    planted_rows = np.array(sorted(plants), dtype=np.int64)
    jsonl, parquet = directory / "eval_a.jsonl", directory / "eval_b.parquet"
    rss_before = rss_mb()

    start, cpu_start = time.perf_counter(), cpu_s()
    sets = [EvalSet("eval_a", jsonl, "question"), EvalSet("eval_b", parquet, "prompt")]
    contamination = Contamination.build(sets, threads=2)
    build_s, build_cpu = time.perf_counter() - start, cpu_s() - cpu_start
    rss_built, peak_built = rss_mb(), peak_rss_mb()

    match_s = match_cpu = 0.0
    flagged = np.zeros(rows, bool)
    for first in range(0, rows, BATCH_ROWS):
        n = min(BATCH_ROWS, rows - first)
        prompts = [words.sentence(w) for w in words.texts(n, 150, 250)]
        answers = [words.sentence(w) for w in words.texts(n, 150, 250)]
        for offset in range(n):
            if (plant := plants.get(first + offset)) is not None:
                target = prompts if plant[1] else answers
                cut = target[offset].find(" ", len(target[offset]) // 2)
                target[offset] = f"{target[offset][:cut]} {plant[0]}{target[offset][cut:]}"
        start, cpu_start = time.perf_counter(), cpu_s()
        found_p = contamination.matches(prompts)
        found_a = contamination.matches(answers)
        match_s += time.perf_counter() - start
        match_cpu += cpu_s() - cpu_start
        flagged[first : first + n] = [bool(p or a) for p, a in zip(found_p, found_a, strict=True)]
    is_planted = np.zeros(rows, bool)
    is_planted[planted_rows] = True
    return {
        "rows": rows,
        "eval_items": eval_items,
        "eval_keys": len(contamination.keys),
        "skipped": sum(contamination.skipped.values()),
        "build_s": round(build_s, 1),
        "build_cpu_s": round(build_cpu, 1),
        "match_s": round(match_s, 1),
        "match_cpu_s": round(match_cpu, 1),
        "rows_per_s": round(rows / match_s),
        "rss_before_build_mb": round(rss_before),
        "rss_after_build_mb": round(rss_built),
        "peak_rss_build_mb": round(peak_built),
        "peak_rss_mb": round(peak_rss_mb()),
        "planted": int(is_planted.sum()),
        "planted_found": int((flagged & is_planted).sum()),
        "unplanted_flagged": int((flagged & ~is_planted).sum()),
    }


def run_phase(phase: str, rows: int, eval_items: int, directory: Path, seed: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", phase, "--rows", str(rows)]
    command += ["--eval-items", str(eval_items), "--dir", str(directory), "--seed", str(seed)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{phase} failed:\n{done.stderr[-4000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    print(phase, result, flush=True)
    return result


def run_size(rows: int, eval_items: int, seed: int) -> dict[str, Any]:
    """Generate in one process, then build and match in a fresh one (its own peak RSS)."""
    directory = Path(tempfile.mkdtemp(prefix=f"decontam-{rows}-"))
    try:
        run_phase("generate", rows, eval_items, directory, seed)
        return run_phase("match", rows, eval_items, directory, seed)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--eval-items", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--no-append", action="store_true")
    parser.add_argument("--child", choices=["generate", "match"])
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    if args.child:
        phase = generate if args.child == "generate" else child
        result = phase(args.rows[0], args.eval_items, args.dir, args.seed)
        print("RESULT " + json.dumps(result), flush=True)
        return
    results = [run_size(rows, args.eval_items, args.seed) for rows in args.rows]
    table = markdown_table(
        [
            "rows",
            "eval items (distinct 13-grams)",
            "build s (CPU s)",
            "match s (CPU s)",
            "rows/s",
            "RSS after build MB",
            "peak RSS MB",
            "planted found",
            "unplanted flagged",
        ],
        [
            [
                f"{r['rows']:,}",
                f"{r['eval_items']:,} ({r['eval_keys']:,})",
                f"{r['build_s']} ({r['build_cpu_s']})",
                f"{r['match_s']} ({r['match_cpu_s']})",
                f"{r['rows_per_s']:,}",
                f"{r['rss_after_build_mb']:,}",
                f"{r['peak_rss_mb']:,}",
                f"{r['planted_found']:,} of {r['planted']:,}",
                f"{r['unplanted_flagged']:,}",
            ]
            for r in results
        ],
    )
    print(table)
    if args.no_append:
        return
    biggest = results[-1]
    total_min = (biggest["build_s"] + biggest["match_s"]) / 60
    append_section(
        "Decontamination (bench/decontam.py)",
        table,
        f"{biggest['rows']:,} rows against {biggest['eval_items']:,} evaluation items took "
        f"{total_min:.1f} minutes (build + match) with a peak RSS of "
        f"{biggest['peak_rss_mb']:,} MB. Goal: minutes, not hours, memory bounded.",
        [
            "Rows: a prompt and an answer of 150-250 words each, both looked up; 1% carry a "
            "13-25-word slice of an evaluation item, re-cased and re-punctuated.",
            "Evaluation items: 40-120 words, half JSON Lines, half Parquet; n = 13.",
            "Row generation is not timed; peak RSS includes it (a 10,000-row batch).",
            f"numpy {np.__version__}, pyarrow {pa.__version__}; 2 matching threads.",
        ],
    )


if __name__ == "__main__":
    main()
