from datetime import date
from pathlib import Path

import pytest

from distillery.errors import ConfigError
from distillery.generators.pricing import PriceEntry, cost_usd, load_prices, price_for
from distillery.generators.terms import load_terms, terms_for


@pytest.mark.parametrize(
    ("provider", "model", "tag"),
    [
        ("openai", "gpt-4o-mini", "openai-no-competing-models"),
        ("anthropic", "claude-sonnet-4-5", "anthropic-no-competing-models"),
        ("gemini", "gemini-2.5-flash", "gemini-api-no-competing-models"),
        ("openai", "meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-attribution"),
        ("openai", "llama-2-70b-chat", "llama-2-3.0-no-improving-other-llms"),
        ("openai", "Llama-4-Scout", "llama-4-attribution"),
        ("openai", "Qwen/Qwen2.5-7B-Instruct", "open-weights-permissive"),
        ("local", "gemma-3-270m-q4_k_m.gguf", "gemma-model-derivative"),
        ("mystery", "model-x", "unknown"),
    ],
)
def test_terms_tags(provider: str, model: str, tag: str) -> None:
    entry = terms_for(load_terms(), provider, model)
    assert entry.tag == tag
    assert tag == "unknown" or entry.url.startswith("https://") or provider == "local"


def test_user_terms_come_first(tmp_path: Path) -> None:
    extra = tmp_path / "terms.yaml"
    extra.write_text(
        '- {tag: our-own-model, provider: openai, model: "gpt-4o*", summary: ours, '
        "url: 'https://example.org', reviewed: 2026-01-01}\n"
    )
    assert terms_for(load_terms(extra), "openai", "gpt-4o").tag == "our-own-model"
    extra.write_text("- {tag: x}\n")
    with pytest.raises(ConfigError, match=r"terms\.yaml: entry 0: provider: Field required"):
        load_terms(extra)


def test_cost_counts_cached_and_output_tokens() -> None:
    price = PriceEntry(
        provider="p", model="m", input=1.0, output=4.0, cached_input=0.5, as_of=date(2026, 1, 1)
    )
    # 800 uncached at $1/M + 200 cached at $0.5/M + 100 out at $4/M
    assert cost_usd(price, 1000, 100, 200) == pytest.approx((800 + 100 + 400) / 1e6)
    assert cost_usd(None, 1000, 100) is None
    assert cost_usd(price, None, 100) is None
    mini = price_for(load_prices(), "openai", "gpt-4o-mini-2024-07-18")
    assert mini is not None and mini.input == 0.15
    assert price_for(load_prices(), "openai", "some-local-model") is None
