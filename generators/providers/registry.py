"""The one place that maps a config's ``provider:`` value to its implementation.

No name sniffing: a provider is chosen only by the name the user wrote.
"""

from __future__ import annotations

from collections.abc import Callable

from distillery.generators.providers.base import Provider

_FACTORIES: dict[str, Callable[[], Provider]] = {}


def register(name: str) -> Callable[[type[Provider]], type[Provider]]:
    """Class decorator: make a provider available under ``name``.

    Its wire format is ``name`` too, unless a provider it extends already has one (an
    OpenAI-compatible provider speaks ``openai``).
    """

    def decorate(cls: type[Provider]) -> type[Provider]:
        cls.name = name
        if getattr(cls, "wire_format", None) is None:
            cls.wire_format = name
        _FACTORIES[name] = cls
        return cls

    return decorate


def _load_builtin() -> None:
    # Importing the modules runs their @register decorators.
    from distillery.generators.providers import anthropic, gemini, openai  # noqa: F401


def provider_names() -> list[str]:
    """Every registered provider's name, sorted."""
    _load_builtin()
    return sorted(_FACTORIES)


def get_provider(name: str) -> Provider:
    """A fresh provider object for the config's ``provider:`` value (KeyError if unknown)."""
    _load_builtin()
    try:
        return _FACTORIES[name]()
    except KeyError:
        raise KeyError(
            f"unknown provider {name!r}; known: {', '.join(sorted(_FACTORIES))}"
        ) from None
