"""Wire formats: each module translates one provider's HTTP shapes to and from the neutral
:class:`~distillery.emulator.completion.ChatRequest` / ``Answer``.

Every module here but :mod:`.base` defines ``FORMAT``, an instance of its
:class:`~.base.WireFormat`; :func:`wire_formats` finds them, so a new format is its module
alone (docs/extending.md).
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from distillery.emulator.formats.base import WireFormat


@cache
def wire_formats() -> dict[str, WireFormat]:
    """Every format of this package, by name."""
    found: dict[str, WireFormat] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        fmt: WireFormat | None = getattr(module, "FORMAT", None)
        if fmt is not None:
            found[fmt.name] = fmt
    return found


def format_of(path: str) -> WireFormat:
    """The format whose API ``path`` belongs to: the one whose ``home`` matches most of it."""

    def matched(fmt: WireFormat) -> int:
        match = fmt.home.match(path)
        return -1 if match is None else match.end()

    return max(wire_formats().values(), key=matched)
