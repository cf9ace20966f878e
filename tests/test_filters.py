"""Sample filters: each keeps what it should, drops with a reason, and rejects bad options."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from distillery.generators.filters import FILTERS, KEEP, Verdict, build_filters, run_filters
from distillery.generators.filters.base import Filter

PROSE = """Bread rises because yeast ferments the sugars in the dough and releases carbon dioxide.

The gas is trapped by a network of gluten proteins, which stretch as the bubbles grow. Here is
what matters most when you bake at home:

- Knead long enough for the gluten to develop; the dough should feel smooth and elastic.
- Give the first rise time in a warm place, usually one to two hours.
- Shape gently so that you keep some of the gas, then let it rise a second time.

Finally, bake in a hot oven. Steam during the first minutes keeps the crust soft long enough
for the loaf to expand, and the crust browns later as the surface dries out."""

CODE = """```python
def area(shapes):
    total = 0
    for shape in shapes:
        if shape.kind == "circle":
            total += 3.14159 * shape.r ** 2
        else:
            total += shape.w * shape.h
    return total
```"""


def sample(text: str | None = "Hello there, this is an answer.", **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "response_text": text,
        "finish_reason": "stop",
        "finish_reason_raw": "stop",
        "teacher_model": "gpt-4o-mini",
    }
    row.update(fields)
    return row


def one(spec: dict[str, Any]) -> Filter[Any]:
    (built,) = build_filters([spec])
    return built


def test_every_filter_is_registered() -> None:
    expected = {"length", "truncated", "empty", "refusal", "repetition", "regex", "json"}
    assert set(FILTERS) == expected | {"language", "reasoning_length"}


def test_verdict() -> None:
    assert KEEP.keep and bool(KEEP) and KEEP.reason is None
    dropped = Verdict(False, "empty", "blank")
    assert not dropped and dropped.reason == "empty"


# ---------------------------------------------------------------- build_filters errors


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([{"type": "nope"}], r"filters\[0\]\.type: unknown filter 'nope' \(one of: empty, json,"),
        ([{"min_tokens": 3}], r"filters\[0\]: missing 'type'"),
        (["length"], r"filters\[0\]: expected a mapping"),
        (
            [{"type": "empty"}, {"type": "length", "min_tokns": 3}],
            r"filters\[1\] \(length\)\.min_tokns: Extra inputs are not permitted",
        ),
        (
            [{"type": "length", "min_tokens": "many"}],
            r"filters\[0\] \(length\)\.min_tokens: Input should be a valid integer",
        ),
        ([{"type": "length"}], r"filters\[0\] \(length\): Value error, set min_tokens"),
        (
            [{"type": "length", "min_tokens": 9, "max_tokens": 3}],
            r"min_tokens \(9\) > max_tokens \(3\)",
        ),
        ([{"type": "regex", "exclude": ["("]}], r"\(regex\)\.exclude: .*invalid regular"),
        ([{"type": "regex"}], r"set include, exclude or both"),
        ([{"type": "json", "schema": {"type": 12}}], r"\(json\)\.schema: .*not a valid JSON"),
        ([{"type": "language"}], r"\(language\)\.languages: Field required"),
        ([{"type": "refusal", "patterns": ["[a-"]}], r"\(refusal\)\.patterns"),
    ],
)
def test_build_filters_names_the_problem(specs: list[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_filters(specs)


def test_build_filters_keeps_order_and_options() -> None:
    built = build_filters([{"type": "empty"}, {"type": "length", "min_tokens": 2}])
    assert [f.name for f in built] == ["empty", "length"]
    assert built[1].options.min_tokens == 2


def test_run_filters_returns_the_first_drop_and_counts() -> None:
    filters = build_filters([{"type": "empty"}, {"type": "truncated"}, {"type": "refusal"}])
    assert run_filters(filters, sample("")).reason == "empty"
    assert run_filters(filters, sample("ok", finish_reason="length")).reason == "truncated"
    assert run_filters(filters, sample("A fine answer.")) == KEEP
    assert filters[0].stats == {"dropped_empty": 1, "kept": 2}
    assert filters[1].stats == {"dropped_truncated": 1, "kept": 1}
    assert filters[2].stats == {"kept": 1}


# ---------------------------------------------------------------- the filters


def test_length() -> None:
    f = one({"type": "length", "min_tokens": 3, "max_tokens": 8})
    assert f.check(sample("one two three four")) == KEEP
    short = f.check(sample("Hi"))
    assert (short.reason, short.detail) == ("too_short", "1 tokens < min_tokens 3")
    long = f.check(sample("one two three four five six seven eight nine ten"))
    assert long.reason == "too_long" and long.detail == "10 tokens > max_tokens 8"
    assert f.check(sample(None)).reason == "too_short"
    # A non-OpenAI model is counted with the o200k estimate rather than failing.
    assert f.check(sample("one two three four", teacher_model="claude-x")) == KEEP


def test_truncated() -> None:
    f = one({"type": "truncated"})
    assert f.check(sample()) == KEEP
    verdict = f.check(sample(finish_reason="length", finish_reason_raw="max_tokens"))
    assert (verdict.reason, verdict.detail) == ("truncated", "finish_reason=length (max_tokens)")
    custom = one({"type": "truncated", "finish_reasons": ["length", "other"]})
    assert custom.check(sample(finish_reason="other")).reason == "truncated"


@pytest.mark.parametrize("text", ["", "  \n\t ", None])
def test_empty_drops(text: str | None) -> None:
    verdict = one({"type": "empty"}).check(sample(text))
    assert (verdict.reason, verdict.detail) == ("empty", "response_text is blank")


def test_empty_keeps() -> None:
    assert one({"type": "empty"}).check(sample(" x ")) == KEEP


@pytest.mark.parametrize(
    "text",
    [
        "I can't help with that.",
        "I’m sorry, but I can’t assist with that request.",
        "I'm sorry, but I cannot provide instructions for that.",
        "As an AI language model, I cannot browse the internet.",
        "I must respectfully decline to write this.",
        "i am unable to comply with this request.",
    ],
)
def test_refusal_patterns_drop(text: str) -> None:
    verdict = one({"type": "refusal"}).check(sample(text))
    assert verdict.reason == "refusal"
    assert verdict.detail is not None and verdict.detail.startswith("matched ")


@pytest.mark.parametrize(
    "text",
    [
        PROSE,
        "I'm sorry to hear that your bread did not rise! Here is what usually goes wrong.",
        "You can't go wrong with a hot oven.",
        "x" * 500 + " Then the villain said: I can't help with that.",  # past scan_chars
    ],
)
def test_refusal_keeps(text: str) -> None:
    assert one({"type": "refusal"}).check(sample(text)) == KEEP


def test_refusal_provider_signal_and_custom_patterns() -> None:
    f = one({"type": "refusal"})
    verdict = f.check(sample("Here you go", finish_reason="refusal"))
    assert (verdict.reason, verdict.detail) == ("refusal", "finish_reason=refusal")
    assert f.check(sample("", finish_reason="content_filter")).reason == "refusal"
    german = one({"type": "refusal", "extra_patterns": [r"\bdabei kann ich nicht helfen"]})
    assert german.check(sample("Dabei kann ich nicht helfen.")).reason == "refusal"
    assert german.check(sample("I can't help with that.")).reason == "refusal"  # defaults kept
    replaced = one({"type": "refusal", "patterns": [r"\bnope\b"], "finish_reasons": []})
    assert replaced.check(sample("I can't help with that.")) == KEEP
    assert replaced.check(sample("Nope.", finish_reason="refusal")).reason == "refusal"


def test_repetition_drops_loops() -> None:
    f = one({"type": "repetition"})
    stutter = f.check(sample("the " * 60))
    assert stutter.reason == "repetition"
    assert stutter.detail is not None and stutter.detail.startswith("top_2_gram_char_frac")
    paragraph = "Yeast ferments sugar into gas, and gluten traps the gas so the dough rises."
    five = f.check(sample("\n\n".join([paragraph] * 5)))
    assert five.reason == "repetition"
    assert five.detail is not None and five.detail.startswith("dup_para_frac 0.80 > 0.3")
    looping = "I am a student. I am a student. I am a student. I am a student. " * 3
    assert f.check(sample(looping)).reason == "repetition"
    one_line = f.check(sample(" ".join([paragraph] * 4)))  # no newlines: the n-gram rules
    assert one_line.detail is not None and "gram_char_frac" in one_line.detail


@pytest.mark.parametrize("text", [PROSE, CODE, "Yes yes yes.", "42"])
def test_repetition_keeps_normal_text(text: str) -> None:
    assert one({"type": "repetition"}).check(sample(text)) == KEEP


def test_repetition_thresholds_are_options() -> None:
    strict = one({"type": "repetition", "top_n_grams": {2: 0.001}, "dup_n_grams": {}})
    assert strict.check(sample(PROSE)).detail is not None
    lenient = build_filters(
        [
            {
                "type": "repetition",
                "top_n_grams": {},
                "dup_n_grams": {},
                "dup_para_frac": None,
                "dup_para_char_frac": None,
                "dup_line_char_frac": None,
            }
        ]
    )[0]
    assert lenient.check(sample("the " * 60)) == KEEP


def test_regex() -> None:
    f = one({"type": "regex", "include": [r"\bbread\b", r"\byeast\b"], "exclude": [r"(?i)TODO"]})
    assert f.check(sample("bread is nice")) == KEEP
    miss = f.check(sample("cake is nice"))
    assert (miss.reason, miss.detail) == (
        "regex_not_included",
        r"no match for '\\bbread\\b', '\\byeast\\b'",
    )
    excluded = f.check(sample("bread, todo: finish"))
    assert (excluded.reason, excluded.detail) == ("regex_excluded", "matched exclude '(?i)TODO'")
    both = one({"type": "regex", "include": ["a", "b"], "include_mode": "all"})
    assert both.check(sample("ab")) == KEEP
    assert both.check(sample("a")).detail == "no match for 'b'"
    folded = one({"type": "regex", "exclude": ["secret"], "ignore_case": True, "field": "prompt"})
    assert folded.check(sample("fine", prompt="SECRET plan")).reason == "regex_excluded"


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}


def test_json_validity() -> None:
    f = one({"type": "json"})
    assert f.check(sample('{"a": [1, 2]}')) == KEEP
    assert f.check(sample('```json\n{"a": 1}\n```')) == KEEP
    broken = f.check(sample('{"a": 1,}'))
    assert broken.reason == "invalid_json"
    assert broken.detail is not None and broken.detail.startswith("line 1 column 9")
    assert f.check(sample("Sure! Here it is: {}")).reason == "invalid_json"
    raw = one({"type": "json", "strip_code_fence": False})
    assert raw.check(sample('```json\n{"a": 1}\n```')).reason == "invalid_json"


def test_json_schema() -> None:
    f = one({"type": "json", "schema": SCHEMA})
    assert f.check(sample(json.dumps({"name": "Ada", "age": 36}))) == KEEP
    missing = f.check(sample('{"name": "Ada"}'))
    assert (missing.reason, missing.detail) == (
        "schema_mismatch",
        "(root): 'age' is a required property",
    )
    wrong = f.check(sample('{"name": "Ada", "age": -1}'))
    assert wrong.detail == "age: -1 is less than the minimum of 0"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.usefixtures("no_network")
def test_language_offline() -> None:
    f = one({"type": "language", "languages": ["en", "FR"]})
    assert f.check(sample(PROSE)) == KEEP
    french = "Le pain lève parce que la levure fait fermenter les sucres de la pâte."
    assert f.check(sample(french)) == KEEP
    german = "Das Brot geht auf, weil die Hefe den Zucker im Teig vergärt und Gas bildet."
    verdict = f.check(sample(german))
    assert verdict.reason == "wrong_language"
    assert verdict.detail is not None and verdict.detail.startswith("de (")
    assert f.check(sample("Hallo!")) == KEEP  # too short to judge
    assert one({"type": "language", "languages": ["de"]}).check(sample(german)) == KEEP
