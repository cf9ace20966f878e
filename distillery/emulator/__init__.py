"""A local stand-in for teacher provider APIs: real HTTP, deterministic answers, real usage.

Tests and benchmarks point clients at it instead of a paid API. Answers are a pure function of
(seed, model, messages), token usage is counted with tiktoken exactly as the provider bills,
and ``GET /_emulator/stats`` reports what the server actually saw, the ground truth for a
client's accounting. Formats live in :mod:`.formats`: OpenAI Chat Completions, Anthropic
Messages and Gemini generateContent, all on one port. With ``fault_rate`` > 0 a share of the
requests gets a fault real APIs send (:mod:`.faults`): rate limits, 5xx, hangs, resets,
truncated or malformed bodies, flagged answers. With ``rpm``, ``tpm`` or ``max_concurrency`` set,
the server enforces them over a sliding window (:mod:`.limits`) and refuses what exceeds them
with each provider's own 429, headers and retry hint. With ``dup_rate`` or ``near_dup_rate`` set,
a share of the clean answers repeats an earlier answer, verbatim or lightly edited
(:mod:`.duplicates`), so exact and near-duplicate removal can be tested end to end.
"""

from distillery.emulator.options import EmulatorOptions
from distillery.emulator.runner import RunningEmulator, serve
from distillery.emulator.server import build_app

__all__ = ["EmulatorOptions", "RunningEmulator", "build_app", "serve"]
