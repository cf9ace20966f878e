"""The recipes' pure parts: parsing, dedup of instructions, evolution choices, config errors."""

import re
from pathlib import Path

import pytest

from distillery.config import USER_TEMPLATE, load_config
from distillery.emulator import instructions as emulated
from distillery.errors import ConfigError
from distillery.generators.recipes.conversation import transcript
from distillery.generators.recipes.evol_instruct import (
    GIVEN_MARKER,
    choose_operation,
    clean_evolution,
    eliminated,
    evolution_request,
)
from distillery.generators.recipes.self_instruct import (
    LIST_MARKER,
    TEMPLATE,
    InstructionPool,
    instruction_id,
    parse_instructions,
)

from .test_config import BASE, write


def test_parse_numbered_list_with_preamble_and_continuations() -> None:
    text = """Sure! Here are new tasks:

1. Explain tides to a child.
2) Write a haiku about rust
   that mentions autumn.
3: Compare "two" sorting algorithms.
4. Plan a trip."""
    assert parse_instructions(text, 3) == [
        "Explain tides to a child.",
        "Write a haiku about rust that mentions autumn.",
        'Compare "two" sorting algorithms.',
    ]


def test_parse_json_fenced_bullets_and_nothing() -> None:
    assert parse_instructions('```json\n["a task", "another"]\n```', 5) == ["a task", "another"]
    assert parse_instructions('{"tasks": [{"instruction": "x y"}, "z"]}', 5) == ["x y", "z"]
    assert parse_instructions("- first\n* second\n\nnot an item", 5) == ["first", "second"]
    assert parse_instructions("no list at all", 5) == []


def test_instruction_pool_drops_exact_and_near_duplicates() -> None:
    pool = InstructionPool(threshold=0.7)
    assert pool.add("Explain how tides work, with an example.")
    assert not pool.add("explain  how TIDES work, with an example.")  # same after normalising
    assert not pool.add("Explain how tides work with one example.")  # word Jaccard 5/7 >= 0.7
    assert pool.add("Write a poem about volcanoes.")
    assert instruction_id("A  Task") == instruction_id("a task")
    assert instruction_id("a task") != instruction_id("another task")


def test_operations_are_chosen_by_hash_and_cover_the_list() -> None:
    operations = ["deepen", "constrain", "concretize", "reasoning", "breadth"]
    chosen = [choose_operation(f"p{i}", 1, operations) for i in range(200)]
    assert chosen == [choose_operation(f"p{i}", 1, operations) for i in range(200)]
    assert set(chosen) == set(operations)
    assert chosen != [choose_operation(f"p{i}", 2, operations) for i in range(200)]


def test_evolution_requests_and_elimination() -> None:
    request = evolution_request("Explain tides.", "constrain")
    assert "Add one more constraint" in request and "Explain tides." in request
    assert "#Created Prompt#" in evolution_request("Explain tides.", "breadth")
    assert clean_evolution('#Rewritten Prompt#: "Explain tides in 3 steps."') == (
        "Explain tides in 3 steps."
    )
    assert eliminated("", "a", "stop") == "empty"
    assert eliminated("Explain tides and more", "Explain tides.", "length") == "truncated"
    assert eliminated("explain  TIDES.", "Explain tides.", "stop") == "unchanged"
    assert eliminated("#Rewritten Prompt#: x", "y", "stop") == "copied_markers"
    assert eliminated("Explain tides in 3 steps.", "Explain tides.", "stop") is None


def test_emulator_answers_the_recipes_requests_in_their_shape() -> None:
    import jinja2

    examples = ["Explain tides to a child.", "Write a haiku about rust."]
    request = jinja2.Template(TEMPLATE).render(examples=examples, n=6)
    assert LIST_MARKER in request
    answer = emulated.task_list(b"key", request)
    assert answer is not None
    tasks = parse_instructions(answer, 10)
    assert len(tasks) == 6
    assert answer == emulated.task_list(b"key", request)  # deterministic
    assert emulated.task_list(b"key", "Explain tides.") is None

    rewrite = evolution_request("Explain tides to a child.", "deepen")
    assert GIVEN_MARKER == emulated.GIVEN_PROMPT and GIVEN_MARKER in rewrite
    evolved = [emulated.rewrite(str(i).encode(), rewrite) for i in range(40)]
    assert all(e is not None and e.startswith("Explain tides to a child.") for e in evolved)
    assert any(e != "Explain tides to a child." for e in evolved)


def test_transcript_names_the_speakers_and_skips_system() -> None:
    text = transcript(
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ]
    )
    assert text == "User: hi\n\nAssistant: hello"
    assert "{{ transcript }}" in USER_TEMPLATE


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ("{type: conversation, turns: 0}", r"recipe\.turns: Input should be greater than"),
        ("{type: conversation, tunrs: 2}", r"recipe\.tunrs: unknown field"),
        ("{type: conversation, user_teacher: zz}", r"recipe\.user_teacher: 'zz' is not"),
        ("{type: self_instruct, generator: zz}", r"recipe\.generator: 'zz' is not"),
        ("{type: evol_instruct, operations: [deepen, harder]}", r"unknown operation 'harder'"),
        ("{type: evol_instruct, generations: 0}", r"recipe\.generations: Input should be"),
        ("{type: evolve}", r"recipe: Input tag 'evolve' found using 'type' does not match"),
        (
            "{type: self_instruct}\nresponse_schema: {type: object}",
            r"recipe: self_instruct cannot be combined with response_schema",
        ),
        (
            "{type: conversation}\ntask_runner: {type: dask}",
            r"recipe: conversation runs on task_runner thread only",
        ),
    ],
)
def test_bad_recipe_is_one_line_naming_the_field(tmp_path: Path, recipe: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        load_config(write(tmp_path, BASE + f"recipe: {recipe}\n"))
    assert "\n" not in str(error.value)


def test_default_is_no_recipe_and_a_recipe_validates(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, BASE)).recipe is None
    job = load_config(write(tmp_path, BASE + "recipe: {type: evol_instruct, evolver: a}\n"))
    assert job.recipe is not None and job.recipe.type == "evol_instruct"
    assert re.fullmatch(r"[0-9a-f]{16}", job.config_hash())


def test_stage_reader_sees_kept_and_dedup_removed_rows_of_one_stage(tmp_path: Path) -> None:
    from distillery.generators.recipes import stage_reader
    from distillery.storage.location import as_location
    from distillery.storage.shards import write_shard

    def row(sample_id: str, stage: str | None, **extra: str) -> dict[str, object]:
        return {
            "sample_id": sample_id,
            "run_id": "r",
            "prompt_id": f"p-{sample_id}",
            "sample_index": 0,
            "teacher_name": "t",
            "teacher_provider": "openai",
            "teacher_model": "m",
            "stage": stage,
            "generation": 1,
            "response_text": sample_id,
            **extra,
        }

    output = as_location(tmp_path)
    write_shard(output, "samples", "r", [row("b", "evolve"), row("a", "answer"), row("c", None)], 0)
    rejected = [
        row("d", "evolve", filter="dedup", reason="near_duplicate"),
        row("e", "evolve", filter="empty", reason="empty"),
    ]
    write_shard(output, "rejected", "r", rejected, 0)
    read = stage_reader(output, "r")
    assert [r["sample_id"] for r in read("evolve")] == ["b", "d"]
    assert [r["sample_id"] for r in read("answer")] == ["a"]
    assert read("instructions") == []
    assert stage_reader(output, "other-run")("evolve") == []


def test_plan_note_says_what_each_recipe_adds(tmp_path: Path) -> None:
    from distillery.generators.recipes import plan_note

    notes = {
        recipe: plan_note(load_config(write(tmp_path, BASE + f"recipe: {recipe}\n")), 10)
        for recipe in (
            "{type: conversation, turns: 3}",
            "{type: self_instruct, seeds_per_request: 3, instructions_per_request: 5}",
            "{type: evol_instruct, generations: 2}",
        )
    }
    assert [note.split(":")[0] for note in notes.values() if note] == [
        "recipe conversation",
        "recipe self_instruct",
        "recipe evol_instruct",
    ]
    conversation, self_instruct, evol = notes.values()
    assert conversation is not None and "5 requests" in conversation
    assert self_instruct is not None and "4 instruction requests for up to 20" in self_instruct
    assert evol is not None and "2 generation(s) of up to 10" in evol
    assert plan_note(load_config(write(tmp_path, BASE)), 10) is None
