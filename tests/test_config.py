from pathlib import Path

import pytest

from distillery.config import expand_env, load_config, require_api_keys
from distillery.errors import ConfigError
from distillery.generators.curation.apply import build_curator
from distillery.generators.filters.json_output import JsonOptions
from distillery.generators.filters.language import LanguageOptions
from distillery.generators.filters.length import LengthOptions

BASE = """
prompts:
  path: prompts.jsonl
teachers:
  - name: a
    provider: openai
    model: m
    base_url: http://127.0.0.1:1/v1
    api_key_env: SOME_KEY
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_valid_config_resolves_paths_relative_to_the_file(tmp_path: Path) -> None:
    job = load_config(write(tmp_path, BASE))
    assert job.prompts.path == tmp_path / "prompts.jsonl"
    assert job.output == tmp_path / "out"
    assert job.teachers[0].concurrency == 16


def test_unknown_field_is_named(tmp_path: Path) -> None:
    text = BASE.replace("    model: m", "    model: m\n    temprature: 1")
    with pytest.raises(ConfigError, match=r"job\.yaml: teachers\[0\]\.temprature: unknown field"):
        load_config(write(tmp_path, text))


def test_bad_value_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"teachers\[0\]\.provider: unknown provider 'nope'"):
        load_config(write(tmp_path, BASE.replace("provider: openai", "provider: nope")))


def test_env_default_and_required(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = BASE.replace("http://127.0.0.1:1/v1", "${EMU:-http://127.0.0.1:9}/v1")
    assert load_config(write(tmp_path, text)).teachers[0].base_url == "http://127.0.0.1:9/v1"
    monkeypatch.setenv("EMU", "http://10.0.0.1:5")
    assert load_config(write(tmp_path, text)).teachers[0].base_url == "http://10.0.0.1:5/v1"
    monkeypatch.delenv("EMU")
    required = BASE.replace("http://127.0.0.1:1/v1", "${EMU_REQUIRED}/v1")
    with pytest.raises(
        ConfigError, match=r"teachers\[0\]\.base_url: environment variable EMU_REQUIRED"
    ):
        load_config(write(tmp_path, required))


def test_missing_api_key_names_the_variable_not_a_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = load_config(write(tmp_path, BASE))
    with pytest.raises(ConfigError, match="environment variable SOME_KEY is not set"):
        require_api_keys(job)
    monkeypatch.setenv("SOME_KEY", "sk-secret")
    require_api_keys(job)


def test_duplicate_teacher_names(tmp_path: Path) -> None:
    doubled = BASE + BASE.split("teachers:")[1]
    with pytest.raises(ConfigError, match="'a' is used twice"):
        load_config(write(tmp_path, doubled))


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(write(tmp_path, "prompts: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a list\n"))


def test_expand_env_leaves_plain_values() -> None:
    assert expand_env({"a": [1, "x", {"b": True}]}) == {"a": [1, "x", {"b": True}]}


def test_config_hash_changes_with_params(tmp_path: Path) -> None:
    first = load_config(write(tmp_path, BASE)).config_hash()
    changed = BASE + "    params: {temperature: 0.2}\n"
    assert load_config(write(tmp_path, changed)).config_hash() != first


BILLION_LAUGHS = """
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_nested_aliases_are_refused_before_expansion(tmp_path: Path) -> None:
    # 9^9 values once expanded: this once ran 300 s into 5 GB in expand_env. Refused from
    # the composed graph, where an alias is one shared node (the test's timeout bounds it).
    with pytest.raises(ConfigError, match=r"job\.yaml: YAML aliases expand to more than"):
        load_config(write(tmp_path, BILLION_LAUGHS))
    with pytest.raises(ConfigError, match=r"job\.yaml: YAML alias at line 1 refers to itself"):
        load_config(write(tmp_path, "prompts: &p [1, *p]\n"))
    with pytest.raises(ConfigError, match=r"job\.yaml: YAML nested too deeply"):
        load_config(write(tmp_path, "prompts: " + "[" * 20_000 + "]" * 20_000 + "\n"))


def test_a_few_aliases_still_work(tmp_path: Path) -> None:
    text = BASE.replace(
        "    api_key_env: SOME_KEY", "    api_key_env: SOME_KEY\n    params: &p {seed: 3}"
    )
    text += text.split("teachers:")[1].replace("name: a", "name: b").replace("&p {seed: 3}", "*p")
    job = load_config(write(tmp_path, text))
    assert [t.params.seed for t in job.teachers] == [3, 3]


FILTERS = """
curation:
  filters:
    - {type: length, min_tokens: 5}
    - {type: refusal}
    - {type: json, schema: {type: object}}
    - {type: language, languages: [EN]}
"""


def test_filters_are_typed_once_at_load_and_built_from_their_options(tmp_path: Path) -> None:
    job = load_config(write(tmp_path, BASE + FILTERS))
    length, _, as_json, language = job.curation.filters
    assert isinstance(length, LengthOptions) and length.min_tokens == 5
    assert isinstance(as_json, JsonOptions) and as_json.json_schema == {"type": "object"}
    assert language.filter_name == "language"
    curator = build_curator(job.curation)
    # The run's filters hold the very options the config validated: nothing is parsed again.
    assert [check.options for check in curator.filters] == list(job.curation.filters)
    assert all(
        check.options is options
        for check, options in zip(curator.filters, job.curation.filters, strict=True)
    )


def test_filters_hash_and_record_as_written(tmp_path: Path) -> None:
    """Typed options record the entries as the file wrote them (aliases, defaults left out,
    values before normalisation): a run's recorded shape and config hash stay what they were
    when filters were kept as raw entries, so such a run still resumes."""
    job = load_config(write(tmp_path, BASE + FILTERS))
    assert job.shape()["curation"]["filters"] == [
        {"type": "length", "min_tokens": 5},
        {"type": "refusal"},
        {"type": "json", "schema": {"type": "object"}},
        {"type": "language", "languages": ["EN"]},
    ]
    language = job.curation.filters[3]
    assert isinstance(language, LanguageOptions) and language.languages == ["en"]
    plain = load_config(write(tmp_path, BASE))
    assert plain.shape()["curation"]["filters"] == [{"type": "empty"}]
    assert load_config(write(tmp_path, BASE + FILTERS)).config_hash() == job.config_hash()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "{type: length, min_tokns: 3}",
            r"job\.yaml: curation\.filters: \[0\] \(length\)\.min_tokns: Extra inputs are not "
            r"permitted$",
        ),
        (
            "{type: length, min_tokens: many}",
            r"curation\.filters: \[0\] \(length\)\.min_tokens: Input should be a valid integer",
        ),
        ("{type: nope}", r"curation\.filters: \[0\]\.type: unknown filter 'nope'"),
    ],
)
def test_a_bad_filter_option_is_one_line_naming_the_field(
    tmp_path: Path, entry: str, message: str
) -> None:
    text = BASE + f"curation:\n  filters: [{entry}]\n"
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(write(tmp_path, text))
    assert "\n" not in str(raised.value)
