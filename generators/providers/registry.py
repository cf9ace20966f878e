"""The one place that maps a config's ``provider:`` value to its implementation.

No name sniffing: a provider is chosen only by the name the user wrote.
"""

from __future__ import annotations

from collections.abc import Callable

from distillery.generators.providers.base import Provider

_FACTORIES: dict[str, Callable[[], Provider]] = {}


def register(name: str) -> Callable[[type[Provider]], type[Provider]]:
    """Class decorator: make a provider available under ``name``."""

    def decorate(cls: type[Provider]) -> type[Provider]:
        cls.name = name
        _FACTORIES[name] = cls
        return cls

    return decorate


def _load_builtin() -> None:
    # Importing the modules runs their @register decorators.
    from distillery.generators.providers import anthropic, gemini, openai  # noqa: F401


def provider_names() -> list[str]:
    _load_builtin()
    return sorted(_FACTORIES)


def get_provider(name: str) -> Provider:
    _load_builtin()
    try:
        return _FACTORIES[name]()
    except KeyError:
        raise KeyError(
            f"unknown provider {name!r}; known: {', '.join(sorted(_FACTORIES))}"
        ) from None
