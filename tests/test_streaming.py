"""A run streams its prompts: read, planned and batched a bounded chunk at a time.

What these pin down is the part a memory benchmark (``bench/run_memory.py``) cannot: that the
compact structures answer exactly as the lists and sets they replace, and that the plan is
pulled lazily.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillery.config import JobConfig, PromptsConfig
from distillery.errors import UserInputError
from distillery.flows.generate import StagePlan, _in_flight
from distillery.generators import prompts as prompts_module
from distillery.generators.batch import WorkItem
from distillery.generators.curation.apply import build_curator
from distillery.generators.prompts import Prompt, PromptSource, check_prompts, iter_prompts
from distillery.generators.recipes import Stage
from distillery.generators.routing import Router
from distillery.storage.done_ids import DoneIds
from distillery.storage.location import as_location
from distillery.storage.schema import TABLES
from distillery.storage.shards import write_shard


def _jsonl(path: Path, records: Sequence[Mapping[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def small_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fold the recent ids into the sorted array every 3 prompts, so both halves are used."""
    monkeypatch.setattr(prompts_module._SeenIds, "_FOLD", 3)


@pytest.mark.usefixtures("small_fold")
def test_repeats_are_skipped_and_reused_ids_refused_after_a_fold(tmp_path: Path) -> None:
    records: list[dict[str, object]] = [{"id": f"p{i}", "prompt": f"q{i}"} for i in range(10)]
    records.insert(8, {"id": "p1", "prompt": "q1"})  # p1 was folded in long before
    records.insert(9, {"prompt": "q4"})  # no id: its id is its messages' hash, new
    path = _jsonl(tmp_path / "p.jsonl", records)
    ids = [p.prompt_id for p in iter_prompts(PromptsConfig(path=path))]
    assert ids[:8] == [f"p{i}" for i in range(8)]
    assert ids[-2:] == ["p8", "p9"] and len(ids) == 11 and ids.count("p1") == 1

    records.append({"id": "p2", "prompt": "not q2"})
    _jsonl(path, records)
    with pytest.raises(UserInputError, match=r"p\.jsonl:13: id 'p2' already used at .*p\.jsonl:3$"):
        list(iter_prompts(PromptsConfig(path=path)))


@pytest.mark.usefixtures("small_fold")
def test_limit_counts_distinct_prompts(tmp_path: Path) -> None:
    records = [{"id": f"p{i % 4}", "prompt": f"q{i % 4}"} for i in range(12)]
    records += [{"id": f"p{i}", "prompt": f"q{i}"} for i in range(4, 9)]
    path = _jsonl(tmp_path / "p.jsonl", records)
    limited = [p.prompt_id for p in iter_prompts(PromptsConfig(path=path, limit=6))]
    assert limited == ["p0", "p1", "p2", "p3", "p4", "p5"]
    assert check_prompts(PromptsConfig(path=path)) == 9


def test_a_source_reads_again_and_counts(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(5)])
    source = PromptSource(PromptsConfig(path=path))
    source.check_start()
    assert source.counted == 0  # only the start was read
    first = [p.prompt_id for p in source]
    assert first == [p.prompt_id for p in source] and source.counted == 5


def test_parquet_is_read_in_batches_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prompts_module, "PARQUET_BATCH_ROWS", 2)
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": [f"q{i}" for i in range(5)] + [""]}), path)
    with pytest.raises(UserInputError, match=r"p\.parquet row 5: needs a non-empty 'prompt'"):
        list(iter_prompts(PromptsConfig(path=path)))
    pq.write_table(pa.table({"prompt": [f"q{i}" for i in range(5)]}), path)
    assert [p.text for p in iter_prompts(PromptsConfig(path=path))] == [f"q{i}" for i in range(5)]


def _rows(table: str, run_id: str, ids: list[str]) -> list[dict[str, object]]:
    """Rows with only the columns a shard requires, the required strings all "x"."""
    required = {f.name: 0 if pa.types.is_integer(f.type) else "x" for f in TABLES[table]}
    required = {
        name: value for name, value in required.items() if not TABLES[table].field(name).nullable
    }
    return [{**required, "sample_id": sample_id, "run_id": run_id} for sample_id in ids]


def test_done_ids_hold_what_samples_and_rejected_committed(tmp_path: Path) -> None:
    output = as_location(tmp_path / "out")
    assert len(DoneIds.of_run(output, "r1")) == 0 and "a" * 32 not in DoneIds.of_run(output, "r1")
    ids = [f"{i:032x}" for i in range(0, 40, 3)]
    write_shard(output, "samples", "r1", _rows("samples", "r1", ids[:5]), 0)
    write_shard(output, "samples", "r1", _rows("samples", "r1", ids[5:9]), 1)
    write_shard(output, "rejected", "r1", _rows("rejected", "r1", ids[8:]), 0)
    write_shard(output, "failures", "r1", _rows("failures", "r1", ["f" * 32]), 0)
    write_shard(output, "samples", "r2", _rows("samples", "r2", ["e" * 32]), 0)
    done = DoneIds.of_run(output, "r1")
    assert len(done) == len(ids)  # the id in both samples and rejected counts once
    assert all(i in done for i in ids)
    others = [f"{i:032x}" for i in range(1, 40, 3)] + ["f" * 32, "e" * 32, "0" * 33, "", "0"]
    assert not any(i in done for i in others)


def _job(tmp_path: Path) -> JobConfig:
    return JobConfig.model_validate(
        {
            "name": "s",
            "prompts": {"path": str(_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}]))},
            "teachers": [
                {"name": "a", "provider": "openai", "model": "m", "base_url": "http://x/v1"},
                {"name": "b", "provider": "openai", "model": "m", "base_url": "http://x/v1"},
            ],
            "output": str(tmp_path / "out"),
        }
    )


def test_a_stage_plan_counts_then_batches_lazily(tmp_path: Path) -> None:
    job = _job(tmp_path)
    reads: list[int] = []

    class Counted:
        """Prompts made on demand, noting how far each read got."""

        def __iter__(self) -> Iterator[Prompt]:
            reads.append(0)
            for i in range(7):
                reads[-1] = i + 1
                yield Prompt(f"p{i}", [{"role": "user", "content": f"q{i}"}])

    router = Router(job)
    done = {WorkItem(Prompt("p1", []), router.asked(t, 0)).sample_id for t in job.teachers}
    done.add(WorkItem(Prompt("p2", []), router.asked(job.teachers[0], 0)).sample_id)
    plan = StagePlan.count(Stage("answer", Counted(), router), build_curator(job.curation), done)
    assert (plan.prompts, plan.planned, plan.skipped) == (7, 11, 3)
    batches = plan.batches(batch_size=2)
    first = next(batches)
    assert [(i.prompt.prompt_id, i.teacher.name) for i in first] == [
        ("p0", "a"),
        ("p0", "b"),
        ("p2", "b"),
    ]
    assert reads == [7, 3]  # the count read everything; sending has read only what it sent
    assert [len(b) for b in batches] == [4, 4]


def test_in_flight_is_bounded_and_pulls_batches_as_places_free() -> None:
    pulled: list[int] = []
    running: list[int] = []
    peak: list[int] = []
    ended: list[int] = []

    def batches() -> Iterator[list[WorkItem]]:
        for index in range(10):
            pulled.append(index)
            yield []

    async def one(index: int, items: list[WorkItem]) -> None:
        running.append(index)
        peak.append(len(running))
        # Built only as places free: the ones running or ended, and the one waiting.
        assert len(pulled) <= len(ended) + 3 + 1
        await asyncio.sleep(0.001 * (index % 3))
        running.remove(index)
        ended.append(index)

    asyncio.run(_in_flight(batches(), 3, one, lambda: False))
    assert max(peak) == 3 and len(pulled) == 10

    started: list[int] = []

    async def until_four(index: int, items: list[WorkItem]) -> None:
        started.append(index)
        await asyncio.sleep(0)

    asyncio.run(_in_flight(batches(), 2, until_four, lambda: len(started) >= 4))
    assert started == [0, 1, 2, 3]
