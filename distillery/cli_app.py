"""The command-line app's help as the docs write it: `distillery run [OPTIONS] CONFIG`.

Typer 0.29 writes a required argument as ``{config}`` in the usage line and gives every flag a
type tag, so ``--emulator <bool>`` reads as if it took a value. Commands made by
:class:`DistilleryApp` print the usage line click always printed and leave a flag's type column
empty; everything else is Typer's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


def _untag_flags(params: list[Any]) -> list[Any]:
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag:
            param.metavar = ""  # Typer shows the metavar in place of "<bool>"
    return params


class PlainHelpCommand(TyperCommand):
    """A Typer command whose usage line names arguments in capitals and whose flags carry no
    type tag."""

    def get_params(self, ctx: Any) -> Any:  # Typer's vendored click types are private
        return _untag_flags(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or param.name or "").upper()
                name += "..." if param.nargs != 1 else ""
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class PlainHelpGroup(TyperGroup):
    """A Typer group whose flags carry no type tag."""

    def get_params(self, ctx: Any) -> Any:
        return _untag_flags(super().get_params(ctx))


class DistilleryApp(typer.Typer):
    """`typer.Typer` whose groups and commands print help as :class:`PlainHelpCommand` does."""

    def __init__(self, *, cls: type[TyperGroup] | None = None, **kwargs: Any) -> None:
        super().__init__(cls=cls or PlainHelpGroup, **kwargs)

    def command(  # type: ignore[override]  # same parameters, one default changed
        self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return super().command(name, cls=cls or PlainHelpCommand, **kwargs)
