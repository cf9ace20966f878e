"""``distillery export --format hf``: a folder the ``datasets`` library and DuckDB read, split
by family without leaks, with a card that states where every row came from, or no folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from distillery.errors import UserInputError
from distillery.storage.catalog import open_catalog
from distillery.storage.failpoints import ENV, KILLED
from distillery.storage.release.splits import FAMILY_KEY_SQL, parse_splits, split_of
from distillery.storage.shards import write_shard

from .test_storage import sample

PNG = b"\x89PNG\r\n\x1a\n"
SPLITS = {"train": 0.8, "validation": 0.2}
T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)


def row(sample_id: str, prompt_id: str, teacher: str = "smol", **extra: Any) -> dict[str, Any]:
    """A sample as the flow writes it, with a teacher, its terms tag and some usage."""
    models = {"smol": ("local", "SmolLM2-135M", "apache-2.0"), "gpt": ("openai", "gpt-4o", "")}
    provider, model, tag = models[teacher]
    base = sample(sample_id)
    base.update(
        prompt_id=prompt_id,
        messages=[{"role": "user", "content": f"question {prompt_id}"}],
        response_text=f"answer to {prompt_id} by {teacher} ({sample_id})",
        teacher_name=teacher,
        teacher_provider=provider,
        teacher_model=model,
        teacher_model_version=f"{model}-v1",
        usage_terms=tag,
        cost_usd=0.001,
        created_at=T0,
        config_hash="cfg1",
    )
    base.update(extra)
    return base


def build(root: Path, prompts: int = 40, gpt: bool = False) -> Path:
    """A dataset: plain prompts answered twice, a conversation, an evol-instruct family, a
    self-instruct family, rejected rows, and the run's record."""
    rows = [
        row(f"s{i}-{k}", f"p{i}", sample_index=k, reasoning_text="think " * (i + 1) if k else None,
            reasoning_visibility="full" if k else None)
        for i in range(prompts)
        for k in range(2)
    ]
    conversation = [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "and then?"},
        {"role": "assistant", "content": "last answer"},
    ]
    rows.append(
        row("conv", "c1", recipe="conversation", conversation=conversation,
            messages=conversation[:1], response_text="last answer")
    )
    evol = dict(recipe="evol_instruct")
    rows += [
        row("e-seed", "q7", **evol, stage="answer", generation=0),
        row("e-evolve1", "evolve/q7>deepen", **evol, stage="evolve", generation=1),
        row("e-answer1", "q7>deepen", **evol, stage="answer", generation=1,
            parent_sample_id="e-evolve1"),
        row("e-evolve2", "evolve/q7>deepen>constrain", **evol, stage="evolve", generation=2,
            parent_sample_id="e-evolve1"),
        row("e-answer2", "q7>deepen>constrain", **evol, stage="answer", generation=2,
            parent_sample_id="e-evolve2"),
    ]
    selfi = dict(recipe="self_instruct")
    rows += [
        row("i-list", "self-instruct/r1/abc", **selfi, stage="instructions"),
        row("i-a", "inst-a", **selfi, stage="answer", parent_sample_id="i-list"),
        row("i-b", "inst-b", **selfi, stage="answer", parent_sample_id="i-list"),
    ]
    if gpt:
        rows += [row(f"g{i}", f"p{i}", "gpt") for i in range(3)]
    write_shard(root, "samples", "r1", rows, 0)
    rejected = [
        {**row(f"x{i}", f"p{i}"), "filter": "length", "reason": "too_short"} for i in range(3)
    ] + [{**row("d1", "p1"), "filter": "dedup", "reason": "exact_duplicate"}]
    write_shard(root, "rejected", "r1", rejected, 0)
    job = {"curation": {"filters": [{"type": "language", "languages": ["en"]}]}}
    run = {
        "run_id": "r1", "invocation_id": "i1", "dataset": "demo", "config_hash": "cfg1",
        "started_at": T0 - timedelta(hours=1), "ended_at": T0, "status": "done",
        "distillery_version": "0.1.0", "job_shape": json.dumps(job),
    }
    write_shard(root, "runs", "r1", [run], 0)
    return root


# --- splits -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("train=0.9,validation=0.2", "sum to 1.1, not 1"),
        ("train", "is not NAME=SHARE"),
        ("train=x,test=1", "is not a number"),
        ("train=0.5,train=0.5", "named twice"),
        ("train=1.5,test=-0.5", "not in (0, 1]"),
        ("tr/ain=1", "is not NAME=SHARE"),
    ],
)
def test_bad_splits_are_one_line(spec: str, message: str) -> None:
    with pytest.raises(UserInputError) as caught:
        parse_splits(spec)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_split_shares_are_close_and_stable() -> None:
    splits = parse_splits("train=0.98,validation=0.02")
    assert splits == {"train": 0.98, "validation": 0.02}
    keys = [f"prompt:{i}" for i in range(10_000)]
    counts = Counter(split_of(key, splits) for key in keys)
    assert abs(counts["validation"] / 10_000 - 0.02) < 0.01
    assert abs(counts["train"] / 10_000 - 0.98) < 0.01
    three = parse_splits("train=0.5,validation=0.25,test=0.25")
    counts = Counter(split_of(key, three) for key in keys)
    assert all(abs(counts[name] / 10_000 - share) < 0.01 for name, share in three.items())
    # A hash, not a process's state: the same answer in another interpreter.
    code = (
        "from distillery.storage.release.splits import split_of;"
        "print(''.join(split_of(f'prompt:{i}', {'a': 0.5, 'b': 0.5}) for i in range(64)))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    ).stdout.strip()
    assert other == "".join(split_of(f"prompt:{i}", {"a": 0.5, "b": 0.5}) for i in range(64))


def test_recipe_families_share_a_key(tmp_path: Path) -> None:
    con = open_catalog(build(tmp_path))
    keys = dict(con.execute(f"SELECT sample_id, {FAMILY_KEY_SQL} FROM samples").fetchall())
    # Every sample of a prompt, every generation of an evol-instruct seed, the siblings of
    # a self-instruct request: one key each.
    assert keys["s3-0"] == keys["s3-1"] == "prompt:p3"
    evol = {keys[s] for s in ("e-seed", "e-evolve1", "e-answer1", "e-evolve2", "e-answer2")}
    assert evol == {"evol:q7"}
    assert keys["i-a"] == keys["i-b"] == "self-instruct:i-list"
    assert keys["conv"] == "prompt:c1"
    assert len({keys["s1-0"], keys["s2-0"], keys["conv"], keys["e-seed"]}) == 4
