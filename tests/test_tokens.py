import hashlib
from pathlib import Path

import tiktoken_ext.openai_public as official

from distillery.generators import tokens


def test_cl100k_hello_world_offline() -> None:
    assert tokens.encoding("cl100k_base").encode("hello world") == [15339, 1917]


def test_o200k_and_model_mapping() -> None:
    assert tokens.encoding("o200k_base").encode("hello world") == [24912, 2375]
    assert tokens.encoding_for_model("gpt-4o").name == "o200k_base"
    assert tokens.encoding_for_model("gpt-4").name == "cl100k_base"
    # Not an OpenAI model: estimated with o200k rather than failing.
    assert tokens.encoding_for_model("claude-sonnet-4").name == "o200k_base"


def test_unpacked_files_match_tiktoken_expected_sha256() -> None:
    cache = tokens.prepare_offline_cache()
    expected = {
        "cl100k_base": official.cl100k_base,
        "o200k_base": official.o200k_base,
    }
    import inspect

    for name, constructor in expected.items():
        source = inspect.getsource(constructor)
        sha = source.split('expected_hash="')[1].split('"')[0]
        url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
        path = Path(cache) / hashlib.sha1(url.encode()).hexdigest()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha


def test_message_token_count_grows_with_content() -> None:
    short = tokens.count_message_tokens([{"role": "user", "content": "hi"}])
    long = tokens.count_message_tokens([{"role": "user", "content": "hi " * 50}])
    assert long - short >= 49


def test_message_counts_match_tiktoken_encode_and_are_stable_when_remembered() -> None:
    """Counts use encode_ordinary and an LRU of texts: they must equal tiktoken's encode with
    special tokens counted as text, the first time and when the count is remembered."""
    text = "Summarise <|endoftext|> and <|im_start|> literally, please. " * 20
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    enc = tokens.encoding_for_model("gpt-4o")
    expected = 3 + sum(
        3 + sum(len(enc.encode(v, disallowed_special=())) for v in m.values()) for m in messages
    )
    first = tokens.count_message_tokens(messages, "gpt-4o")
    assert first == expected
    assert tokens.count_message_tokens([dict(m) for m in messages], "gpt-4o") == expected
    assert tokens.count_message_tokens(messages, "gpt-4") != expected  # cl100k: keyed by model
