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

from distillery.emulator import RunningEmulator
from distillery.errors import UserInputError
from distillery.storage.catalog import open_catalog
from distillery.storage.failpoints import ENV, KILLED
from distillery.storage.release.splits import FAMILY_KEY_SQL, parse_splits, split_of
from distillery.storage.shards import write_shard

from .conftest import write_job
from .test_cli import cli as distillery
from .test_cli import one_error_line as single_line
from .test_storage import sample

PNG = b"\x89PNG\r\n\x1a\n"
SPLITS = {"train": 0.8, "validation": 0.2}
T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)


def row(sample_id: str, prompt_id: str, teacher: str = "smol", **extra: Any) -> dict[str, Any]:
    """A sample as the flow writes it, with a teacher, its terms tag and some usage."""
    models = {
        "smol": ("local", "SmolLM2-135M", "apache-2.0"),
        "gpt": ("openai", "gpt-4o", "openai-no-competing-models"),
        "anon": ("openai", "mystery-model", ""),
    }
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


def build(root: Path, prompts: int = 40, others: bool = False) -> Path:
    """A dataset: plain prompts answered twice, a conversation, an evol-instruct family, a
    self-instruct family, rejected rows, and the run's record."""
    rows = [
        row(
            f"s{i}-{k}",
            f"p{i}",
            sample_index=k,
            reasoning_text="think " * (i + 1) if k else None,
            reasoning_visibility="full" if k else None,
        )
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
        row(
            "conv",
            "c1",
            recipe="conversation",
            conversation=conversation,
            messages=conversation[:1],
            response_text="last answer",
        )
    )
    evol = dict(recipe="evol_instruct")
    rows += [
        row("e-seed", "q7", **evol, stage="answer", generation=0),
        row("e-evolve1", "evolve/q7>deepen", **evol, stage="evolve", generation=1),
        row(
            "e-answer1",
            "q7>deepen",
            **evol,
            stage="answer",
            generation=1,
            parent_sample_id="e-evolve1",
        ),
        row(
            "e-evolve2",
            "evolve/q7>deepen>constrain",
            **evol,
            stage="evolve",
            generation=2,
            parent_sample_id="e-evolve1",
        ),
        row(
            "e-answer2",
            "q7>deepen>constrain",
            **evol,
            stage="answer",
            generation=2,
            parent_sample_id="e-evolve2",
        ),
    ]
    selfi = dict(recipe="self_instruct")
    rows += [
        row("i-list", "self-instruct/r1/abc", **selfi, stage="instructions"),
        row("i-a", "inst-a", **selfi, stage="answer", parent_sample_id="i-list"),
        row("i-b", "inst-b", **selfi, stage="answer", parent_sample_id="i-list"),
    ]
    if others:
        rows += [row(f"g{i}", f"p{i}", "gpt", sample_index=5) for i in range(3)]
        rows += [row("anon1", "p0", "anon", sample_index=6)]
    write_shard(root, "samples", "r1", rows, 0)
    rejected = [
        {**row(f"x{i}", f"p{i}"), "filter": "length", "reason": "too_short"} for i in range(3)
    ] + [{**row("d1", "p1"), "filter": "dedup", "reason": "exact_duplicate"}]
    write_shard(root, "rejected", "r1", rejected, 0)
    job = {"curation": {"filters": [{"type": "language", "languages": ["en"]}]}}
    run = {
        "run_id": "r1",
        "invocation_id": "i1",
        "dataset": "demo",
        "config_hash": "cfg1",
        "started_at": T0 - timedelta(hours=1),
        "ended_at": T0,
        "status": "done",
        "distillery_version": "0.1.0",
        "job_shape": json.dumps(job),
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
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
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


# --- the export -----------------------------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return distillery("export", "--format", "hf", *args, env=env)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    line = single_line(result)
    assert result.returncode == 2, result.stderr
    return line


def query(sql: str) -> list[tuple[Any, ...]]:
    """A query as any DuckDB user runs it on the folder (no distillery catalog)."""
    return duckdb.connect().execute(sql).fetchall()


def card_header(folder: Path) -> dict[str, Any]:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    assert isinstance(header, dict)
    return header


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("dataset"), prompts=60, others=True)


def test_export_loads_with_datasets_and_duckdb(dataset: Path, tmp_path: Path) -> None:
    """The folder as users read it: ``load_dataset`` finds the splits from the card, DuckDB
    reads the shards, no prompt family straddles two splits, the card names every teacher."""
    import datasets  # type: ignore[import-untyped]

    from distillery.storage.release.hf import HfOptions, export_hf

    folder = tmp_path / "release"
    options = HfOptions(
        use="research",
        splits=SPLITS,
        reasoning="field",
        reasoning_key="thinking",
        accept=frozenset({"unknown"}),
        shard_rows=30,
    )
    result = export_hf(dataset, folder, options)
    # 60 prompts answered twice, 1 with a trace each; plus gpt, conversation, evol and self-
    # instruct answers with no trace: only the traced rows are exported.
    assert sum(result.written.rows.values()) == 60
    assert result.skipped["none"] > 0
    files = sorted(p.name for p in (folder / "data").iterdir())
    assert "train-00000-of-00002.parquet" in files and "train-00001-of-00002.parquet" in files
    assert not list(tmp_path.glob(".release.*"))

    loaded = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "hf-cache"))
    assert set(loaded) == {"train", "validation"}
    assert sum(loaded[name].num_rows for name in loaded) == 60
    first = loaded["train"][0]
    assert first["messages"][-1]["role"] == "assistant"
    assert first["messages"][-1]["thinking"].startswith("think")
    assert first["messages"][0]["thinking"] is None

    con = open_catalog(dataset)
    families = dict(con.execute(f"SELECT sample_id, {FAMILY_KEY_SQL} FROM samples").fetchall())
    split_of_family: dict[str, set[str]] = {}
    for split in ("train", "validation"):
        ids = query(f"SELECT sample_id FROM '{folder}/data/{split}-*.parquet'")
        for (sample_id,) in ids:
            split_of_family.setdefault(families[sample_id], set()).add(split)
    assert all(len(splits) == 1 for splits in split_of_family.values())

    header = card_header(folder)
    assert header["configs"][0]["data_files"] == [
        {"split": "train", "path": "data/train-*"},
        {"split": "validation", "path": "data/validation-*"},
    ]
    assert header["license"] == "apache-2.0"
    assert header["language"] == ["en"]
    assert header["size_categories"] == ["n<1K"]
    assert header["tags"] == ["synthetic", "distillation"]
    assert [t["name"] for t in header["distillery"]["teachers"]] == ["smol"]
    for png in ("response_length", "teachers", "rejections", "reasoning_length"):
        assert (folder / "plots" / f"{png}.png").read_bytes().startswith(PNG)
        assert f"(plots/{png}.png)" in (folder / "README.md").read_text()


def test_card_tells_terms_gate_and_decontamination(dataset: Path, tmp_path: Path) -> None:
    """Every teacher, accepted and excluded tags, obligations, rejections and the rows an
    evaluation set removed, listed in a table DuckDB reads."""
    from distillery.storage.release.decontam import parse_eval_set
    from distillery.storage.release.hf import HfOptions, export_hf

    evals = tmp_path / "bench.jsonl"
    # Shares a 5-word n-gram ("p5 by smol s5 0") with one answer only.
    leaked = "p5 by smol s5-0 and then some words to make it long"
    evals.write_text(json.dumps({"question": leaked}) + "\n" + json.dumps({"question": "x"}))
    folder = tmp_path / "release"
    options = HfOptions(
        use="competing-model",
        splits={"train": 1.0},
        accept=frozenset({"unknown"}),
        exclude_restricted=True,
        eval_sets=[parse_eval_set(f"bench={evals}:question")],
        ngram=5,
        today=date(2026, 12, 3),
        terms_max_age_days=3,
    )
    result = export_hf(dataset, folder, options)
    assert [g.tag for g in result.gate.excluded] == ["openai-no-competing-models"]
    assert result.written.decontaminated == Counter({"bench": 1})
    listed = query(f"SELECT sample_id, eval_set, side FROM '{folder}/decontamination.parquet'")
    assert listed == [("s5-0", "bench", "answer")]
    header = card_header(folder)
    names = {t["name"] for t in header["distillery"]["teachers"]}
    assert names == {"smol", "anon"}
    assert header["license"] == "other" and header["license_name"] == "mixed-teacher-terms"
    card = (folder / "README.md").read_text()
    assert "accepted by the exporter on 2026-12-03" in card
    assert "| gpt | gpt-4o | openai-no-competing-models | 3 |" in card
    assert "| bench | `bench.jsonl` | question | 2 (1 too short to match) | 1 |" in card
    # Reviewed 4 days before "today", more than the 3 allowed; apache-2.0 on the day.
    assert "openai-no-competing-models" in result.gate.stale
    assert "apache-2.0" not in result.gate.stale
    assert f"**Stale terms entries**: {', '.join(result.gate.stale)}" in card
    assert "| length | too_short | 3 |" in card and "| dedup | exact_duplicate | 1 |" in card
    assert "Reasoning length per teacher*: not drawn" in card
    count = query(f"SELECT count(*) FROM '{folder}/data/*.parquet'")[0][0]
    # 60 prompts x 2 smol samples, 1 anon, conversation, 3 evol and 2 self-instruct answers,
    # minus the decontaminated one; gpt's 3 rows excluded by their terms.
    assert count == 120 + 1 + 1 + 3 + 2 - 1
    conversation = query(
        f"SELECT messages FROM '{folder}/data/*.parquet' WHERE sample_id = 'conv'"
    )[0][0]
    assert [m["content"] for m in conversation][-2:] == ["and then?", "last answer"]


def test_gate_refusal_is_a_table_and_exit_2(dataset: Path, tmp_path: Path) -> None:
    folder = tmp_path / "release"
    result = cli("--data", str(dataset), "-o", str(folder), "--use", "competing-model")
    assert result.returncode == 2, result.stderr
    assert "openai-no-competing-models" in result.stderr and "gpt-4o" in result.stderr
    assert "unknown" in result.stderr and "--exclude-restricted" in result.stderr
    assert "Traceback" not in result.stderr
    assert not folder.exists() and not list(tmp_path.iterdir())


def test_bad_input_is_one_line_and_writes_nothing(dataset: Path, tmp_path: Path) -> None:
    folder = tmp_path / "release"
    data = ["--data", str(dataset), "-o", str(folder)]
    assert "needs --use" in one_error_line(cli(*data))
    assert "--use 'sharing': not an intended use" in one_error_line(cli(*data, "--use", "sharing"))
    research = [*data, "--use", "research"]
    bad_split = one_error_line(cli(*research, "--split", "train=0.9,test=0.2"))
    assert "sum to 1.1, not 1" in bad_split
    bad_where = one_error_line(cli(*research, "--where", "colour = 'blue'"))
    assert "--where \"colour = 'blue'\"" in bad_where and "colour" in bad_where
    missing = tmp_path / "nope.jsonl"
    unreadable = one_error_line(cli(*research, "--decontaminate", f"{missing}:question"))
    assert str(missing) in unreadable
    assert not folder.exists()
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    full = one_error_line(cli(*research, "--accept-terms", "unknown", "--exclude-restricted"))
    assert "not empty (add --overwrite" in full
    assert (folder / "keep.txt").read_text() == "mine"
    chat = subprocess.run(
        [
            sys.executable,
            "-m",
            "distillery",
            "export",
            "-o",
            str(tmp_path / "x.jsonl"),
            "--data",
            str(dataset),
            "--use",
            "research",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "--use: only for --format hf" in one_error_line(chat)


def test_a_killed_export_leaves_no_folder_and_overwrite_replaces(
    dataset: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "release"
    args = [
        "--data",
        str(dataset),
        "-o",
        str(folder),
        "--use",
        "internal",
        "--accept-terms",
        "unknown",
    ]
    killed = cli(*args, env={ENV: "export-hf:before-publish"})
    assert killed.returncode == KILLED, killed.stderr
    assert not folder.exists()
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and not list(tmp_path.glob(".release.*"))
    before = card_header(folder)["distillery"]["exported_at"]
    # Killed between moving the old release aside and renaming the new one in: the next
    # export puts the old one back, then replaces it.
    killed = cli(*args, "--overwrite", env={ENV: "export-hf:swapped-out"})
    assert killed.returncode == KILLED and not folder.exists()
    again = cli(*args, "--overwrite", "--split", "train=0.5,test=0.5")
    assert again.returncode == 0, again.stderr
    assert sorted(p.name.split("-")[0] for p in (folder / "data").iterdir()) == ["test", "train"]
    assert card_header(folder)["distillery"]["exported_at"] >= before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]


@pytest.mark.slow
def test_an_evol_instruct_run_exports_without_family_leaks(
    prefect_api: str, emulator: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows a real run wrote: following ``parent_sample_id`` from any exported answer back to
    its seed, every seed's family sits in one split (the split key never walks that chain)."""
    import asyncio

    import datasets

    from distillery.config import load_config
    from distillery.flows.generate import generate
    from distillery.storage.release.hf import HfOptions, export_hf

    monkeypatch.setenv("EMULATOR_API_KEY", "test-key-123")
    recipe = (
        "recipe: {type: evol_instruct, generations: 2, evolver: t1, answer_seeds: true,\n"
        "         operations: [deepen, constrain, concretize]}\n"
    )
    job = load_config(write_job(tmp_path, emulator.url, prompts=16, teachers=2, extra=recipe))
    assert asyncio.run(generate(job=job, run_id="evol")).failures == 0
    folder = tmp_path / "release"
    split = {"train": 0.5, "validation": 0.5}
    result = export_hf(job.output, folder, HfOptions(use="research", splits=split))
    assert min(result.written.rows.values()) > 0

    con = open_catalog(job.output)
    seed_of: dict[str, str] = {}
    rows = con.execute(
        "SELECT sample_id, stage, prompt_id, parent_sample_id, "
        "recipe_meta->>'parent_prompt_id' FROM samples"
    ).fetchall()
    by_id = {r[0]: r for r in rows}
    for sample_id, stage, prompt_id, parent, _ in rows:
        if stage != "answer":
            continue
        while parent is not None:  # up the evolve rows to the first generation's
            _, _, _, grand, seed = by_id[parent]
            prompt_id, parent = seed, grand
        seed_of[sample_id] = prompt_id
    splits_of_seed: dict[str, set[str]] = {}
    loaded = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "hf-cache"))
    for name in loaded:
        for sample_id in loaded[name]["sample_id"]:
            splits_of_seed.setdefault(seed_of[sample_id], set()).add(name)
    assert len(splits_of_seed) == 16
    assert all(len(names) == 1 for names in splits_of_seed.values())
    assert {n for names in splits_of_seed.values() for n in names} == {"train", "validation"}
    header = card_header(folder)
    assert {t["name"] for t in header["distillery"]["teachers"]} == {"t0", "t1"}
    assert header["distillery"]["runs"][0]["run_id"] == "evol"


def test_a_jobs_own_terms_file_decides_its_tags(tmp_path: Path) -> None:
    """A tag the job's ``terms_file:`` defines is unknown to the shipped registry: restricted
    unless the export is given that file, whose entries then decide it."""
    root = tmp_path / "data"
    rows = [row(f"h{i}", f"p{i}", usage_terms="house-terms") for i in range(5)]
    write_shard(root, "samples", "r1", rows, 0)
    refused = cli("--data", str(root), "-o", str(tmp_path / "a"), "--use", "research")
    assert refused.returncode == 2 and "house-terms" in refused.stderr, refused.stderr
    terms = tmp_path / "terms.yaml"
    terms.write_text(
        "- tag: house-terms\n  provider: '*'\n  model: '*'\n  summary: Our own model.\n"
        "  url: https://example.com/terms\n  reviewed: 2026-12-01\n  permits: [research]\n"
        "  obligations: [Cite the house model.]\n"
    )
    folder = tmp_path / "b"
    done = cli(
        "--data", str(root), "-o", str(folder), "--use", "research", "--terms-file", str(terms)
    )
    assert done.returncode == 0, done.stderr
    card = (folder / "README.md").read_text()
    assert "house-terms" in card and "Cite the house model." in card
    commercial = cli(
        "--data",
        str(root),
        "-o",
        str(tmp_path / "c"),
        "--use",
        "commercial",
        "--terms-file",
        str(terms),
    )
    assert commercial.returncode == 2 and "house-terms" in commercial.stderr


def test_decontamination_that_leaves_nothing_is_one_line_and_no_folder(tmp_path: Path) -> None:
    root = build(tmp_path / "data", prompts=3)
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"q": "answer to the last answer"}) + "\n")
    folder = tmp_path / "release"
    result = cli(
        "--data",
        str(root),
        "-o",
        str(folder),
        "--use",
        "research",
        "--decontaminate",
        f"{evals}:q",
        "--ngram",
        "2",
    )
    line = one_error_line(result)
    assert "nothing to release" in line and "--decontaminate" in line
    assert not list(tmp_path.glob("*release*")) and not list(tmp_path.glob(".release*"))
