"""Train/validation/test splits that never separate a family of related rows.

A row's split is a function of its *family key* alone — a hash, no random state — so the same
rows land in the same split in every export, and rows that share a key cannot leak across
splits. The family is what a model could memorise across rows:

- every sample of a prompt (all teachers, all ``n``, every run): the ``prompt_id``;
- a conversation is one row already, keyed by its seed ``prompt_id`` like any prompt;
- evol-instruct: a child instruction's id is its parent's followed by ``>operation``
  (``p7>deepen>concretize``) and its evolve request's is ``evolve/`` + that, so the seed's id
  is the part before the first ``>`` — the seed, its rewrites and all their answers share it
  (a seed id that itself holds ``>`` only makes the family coarser, never splits it);
- self-instruct: the instructions one request wrote are siblings, so an answer's family is the
  instructions row that wrote it (``parent_sample_id``).
"""

from __future__ import annotations

import hashlib
import math
import re

from distillery.errors import UserInputError

#: The family key of a row of the samples view, as SQL (see the module docstring).
FAMILY_KEY_SQL = """CASE
    WHEN recipe = 'evol_instruct'
        THEN 'evol:' || split_part(regexp_replace(prompt_id, '^evolve/', ''), '>', 1)
    WHEN recipe = 'self_instruct' AND parent_sample_id IS NOT NULL
        THEN 'self-instruct:' || parent_sample_id
    ELSE 'prompt:' || prompt_id
END"""

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_SCALE = float(2**64)


def parse_splits(spec: str) -> dict[str, float]:
    """``"train=0.98,validation=0.02"`` -> ``{"train": 0.98, "validation": 0.02}``.

    Names are identifiers (they become file names and the card's ``split:`` values), each
    share is in (0, 1], and the shares sum to 1 (within 1e-6).
    """
    splits: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, value = (piece.strip() for piece in part.partition("="))
        if not sep or not _NAME.fullmatch(name):
            raise UserInputError(
                f"--split {spec!r}: {part.strip()!r} is not NAME=SHARE (e.g. train=0.98)"
            )
        try:
            share = float(value)
        except ValueError:
            raise UserInputError(f"--split {spec!r}: {name}={value!r} is not a number") from None
        if not 0 < share <= 1 or not math.isfinite(share):
            raise UserInputError(f"--split {spec!r}: {name}={value} is not in (0, 1]")
        if name in splits:
            raise UserInputError(f"--split {spec!r}: {name} is named twice")
        splits[name] = share
    total = sum(splits.values())
    if abs(total - 1) > 1e-6:
        raise UserInputError(f"--split {spec!r}: the shares sum to {total:g}, not 1")
    return splits


def split_of(key: str, splits: dict[str, float]) -> str:
    """The split of a family key: a stable hash of it placed on the cumulative shares.

    blake2b rather than Python's ``hash``: that one is salted per process.
    """
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    point = int.from_bytes(digest, "big") / _SCALE
    edge = 0.0
    name = ""
    for name, share in splits.items():
        edge += share
        if point < edge:
            return name
    return name  # the shares' rounding left a sliver above the last edge
