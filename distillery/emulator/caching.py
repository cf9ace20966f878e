"""Prompt caching, as the three APIs report it — enough to test what a client counts and bills.

Real providers cache a prompt's prefix and bill the tokens read from the cache at a discount
(Anthropic also bills writing them, at a premium). What differs, and what a client must get
right, is how usage reports it:

* OpenAI caches automatically; ``usage.prompt_tokens`` includes the cached part, reported in
  ``usage.prompt_tokens_details.cached_tokens`` (in steps of 128 tokens past the first 1024).
* Gemini caches implicitly; ``usageMetadata.promptTokenCount`` includes
  ``cachedContentTokenCount``.
* Anthropic caches what a request marks with ``cache_control`` (on a block, or at the top
  level); ``usage.input_tokens`` *excludes* ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens``, which come on top.

The emulator's model of it is deliberately simple: the cacheable prefix is every message but
the last (the system prompt and earlier turns), at least :data:`MIN_CACHED_TOKENS` long, keyed
by model and content. The first request with a prefix writes it (Anthropic reports the write),
later ones read it. Real caches also match longer token prefixes and expire after minutes;
nothing here needs that. What differs between the APIs is each format's :class:`CachePolicy`.
Memory is bounded by :data:`MAX_ENTRIES` (least recently used first out).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

from distillery.emulator.completion import Answer, ChatRequest
from distillery.generators.tokens import count_message_tokens

#: The shortest prefix any of the three caches (OpenAI's and most Claude models' minimum).
MIN_CACHED_TOKENS = 1024
MAX_ENTRIES = 4096


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How one API caches prompts and reports it (each wire format declares its own)."""

    #: Only a request that marks what to cache (Anthropic ``cache_control``) is cached.
    needs_marking: bool = False
    #: Cache hits are reported in steps of this many tokens past the minimum (OpenAI: 128).
    step: int = 1
    #: The first request with a prefix reports the tokens it wrote to the cache (Anthropic).
    reports_writes: bool = False


class PromptCache:
    """Which prompt prefixes one emulator has seen; thread-safe (one app, any loop)."""

    def __init__(self) -> None:
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def apply(self, policy: CachePolicy, chat: ChatRequest, answer: Answer) -> Answer:
        """``answer`` with the cache reads and writes an API caching by ``policy`` would report
        for ``chat`` (``prompt_tokens`` stays the whole prompt; each format renders the split
        its way)."""
        if policy.needs_marking and not chat.cache_marked:
            return answer
        prefix = chat.messages[:-1]
        if not prefix:
            return answer
        tokens = count_message_tokens(prefix, chat.model)
        if tokens < MIN_CACHED_TOKENS:
            return answer
        tokens = min(tokens, answer.prompt_tokens)
        key = hashlib.blake2b(
            json.dumps([chat.model, prefix], sort_keys=True).encode(), digest_size=16
        ).digest()
        with self._lock:
            hit = key in self._seen
            self._seen[key] = None
            self._seen.move_to_end(key)
            while len(self._seen) > MAX_ENTRIES:
                self._seen.popitem(last=False)
        tokens -= (tokens - MIN_CACHED_TOKENS) % policy.step
        if hit:
            return replace(answer, cache_read_tokens=tokens)
        if policy.reports_writes:
            return replace(answer, cache_write_tokens=tokens)
        return answer

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
