from datetime import date, timedelta
from pathlib import Path

import pytest

from distillery.errors import ConfigError, UserInputError
from distillery.generators.terms import USES, TermsEntry, Use, entry_for_tag, load_terms
from distillery.storage.catalog import open_catalog
from distillery.storage.release.terms_gate import (
    GateDecision,
    TagRows,
    decide,
    refusal_table,
    tag_rows,
)
from distillery.storage.shards import write_shard
from tests.test_storage import sample

TODAY = date(2026, 12, 3)
SHIPPED = load_terms()


def gate(
    groups: list[TagRows],
    use: Use,
    *,
    accept: set[str] | None = None,
    exclude: bool = False,
    entries: list[TermsEntry] | None = None,
    today: date = TODAY,
    max_age_days: int = 10_000,
) -> GateDecision:
    return decide(
        groups,
        SHIPPED if entries is None else entries,
        use,
        accept or set(),
        exclude,
        today,
        max_age_days,
    )


def one(tag: str, rows: int = 5, teacher: str = "t", model: str = "m") -> TagRows:
    return TagRows(teacher, model, tag, rows)


def entry(tag: str, reviewed: date = TODAY, url: str = "https://ex.org/t") -> TermsEntry:
    return TermsEntry(
        provider="*",
        model="*",
        tag=tag,
        summary="s",
        url=url,
        reviewed=reviewed,
        permits=["research"],
    )


def test_every_shipped_entry_states_its_permits_and_a_review_date() -> None:
    for entry in SHIPPED:
        assert "permits" in entry.model_fields_set, entry.tag
        assert "obligations" in entry.model_fields_set, entry.tag
        assert entry.reviewed > date(2020, 1, 1), entry.tag


def test_a_tag_repeated_across_entries_means_the_same_everywhere() -> None:
    by_tag: dict[str, TermsEntry] = {}
    repeated = 0
    for entry in SHIPPED:
        first = by_tag.setdefault(entry.tag, entry)
        if first is not entry:
            repeated += 1
            assert (entry.permits, entry.obligations) == (first.permits, first.obligations)
    assert repeated >= 3  # open-weights-permissive thrice, llama-4-attribution twice


# Which uses each tag's terms allow (a model trained on its outputs).
PERMITTED: dict[str, set[str]] = {
    "openai-no-competing-models": {"research", "internal", "commercial"},
    "anthropic-no-competing-models": {"research", "internal", "commercial"},
    "gemini-api-no-competing-models": {"research", "internal", "commercial"},
    "llama-3.1-attribution": set(USES),
    "gemma-model-derivative": set(USES),
    "open-weights-permissive": set(USES),
    "llama-2-3.0-no-improving-other-llms": set(),
    "local-unreviewed": set(),
    "unknown": set(),
    "tag-no-entry-has": set(),
}


@pytest.mark.parametrize("use", USES)
@pytest.mark.parametrize("tag", sorted(PERMITTED))
def test_each_use_goes_through_only_where_the_terms_permit_it(tag: str, use: Use) -> None:
    decision = gate([one(tag)], use)
    allowed = use in PERMITTED[tag]
    assert decision.refused is not allowed
    assert decision.included == ([one(tag)] if allowed else [])
    assert decision.blocking == ([] if allowed else [one(tag)])
    assert decision.accepted == {}
    assert (tag in decision.obligations) is allowed


def test_obligations_of_the_included_tags_reach_the_decision() -> None:
    groups = [one("llama-3.1-attribution"), one("gemma-model-derivative"), one("apache-2.0")]
    decision = gate(groups, "commercial")
    assert any('"Built with Llama"' in o for o in decision.obligations["llama-3.1-attribution"])
    assert any("Model Derivative" in o for o in decision.obligations["gemma-model-derivative"])
    assert decision.obligations["apache-2.0"] == []
    assert decision.entries["gemma-model-derivative"].url == "https://ai.google.dev/gemma/terms"


def test_accepting_a_tag_lets_it_in_and_records_the_date() -> None:
    groups = [one("unknown", 3), one("openai-no-competing-models", 7), one("apache-2.0", 2)]
    decision = gate(
        groups, "competing-model", accept={"unknown", "openai-no-competing-models", "apache-2.0"}
    )
    assert not decision.refused
    assert decision.included == groups
    # apache-2.0 needed no acceptance: the card must not say someone signed it off
    assert decision.accepted == {"unknown": TODAY, "openai-no-competing-models": TODAY}
    assert decision.obligations["unknown"] == []
    assert decision.obligations["openai-no-competing-models"] == [
        "The trained model must not compete with OpenAI's models or services."
    ]


def test_excluding_restricted_rows_leaves_them_out_and_counts_them() -> None:
    groups = [
        one("anthropic-no-competing-models", 4, "claude"),
        one("openai-no-competing-models", 6, "gpt"),
        one("unknown", 1, "mystery"),
        one("apache-2.0", 9, "smol"),
    ]
    decision = gate(groups, "competing-model", exclude=True, accept={"unknown"})
    assert not decision.refused
    assert decision.included == [groups[2], groups[3]]
    assert decision.excluded == groups[:2]
    assert decision.excluded_tags() == {
        "anthropic-no-competing-models",
        "openai-no-competing-models",
    }
    assert sum(g.rows for g in decision.excluded) == 10
    assert set(decision.obligations) == {"unknown", "apache-2.0"}


def test_a_stale_review_is_flagged_not_blocking() -> None:
    entries = [
        entry("old-review", TODAY - timedelta(days=181)),
        entry("edge-review", TODAY - timedelta(days=180)),
    ]
    groups = [one("old-review"), one("edge-review")]
    decision = gate(groups, "research", entries=entries, max_age_days=180)
    assert decision.stale == ["old-review"]
    assert not decision.refused
    assert gate(groups, "research", entries=entries, max_age_days=30).stale == [
        "edge-review",
        "old-review",
    ]
    assert gate(groups, "research", entries=entries, max_age_days=365).stale == []


def test_a_user_entry_without_permits_is_restricted(tmp_path: Path) -> None:
    extra = tmp_path / "terms.yaml"
    extra.write_text(
        '- {tag: ours-unsaid, provider: acme, model: "a*", summary: ours, url: "", '
        "reviewed: 2026-11-01}\n"
        '- {tag: ours-research, provider: acme, model: "b*", summary: ours, url: "", '
        "reviewed: 2026-11-01, permits: [research], obligations: [Cite the paper.]}\n"
    )
    entries = load_terms(extra)
    assert entry_for_tag(entries, "ours-unsaid") is not None
    for use in USES:
        assert gate([one("ours-unsaid")], use, entries=entries).refused
    research = gate([one("ours-research")], "research", entries=entries)
    assert research.obligations == {"ours-research": ["Cite the paper."]}
    assert gate([one("ours-research")], "internal", entries=entries).refused
    extra.write_text(
        '- {tag: x, provider: a, model: b, summary: s, url: "", reviewed: 2026-01-01, '
        "permits: [everything]}\n"
    )
    with pytest.raises(ConfigError, match=r"terms\.yaml: entry 0: permits\.0: Input should be"):
        load_terms(extra)


def test_the_refusal_table_fits_80_columns_and_names_each_terms_url() -> None:
    groups = [
        one("openai-no-competing-models", 1200, "gpt4o", "gpt-4o-mini"),
        one("unknown", 3, "mystery", "model-x"),
    ]
    text = refusal_table(gate(groups, "competing-model"))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "https://openai.com/policies/terms-of-use/" in text
    assert "(no terms entry)" in text
    assert "1200" in text and "gpt-4o-mini" in text and "competing-model" in text
    assert "--exclude-restricted" in text and "--accept-terms" in text
    narrow = refusal_table(gate([one("ours", 7, "t1", "m1")], "internal", entries=[entry("ours")]))
    lines = narrow.splitlines()
    # narrow enough for a table: teacher, model, tag, rows, url on one line each
    assert any(line.split() == ["teacher", "model", "tag", "rows", "url"] for line in lines)
    assert any(line.split() == ["t1", "m1", "ours", "7", "https://ex.org/t"] for line in lines)
    assert max(len(line) for line in lines) <= 80


def test_a_refusal_too_wide_for_a_table_reads_as_blocks_within_80_columns() -> None:
    long_model = "meta-llama/Llama-2-70b-chat-hf-with-a-rather-long-fine-tune-suffix"
    groups = [one("llama-2-3.0-no-improving-other-llms", 42, "llama2-teacher", long_model)]
    text = refusal_table(gate(groups, "research"))
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "https://www.llama.com/llama3/license/" in text
    assert long_model in text.replace("\n", "").replace(" ", "")
    assert "llama2-teacher" in text


def test_tag_rows_counts_the_real_shards_per_teacher_model_and_tag(tmp_path: Path) -> None:
    def row(sample_id: str, teacher: str, model: str, terms: str | None) -> dict[str, object]:
        return {
            **sample(sample_id),
            "teacher_name": teacher,
            "teacher_model": model,
            "usage_terms": terms,
        }

    write_shard(
        tmp_path,
        "samples",
        "r1",
        [
            row("a", "gpt", "gpt-4o-mini", "openai-no-competing-models"),
            row("b", "gpt", "gpt-4o-mini", "openai-no-competing-models"),
            row("c", "smol", "smollm2", "apache-2.0"),
            row("d", "mystery", "x", None),
        ],
        0,
    )
    write_shard(tmp_path, "samples", "r2", [row("e", "mystery", "x", "")], 0)
    con = open_catalog(tmp_path)
    assert tag_rows(con, None) == [
        TagRows("gpt", "gpt-4o-mini", "openai-no-competing-models", 2),
        TagRows("mystery", "x", "unknown", 2),
        TagRows("smol", "smollm2", "apache-2.0", 1),
    ]
    assert tag_rows(con, "run_id = 'r1' AND teacher_name <> 'gpt'") == [
        TagRows("mystery", "x", "unknown", 1),
        TagRows("smol", "smollm2", "apache-2.0", 1),
    ]
    decision = gate(tag_rows(con, None), "commercial")
    assert decision.blocking == [TagRows("mystery", "x", "unknown", 2)]
    with pytest.raises(UserInputError, match=r"^--where 'no_such_column = 1': "):
        tag_rows(con, "no_such_column = 1")
