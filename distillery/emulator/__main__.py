"""``python -m distillery.emulator``: serve in the foreground, e.g. for a manual run or a bench."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from distillery.emulator.options import EmulatorOptions
from distillery.emulator.runner import serve


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m distillery.emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="mean added latency")
    parser.add_argument("--require-key", default=None, help="answer 401 to any other key")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of faulted requests")
    parser.add_argument(
        "--faults",
        default=None,
        help="comma-separated names (default: all but invalid-json, schema-mismatch)",
    )
    parser.add_argument("--hang-s", type=float, default=600.0, help="hang of the timeout fault")
    parser.add_argument("--rpm", type=int, default=None, help="enforced requests per minute")
    parser.add_argument("--tpm", type=int, default=None, help="enforced tokens per minute")
    parser.add_argument("--max-concurrency", type=int, default=None, help="enforced in flight")
    parser.add_argument(
        "--window-s", type=float, default=60.0, help="sliding window of --rpm/--tpm (seconds)"
    )
    parser.add_argument(
        "--quantum-s",
        type=float,
        default=None,
        help="also enforce --rpm/--tpm over every sliding quantum this long (quantized limits)",
    )
    parser.add_argument(
        "--reasoning-redact-rate", type=float, default=0.0, help="share of traces withheld"
    )
    parser.add_argument(
        "--openai-reasoning",
        choices=("auto", "field", "inline", "hidden"),
        default="auto",
        help="where the OpenAI route puts a trace",
    )
    args = parser.parse_args(argv)
    extra = {} if args.faults is None else {"faults": args.faults}
    try:
        options = EmulatorOptions(
            seed=args.seed,
            latency_ms=args.latency_ms,
            require_key=args.require_key,
            fault_rate=args.fault_rate,
            hang_s=args.hang_s,
            rpm=args.rpm,
            tpm=args.tpm,
            max_concurrency=args.max_concurrency,
            window_s=args.window_s,
            quantum_s=args.quantum_s,
            reasoning_redact_rate=args.reasoning_redact_rate,
            openai_reasoning=args.openai_reasoning,
            **extra,
        )
    except ValidationError as exc:
        parser.error(str(exc))
    serve(options, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
