"""The emulator's settings: one model shared by the CLI, tests and benchmarks."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EmulatorOptions(BaseModel):
    """Settings of one emulator instance.

    ``extra="forbid"`` so a misspelt option (or one meant for a newer emulator) fails loudly
    instead of silently running a benchmark without the fault or limit it was meant to test.
    """

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    latency_ms: float = Field(default=0.0, ge=0.0)
    require_key: str | None = None
