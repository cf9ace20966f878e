"""Rows per shard and row-group size of the ``samples`` table, chosen by timing DuckDB queries.

Why: distillery commits one Parquet shard per batch (~100-1,000 rows) with row groups of up to
64,000 rows (``storage/shards.py``). Small shards make commits frequent and a crash cheap, but
every query then globs, opens and parses the footer of hundreds of files, and zstd and the
column statistics work on tiny row groups; one big file per run is the opposite trade, and big
row groups also make a point lookup decompress more. Which side wins is a measurement, so this
writes one synthetic dataset of realistic sample rows (``SAMPLE_SCHEMA``, ~1-3 KB responses,
3-4 teachers, every metadata column filled) in several layouts and times, on each, the queries
people run on a dataset, plus the write rate and the size on disk.

Runs are deliberately uneven (40% + 20% + 8 x 5% of the rows), as real datasets are (one main
run and smaller pilots), so that 50,000-row shards and 64k/128k row groups exist at all.
Layouts that come out identical (a row group at least as big as every shard) are merged.

Run by hand from the repository root (about 5 minutes on 2 cores for 300,000 rows)::

    .venv/bin/python bench/shard_sizing.py [--rows 300000] [--repeats 3] [--no-write]

The data lives in a temporary directory that is deleted at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _common import BENCHMARKS_MD, NOISE_NOTE, command_line, exit_cleanly_on_sigterm

from distillery.storage.schema import SAMPLE_SCHEMA

RUN_WEIGHTS = [0.40, 0.20] + [0.05] * 8
SHARD_ROWS: list[int | None] = [500, 5_000, 50_000, None]  # None: one shard per run
GROUP_ROWS = [8_000, 64_000, 128_000]
RARE_WORD = "zugzwangish"  # the pseudo-word vocabulary has no 'z', so only inserted copies match
TEACHERS = [  # name, provider, model, returned version, base URL, terms tag, $ per 1M in/out
    ("t1", "openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", None, "openai-2025", 0.15, 0.6),
    ("t2", "anthropic", "claude-3-5-haiku-latest", "claude-3-5-haiku-20241022", None,
     "anthropic-2025", 0.8, 4.0),
    ("t3", "gemini", "gemini-2.0-flash", "gemini-2.0-flash-001", None, "google-2025", 0.1, 0.4),
    ("t4", "openai", "llama-3.1-8b-instruct", "llama-3.1-8b-instruct-q4", "http://gpu1:8000/v1",
     "llama-3.1", 0.0, 0.0),
]  # fmt: skip
FINISH = [("stop", 0.93), ("length", 0.06), ("content_filter", 0.01)]
RAW_FINISH = {
    "openai": {"stop": "stop", "length": "length", "content_filter": "content_filter"},
    "anthropic": {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal"},
    "gemini": {"stop": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"},
}


@dataclass
class Layout:
    shard_rows: list[int | None]  # all the rows-per-shard targets that give this same layout
    group_rows: list[int]  # all the row-group sizes that give this same layout
    shards: list[tuple[str, int, int]]  # run_id, start, stop (rows of the big table)
    times_ms: dict[str, float] = field(default_factory=dict)
    files: int = 0
    row_groups: int = 0
    bytes_on_disk: int = 0
    write_mb_s: float = 0.0


def synthetic_samples(rows: int, seed: int = 7) -> tuple[pa.Table, list[tuple[str, int, int]]]:
    """Sample rows in SAMPLE_SCHEMA order, run after run; also each run's (id, start, stop)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("bcdfghklmnprstvw"))
    vowels = np.array(list("aeiou"))
    lengths = rng.integers(2, 11, size=8_000)
    pseudo = {
        "".join(c + v for c, v in zip(rng.choice(letters, n), rng.choice(vowels, n), strict=True))
        for n in lengths // 2 + 1
    }
    common = "the of and to a in is that for it as with be on this are by you can or"
    vocab = np.array(common.split() + sorted(pseudo))
    weights = 1.0 / (np.arange(len(vocab)) + 2.7)  # Zipf-Mandelbrot, like word counts in text
    words = vocab[rng.choice(len(vocab), 6_000_000, p=weights / weights.sum())].tolist()
    marks = rng.choice(
        [" ", ", ", ". ", ".\n\n", "\n- "], len(words), p=[0.86, 0.05, 0.06, 0.02, 0.01]
    )
    corpus = "".join(itertools.chain.from_iterable(zip(words, marks.tolist(), strict=True)))

    sizes = [int(rows * w) for w in RUN_WEIGHTS]
    sizes[0] += rows - sum(sizes)
    runs, start = [], 0
    columns: dict[str, list[object]] = {name: [] for name in SAMPLE_SCHEMA.names}
    hexes = rng.bytes(16 * rows * 3).hex()
    text_starts = rng.integers(0, len(corpus) - 4_000, rows).tolist()
    text_lengths = rng.integers(1_000, 3_000, rows).tolist()
    latencies = rng.lognormal(7.5, 0.6, rows).round(3).tolist()
    u = rng.random((rows, 4)).tolist()
    finish = rng.choice([f for f, _ in FINISH], rows, p=[p for _, p in FINISH]).tolist()
    params = {
        n: json.dumps({"max_tokens": n, "temperature": 0.7, "top_p": 1.0}) for n in (768, 1024)
    }
    epoch = np.datetime64("2026-01-05T00:00:00", "us")
    created: list[np.datetime64] = []
    for r, size in enumerate(sizes):
        run_id = f"r{r}"
        runs.append((run_id, start, start + size))
        teachers = TEACHERS if r % 3 != 2 else TEACHERS[:3]  # some runs use 3 teachers
        config_hash = hashlib.sha256(run_id.encode()).hexdigest()[:16]
        system = f"You are a careful assistant (run {run_id}). Answer step by step, then concisely."
        for j in range(size):
            i = start + j
            h = hexes[96 * i : 96 * (i + 1)]
            name, provider, model, version, base_url, terms, price_in, price_out = teachers[
                j % len(teachers)
            ]
            prompt_no = j // len(teachers)
            at = (prompt_no * 7919 + r * 104729) % 20_000_000
            prompt = corpus[at : at + 200 + prompt_no % 400]
            text = corpus[text_starts[i] : text_starts[i] + text_lengths[i]]
            if u[i][0] < 0.0005:
                text = f"{text[:500]} {RARE_WORD} {text[500:]}"
            max_tokens = 1024 if name != "t4" else 768
            p_tok = len(prompt) // 4 + len(system) // 4 + 8
            c_tok = max_tokens if finish[i] == "length" else len(text) // 4
            cached = int(p_tok * 0.8) if u[i][1] < 0.3 else 0
            retried = u[i][2] < 0.04
            row: dict[str, object] = {
                "sample_id": h[:32],
                "run_id": run_id,
                "prompt_id": f"{run_id}-{prompt_no:07d}",
                "sample_index": 0,
                "prompt": prompt,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": prompt},
                ],
                "prompt_meta": f'{{"row": {prompt_no}, "source": "mixed-instruct"}}',
                "teacher_name": name,
                "teacher_provider": provider,
                "teacher_model": model,
                "teacher_base_url": base_url,
                "params": params[max_tokens],
                "usage_terms": terms,
                "attempts": 2 if retried else 1,
                "attempt_statuses": ["429", "200"] if retried else ["200"],
                "maybe_billed_twice": int(u[i][3] < 0.002),
                "latency_ms": latencies[i],
                "config_hash": config_hash,
                "template_hash": config_hash[::-1],
                "flow_run_id": hashlib.md5(run_id.encode()).hexdigest(),
                "task_run_id": hashlib.md5(f"{run_id}/{j // 1000}".encode()).hexdigest(),
                "response_text": text,
                "teacher_model_version": version,
                "response_id": f"resp_{h[32:56]}",
                "request_id": f"req_{h[56:80]}",
                "system_fingerprint": f"fp_{h[80:82]}c4f1e2" if provider == "openai" else None,
                "finish_reason": finish[i],
                "finish_reason_raw": RAW_FINISH[provider][finish[i]],
                "prompt_tokens": p_tok,
                "completion_tokens": c_tok,
                "cached_tokens": cached,
                "reasoning_tokens": None if provider != "openai" else 0,
                "cost_usd": round((p_tok * price_in + c_tok * price_out) / 1e6, 8),
                "rate_limits": f'{{"x-ratelimit-remaining-requests": "{9000 - j % 9000}"}}',
                "content_hash": hashlib.blake2b(text.encode(), digest_size=16).hexdigest(),
            }
            for key, value in row.items():
                columns[key].append(value)
        created.extend(epoch + np.timedelta64(r, "D") + np.arange(size) * np.timedelta64(40, "ms"))
        start += size
    columns["created_at"] = list(
        pa.array(np.array(created, dtype="datetime64[us]")).cast(pa.timestamp("us", tz="UTC"))
    )
    arrays = []
    for schema_field in SAMPLE_SCHEMA:
        values = columns[schema_field.name]
        if isinstance(schema_field.type, pa.ExtensionType):
            storage = pa.array(values, schema_field.type.storage_type)
            arrays.append(pa.ExtensionArray.from_storage(schema_field.type, storage))
        else:
            arrays.append(pa.array(values, schema_field.type))
    return pa.Table.from_arrays(arrays, schema=SAMPLE_SCHEMA), runs


def layouts(runs: list[tuple[str, int, int]]) -> list[Layout]:
    """Every rows-per-shard x row-group combination, identical ones merged."""
    found: dict[tuple[tuple[int, int], ...], Layout] = {}
    for shard_rows, group_rows in itertools.product(SHARD_ROWS, GROUP_ROWS):
        shards = [
            (run_id, s, min(s + (shard_rows or stop - start), stop))
            for run_id, start, stop in runs
            for s in range(start, stop, shard_rows or stop - start)
        ]
        key = tuple((b - a, min(group_rows, b - a)) for _, a, b in shards)
        if key in found:
            layout = found[key]
            layout.shard_rows += [shard_rows] if shard_rows not in layout.shard_rows else []
            layout.group_rows += [group_rows] if group_rows not in layout.group_rows else []
        else:
            found[key] = Layout([shard_rows], [group_rows], shards)
    return list(found.values())


def write(table: pa.Table, layout: Layout, root: Path) -> None:
    """Write the layout's shards as distillery does (zstd, fsync each file); time it."""
    part = {run_id: 0 for run_id, _, _ in layout.shards}
    began = time.perf_counter()
    for run_id, start, stop in layout.shards:
        directory = root / "samples" / f"run_id={run_id}"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"part-{part[run_id]:05d}.parquet"
        part[run_id] += 1
        with path.open("wb") as handle:
            pq.write_table(
                table.slice(start, stop - start),
                handle,
                compression="zstd",
                row_group_size=min(layout.group_rows),
            )
            handle.flush()
            os.fsync(handle.fileno())
    layout.write_mb_s = table.nbytes / 1e6 / (time.perf_counter() - began)
    paths = list(root.glob("samples/*/*.parquet"))
    layout.files = len(paths)
    layout.bytes_on_disk = sum(p.stat().st_size for p in paths)
    layout.row_groups = sum(pq.ParquetFile(p).metadata.num_row_groups for p in paths)


def queries(root: Path, sample_id: str) -> dict[str, str]:
    src = f"read_parquet('{root}/samples/*/*.parquet', hive_partitioning = true)"
    return {
        "count by teacher": f"SELECT teacher_name, count(*), sum(completion_tokens) FROM {src} "
        "GROUP BY 1 ORDER BY 1",
        "filter, LIMIT 100": f"SELECT * FROM {src} "
        "WHERE finish_reason = 'length' AND teacher_name = 't1' LIMIT 100",
        "point lookup": f"SELECT * FROM {src} WHERE sample_id = '{sample_id}'",
        f"ILIKE '%{RARE_WORD}%'": f"SELECT count(*) FROM {src} "
        f"WHERE response_text ILIKE '%{RARE_WORD}%'",
        "one run (r3)": f"SELECT teacher_name, count(*), sum(completion_tokens) FROM {src} "
        "WHERE run_id = 'r3' GROUP BY 1 ORDER BY 1",
    }


def time_queries(layout: Layout, sql: dict[str, str], repeats: int) -> dict[str, object]:
    """Median wall ms per query, each run on a new connection (as ``distillery query`` does)."""
    answers: dict[str, object] = {}
    for name, statement in sql.items():
        samples = []
        for _ in range(repeats):
            con = duckdb.connect()
            began = time.perf_counter()
            result = con.execute(statement).fetchall()
            samples.append((time.perf_counter() - began) * 1000)
            con.close()
        layout.times_ms[name] = statistics.median(samples)
        answers[name] = len(result) if name.startswith("filter") else result
    return answers


def compact_mb_s(table: pa.Table, root: Path, target: Path) -> float:
    """Rewrite every run's shards as one file with 64k-row groups: the cost of compacting."""
    began = time.perf_counter()
    for directory in sorted((root / "samples").iterdir()):
        merged = pa.concat_tables(pq.read_table(p) for p in sorted(directory.glob("*.parquet")))
        out = target / directory.name
        out.mkdir(parents=True)
        with (out / "part-00000.parquet").open("wb") as handle:
            pq.write_table(merged, handle, compression="zstd", row_group_size=64_000)
            os.fsync(handle.fileno())
    return float(table.nbytes / 1e6 / (time.perf_counter() - began))


def markdown(results: list[Layout], runs: list[tuple[str, int, int]]) -> str:
    sizes = [stop - start for _, start, stop in runs]
    names = list(results[0].times_ms)
    head = ["rows per shard", "row group", "files", "row groups", "MB on disk", "write MB/s"]
    lines = [
        head + [f"{n} (ms)" for n in names],
        [":---"] + ["---:"] * (len(head) + len(names) - 1),
    ]
    for r in results:
        shard = " = ".join(
            f"{n:,}" if n else f"1 per run ({min(sizes):,}-{max(sizes):,})" for n in r.shard_rows
        )
        groups = "/".join(f"{g // 1000}k" for g in r.group_rows)
        if len(r.group_rows) > 1:
            groups += " (same: 1 per shard)" if r.row_groups == r.files else " (same)"
        lines.append(
            [shard, groups, str(r.files), str(r.row_groups), f"{r.bytes_on_disk / 1e6:.0f}",
             f"{r.write_mb_s:.0f}"] + [f"{r.times_ms[n]:.0f}" for n in names]
        )  # fmt: skip
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def machine_lines() -> list[str]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor() or "unknown",
    )  # fmt: skip
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("pyarrow", "duckdb", "numpy")
    )
    date = subprocess.run(["date", "-u"], capture_output=True, text=True, check=True).stdout
    return [
        f"- Date: {date.strip()}",
        f"- Machine: {len(os.sched_getaffinity(0))} CPUs (nproc), {cpu}, "
        f"{mem_kib / 1024**2:.1f} GiB RAM, {platform.system()} {platform.release()}; "
        f"load average at start {os.getloadavg()[0]:.1f}",
        f"- Python {platform.python_version()}; {versions}",
    ]


def append_to_benchmarks(text: str) -> None:
    """Append ``text`` with one ``write`` on an O_APPEND descriptor (others append too)."""
    if not BENCHMARKS_MD.read_text(encoding="utf-8").endswith("\n\n"):
        text = "\n" + text
    fd = os.open(BENCHMARKS_MD, os.O_WRONLY | os.O_APPEND)
    try:
        data = text.encode()
        if os.write(fd, data) != len(data):
            raise OSError("short write to BENCHMARKS.md")
    finally:
        os.close(fd)


def conclusion(results: list[Layout], compaction_mb_s: float, arrow_mb: float) -> str:
    """The recommendation, from the numbers: which shard and row-group sizes to target."""

    def score(layout: Layout) -> float:  # geometric mean of the query times
        return statistics.geometric_mean(layout.times_ms.values())

    small, rest = results[0], results[1:]
    best = min(rest, key=score)
    agg = "count by teacher"
    per_file = (small.times_ms[agg] - best.times_ms[agg]) / (small.files - best.files)
    near = [n for r in rest if score(r) <= 1.25 * score(best) for n in r.shard_rows if n]
    fine = f"{min(near):,}" if near else "one file per run"
    pairs = [
        (a, b)
        for a in rest
        for b in rest
        if a is not b  # where 8k and 64k give the same files, there is nothing to compare
        and a.shard_rows == b.shard_rows
        and 8_000 in a.group_rows
        and 64_000 in b.group_rows
    ]
    ratios = [score(b) / score(a) for a, b in pairs]
    rows = sum(b - a for _, a, b in small.shards)
    wins = [q for q in small.times_ms if all(b.times_ms[q] > 1.2 * a.times_ms[q] for a, b in pairs)]
    if ratios and min(ratios) > 1.1:
        groups = (
            f"(b) 8k-row groups (~{best.bytes_on_disk / rows * 8_000 / 1e6:.0f} MB compressed "
            f"here) were as small on disk as 64k and {min(ratios):.1f}-{max(ratios):.1f}x "
            f"faster over the queries (geometric mean; most on: {', '.join(wins) or 'none'}): "
            "set ROW_GROUP_ROWS to ~8,000 (64,000 today)."
        )
    elif ratios and max(ratios) < 0.9:
        groups = (
            f"(b) 64k-row groups beat 8k ({1 / max(ratios):.1f}-{1 / min(ratios):.1f}x, "
            "geometric mean over the queries): keep ROW_GROUP_ROWS = 64,000."
        )
    else:
        groups = (
            "(b) 8k and 64k row groups were within noise of each other "
            f"({min(ratios, default=1):.2f}-{max(ratios, default=1):.2f}x): keep "
            "ROW_GROUP_ROWS = 64,000."
        )
    return (
        f"(a) 500-row shards (today's one-per-batch size) made the queries "
        f"{score(small) / score(best):.1f}x slower than the best layout (geometric mean; about "
        f"{per_file:.2f} ms per file for the aggregate) and wrote at {small.write_mb_s:.0f} vs "
        f"{max(r.write_mb_s for r in rest):.0f} MB/s; from {fine} rows per shard up, the file "
        "count stopped mattering (within 25% of the best). So target ~50,000 rows per shard "
        "(or one file per run; fewer files as datasets grow): keep committing a small shard "
        "per batch, since it is the crash and resume unit, and compact each run into "
        f"~50k-row files when it ends or once it has tens of small shards; compaction ran at "
        f"{compaction_mb_s:.0f} MB/s here "
        f"(~{arrow_mb / compaction_mb_s:.0f} s for this dataset), cheaper and simpler than "
        f"buffering batches across tasks. {groups}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300_000, help="sample rows in the dataset")
    parser.add_argument("--repeats", type=int, default=3, help="timings per query (median)")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args()
    exit_cleanly_on_sigterm()
    head = machine_lines()
    began = time.perf_counter()
    table, runs = synthetic_samples(args.rows)
    print(f"generated {table.num_rows:,} rows, {table.nbytes / 1e6:.0f} MB in Arrow "
          f"in {time.perf_counter() - began:.0f} s", flush=True)  # fmt: skip
    sample_id = str(table.column("sample_id")[runs[5][1] + (runs[5][2] - runs[5][1]) // 2])
    results = layouts(runs)
    workdir = Path(tempfile.mkdtemp(prefix="distillery-shard-sizing-"))
    compaction = 0.0
    reference: dict[str, object] | None = None
    try:
        for layout in results:
            root = workdir / "dataset"
            write(table, layout, root)
            answers = time_queries(layout, queries(root, sample_id), args.repeats)
            if reference is None:
                reference = answers
            elif answers != reference:
                raise AssertionError(f"{layout.shard_rows} answered differently: {answers}")
            if layout is results[0]:  # the smallest shards
                compaction = compact_mb_s(table, root, workdir / "compacted")
                shutil.rmtree(workdir / "compacted")
            print(markdown([layout], runs).splitlines()[-1], flush=True)
            shutil.rmtree(root)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert reference is not None
    table_md = markdown(results, runs)
    text = conclusion(results, compaction, table.nbytes / 1e6)
    print(f"\n{table_md}\n\n{text}")
    rare = reference[next(name for name in reference if name.startswith("ILIKE"))]
    assert isinstance(rare, list)
    rare = rare[0][0]  # [(count,)]
    notes = [
        NOISE_NOTE,
        f"Data: {table.num_rows:,} synthetic rows in SAMPLE_SCHEMA ({table.nbytes / 1e6:,.0f} MB "
        f"in Arrow), 10 runs of {', '.join(f'{b - a:,}' for _, a, b in runs)} rows, 3-4 "
        "teachers per run, responses of 1,000-3,000 chars of Zipf-distributed words (zstd "
        "compresses them ~2.6x, like English), every metadata column filled; "
        f"`{RARE_WORD}` is in {rare} rows.",
        "Each layout: hive directories `samples/run_id=X/part-NNNNN.parquet`, "
        "`pq.write_table(compression='zstd', row_group_size=...)` + fsync per file (as "
        "write_shard, without the manifest); write MB/s = Arrow MB / wall seconds. Layouts that "
        "come out identical are merged (a row group never exceeds its shard).",
        f"Queries: DuckDB `read_parquet('DIR/samples/*/*.parquet', hive_partitioning = true)`, "
        f"a new `duckdb.connect()` per query (as `distillery query`), `fetchall()`, median of "
        f"{args.repeats} ms; files were in the page cache (just written), so disk reads are not "
        "measured. Every layout returned the same answers. Point lookup: a `sample_id` "
        "(random hex, so min/max statistics cannot skip anything) of run r5.",
        f"Compaction of the 500-row layout into one file per run (64k-row groups): "
        f"{compaction:.0f} MB/s of Arrow data.",
    ]
    section = "\n".join(
        [
            "## Shard and row-group sizing (bench/shard_sizing.py)",
            "",
            f"Command (from the repository root): `{command_line()}`",
            "",
            *head,
            *(f"- {note}" for note in notes),
            "",
            table_md,
            "",
            text,
            "",
        ]
    )
    if not args.no_write:
        append_to_benchmarks(section + "\n")


if __name__ == "__main__":
    main()
