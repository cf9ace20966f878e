"""The emulator's settings: one model shared by the CLI, tests and benchmarks."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from distillery.emulator.faults import ALL_FAULT_NAMES, FAULT_NAMES, unknown_faults
from distillery.emulator.limits import SECONDS_PER_MINUTE, token_allowance


class EmulatorOptions(BaseModel):
    """Settings of one emulator instance.

    ``extra="forbid"`` so a misspelt option (or one meant for a newer emulator) fails loudly
    instead of silently running a benchmark without the fault or limit it was meant to test.
    Fault names are checked for the same reason.
    """

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    latency_ms: float = Field(default=0.0, ge=0.0)
    require_key: str | None = None
    #: Share of API requests (0..1) answered with a fault instead of a clean answer; also the
    #: share of a batch's requests that fail or get a flagged answer (:mod:`.batch_api`).
    fault_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    #: Faults to draw from, uniformly (names of :class:`.faults.Fault`); default: all of them
    #: but the structured-output ones (``invalid-json``, ``schema-mismatch``), drawn only when
    #: named. A name listed twice is drawn twice as often.
    faults: list[str] = Field(default_factory=lambda: list(FAULT_NAMES), min_length=1)
    #: How long the ``timeout`` fault holds a request before closing the connection unanswered.
    hang_s: float = Field(default=600.0, ge=0.0)
    #: Enforced limits (:mod:`.limits`); None: unlimited. Requests and tokens per minute, over a
    #: sliding window of ``window_s`` seconds that they scale with (``rpm=1200, window_s=6``
    #: admits 120 requests in any 6 s), and requests in flight at once.
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    max_concurrency: int | None = Field(default=None, ge=1)
    #: Length of the sliding window; shorter than a minute compresses it for tests and benches.
    window_s: float = Field(default=SECONDS_PER_MINUTE, gt=0.0)
    #: Quantized enforcement (:mod:`.limits`): the same limits also hold over every sliding
    #: ``quantum_s`` (``rpm=60000, quantum_s=1``: at most 1,000 requests in any second), as
    #: OpenAI may enforce them. None: over ``window_s`` only.
    quantum_s: float | None = Field(default=None, gt=0.0)
    #: Share of clean answers (0..1) replaced by an earlier answer verbatim (:mod:`.duplicates`).
    dup_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    #: Share of clean answers replaced by an earlier answer lightly edited (five-word-shingle
    #: Jaccard to it ≥ 0.85). The two shares add up to at most 1.
    near_dup_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    #: Share of reasoning traces (0..1) withheld: Anthropic redacts them, the other formats
    #: send only their token count (:mod:`.reasoning`).
    reasoning_redact_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    #: Where the OpenAI route puts a trace: reasoning_content field, inline <think> tags,
    #: hidden, or auto (hidden for OpenAI's own model names, the field otherwise).
    openai_reasoning: Literal["auto", "field", "inline", "hidden"] = "auto"
    #: How long a batch of the batch APIs takes (:mod:`.batch_api`): its compressed 24-hour
    #: window, at whose end it completes (or expires). 0: done when first looked at.
    batch_seconds: float = Field(default=2.0, ge=0.0)
    #: Share of batches (0..1) that expire at the end of their window with half their lines
    #: done, the rest reported expired.
    batch_expire_rate: float = Field(default=0.0, ge=0.0, le=1.0)

    @property
    def limited(self) -> bool:
        """Whether any limit is enforced (without one, the server does no limit work at all)."""
        return self.rpm is not None or self.tpm is not None or self.max_concurrency is not None

    @property
    def copies(self) -> bool:
        """Whether some answers are copies (without, the server does no work for them)."""
        return self.dup_rate > 0 or self.near_dup_rate > 0

    @field_validator("faults", mode="before")
    @classmethod
    def _split_faults(cls, value: object) -> object:
        """Accept ``"429,500"`` too: the form a command line or an environment variable has."""
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("faults")
    @classmethod
    def _known_faults(cls, value: list[str]) -> list[str]:
        unknown = unknown_faults(value)
        if unknown:
            names = ", ".join(repr(name) for name in unknown)
            raise ValueError(f"unknown fault {names}; valid faults: {', '.join(ALL_FAULT_NAMES)}")
        return value

    @field_validator("window_s")
    @classmethod
    def _window_fits_a_token(cls, value: float, info: ValidationInfo) -> float:
        """A token allowance under one token per window would refuse every request."""
        tpm = info.data.get("tpm")
        if isinstance(tpm, int) and token_allowance(tpm, value) < 1:
            raise ValueError(
                f"tpm {tpm} over a {value:g} s window allows less than one token; "
                "use a longer window or a higher tpm"
            )
        return value

    @field_validator("quantum_s")
    @classmethod
    def _quantum_fits(cls, value: float | None, info: ValidationInfo) -> float | None:
        """A quantum is a part of the window, and must allow at least one token."""
        if value is None:
            return value
        window = info.data.get("window_s")
        if isinstance(window, int | float) and value > window:
            raise ValueError(f"quantum_s {value:g} is longer than window_s {window:g}")
        tpm = info.data.get("tpm")
        if isinstance(tpm, int) and token_allowance(tpm, value) < 1:
            raise ValueError(
                f"tpm {tpm} over a {value:g} s quantum allows less than one token; "
                "use a longer quantum or a higher tpm"
            )
        return value

    @field_validator("near_dup_rate")
    @classmethod
    def _rates_fit(cls, value: float, info: ValidationInfo) -> float:
        """Both shares are of the same clean answers, so together they cannot exceed all."""
        dup_rate = info.data.get("dup_rate")
        if isinstance(dup_rate, int | float) and dup_rate + value > 1.0 + 1e-9:
            raise ValueError(
                f"dup_rate {dup_rate:g} + near_dup_rate {value:g} = {dup_rate + value:g}, over 1: "
                "both are shares of the same clean answers, so together at most 1"
            )
        return value
