"""The environment distillery hands the processes it starts: an allowlist, never a copy.

A run's environment holds API keys, cloud credentials and proxy passwords; a child given a
copy keeps them readable in ``/proc/<pid>/environ`` for its whole life (the managed Prefect
server outlives the run that started it). Children get what any process needs to run —
paths, locale, temporary directories, certificates — plus the prefixes of their own settings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

PASSES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TEMP",
        "TMP",
        "DISTILLERY_HOME",
        "VIRTUAL_ENV",
        "PYTHONPATH",
        "PYTHONUTF8",
        "PYTHONIOENCODING",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    }
)


def child_env(
    prefixes: tuple[str, ...] = ("LC_",),
    exclude: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """:data:`PASSES` and every variable starting with one of ``prefixes`` from ``environ``
    (default: ours), less ``exclude``."""
    source = os.environ if environ is None else environ
    left_out = frozenset(exclude)
    return {
        name: value
        for name, value in source.items()
        if (name in PASSES or name.startswith(prefixes)) and name not in left_out
    }
