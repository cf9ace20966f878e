"""The emulator's settings: one model shared by the CLI, tests and benchmarks."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from distillery.emulator.faults import FAULT_NAMES, unknown_faults


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
    #: Share of API requests (0..1) answered with a fault instead of a clean answer.
    fault_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    #: Faults to draw from, uniformly (names of :class:`.faults.Fault`); default: all of them.
    #: A name listed twice is drawn twice as often.
    faults: list[str] = Field(default_factory=lambda: list(FAULT_NAMES), min_length=1)
    #: How long the ``timeout`` fault holds a request before closing the connection unanswered.
    hang_s: float = Field(default=600.0, ge=0.0)

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
            raise ValueError(f"unknown fault {names}; valid faults: {', '.join(FAULT_NAMES)}")
        return value
