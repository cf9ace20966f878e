from pathlib import Path

import pytest

from distillery.config import expand_env, load_config, require_api_keys
from distillery.errors import ConfigError

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
