"""First-match tables keyed by (provider, model) globs, loaded from YAML data files.

The terms registry and the price table share this shape: an ordered list of entries, each with
``provider`` and ``model`` shell-style patterns; the first entry matching a teacher wins. A job
may name its own file, whose entries are tried before the shipped ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from distillery.errors import ConfigError


class Keyed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    model: str

    def matches(self, provider: str, model: str) -> bool:
        return fnmatchcase(provider.lower(), self.provider.lower()) and fnmatchcase(
            model.lower(), self.model.lower()
        )


E = TypeVar("E", bound=Keyed)

#: libyaml's loader when PyYAML was built with it (~10x faster on the shipped tables).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_entries(entry_type: type[E], shipped: str, extra: Path | None = None) -> list[E]:
    """Entries of ``extra`` (if given) followed by those of the shipped data file ``shipped``."""
    entries: list[E] = []
    if extra is not None:
        try:
            text = extra.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{extra}: cannot read ({exc.strerror or exc})") from exc
        entries.extend(_parse(entry_type, text, str(extra)))
    entries.extend(_shipped_entries(entry_type, shipped))
    return entries


@cache
def _shipped_entries(entry_type: type[E], shipped: str) -> tuple[E, ...]:
    """A shipped table, parsed once per process (entries are frozen; every run reads them)."""
    text = (resources.files("distillery.generators") / "data" / shipped).read_text("utf-8")
    return tuple(_parse(entry_type, text, shipped))


def _parse(entry_type: type[E], text: str, where: str) -> list[E]:
    try:
        raw = yaml.load(text, Loader=_YAML_LOADER) or []  # CSafeLoader or SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML") from exc
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of entries")
    parsed: list[E] = []
    for index, item in enumerate(raw):
        try:
            parsed.append(entry_type.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{where}: entry {index}: {field}: {first['msg']}") from exc
    return parsed


def first_match(entries: Sequence[E], provider: str, model: str) -> E | None:
    return next((entry for entry in entries if entry.matches(provider, model)), None)
