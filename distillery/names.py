"""Names that become parts of paths: validated whole, the same way everywhere.

A run id names a partition folder (``samples/run_id=<id>/``), a spool folder and a Prefect
flow run. ``re.match`` with ``$`` accepts a final newline (``$`` matches before it), and a
folder ``run_id=x\\n`` once made every query of its dataset fail; so the check is a
:func:`re.fullmatch`, and readers skip folders that fail it (:func:`run_id_of_folder`).
"""

from __future__ import annotations

import re

from distillery.errors import UserInputError

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_PARTITION_PREFIX = "run_id="


def is_run_id(value: str) -> bool:
    """Whether ``value`` can be a run id (and so a path component)."""
    return RUN_ID.fullmatch(value) is not None


def check_run_id(value: str, where: str = "--run-id") -> str:
    """``value`` if it is a valid run id, else a one-line error naming ``where``."""
    if not is_run_id(value):
        raise UserInputError(
            f"{where} {value!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def run_id_of_folder(name: str) -> str | None:
    """The run id a ``run_id=<id>`` partition folder holds, or None if it cannot be one."""
    if not name.startswith(_PARTITION_PREFIX):
        return None
    run_id = name[len(_PARTITION_PREFIX) :]
    return run_id if is_run_id(run_id) else None
