"""The filter contract: one sample in, keep or (drop, reason) out.

Modelled on datatrove's filters: each filter is one small class in its own module, returns a
verdict rather than raising or silently skipping, and counts what it kept and why it dropped,
so a run can report ``dropped_refusal: 312`` and the rejected rows keep their reason instead
of vanishing. Options are a pydantic model per filter with ``extra="forbid"``: a misspelled
option in the job file is an error naming the filter and the field, not a silently ignored
key.

Options are data: the job file's entries become typed options once, when the config is
loaded (:func:`parse_filters`, called by ``CurationConfig``), and a run builds its filters
from those (:func:`build_filters`) without validating them again. :data:`FILTERS` is the
registry both use: a filter's name to its class, whose ``options_model`` types its entry.

A new filter is one module with a ``@register``-ed subclass of :class:`Filter`, plus its
import in ``filters/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, cast

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, model_serializer


@dataclass(frozen=True, slots=True)
class Verdict:
    """``keep``, or a drop with a short stable ``reason`` (for counting) and a human detail."""

    keep: bool
    reason: str | None = None
    detail: str | None = None

    def __bool__(self) -> bool:
        return self.keep


KEEP = Verdict(True)


def drop(reason: str, detail: str | None = None) -> Verdict:
    return Verdict(False, reason, detail)


class FilterOptions(BaseModel):
    """Base of every filter's options: unknown keys are errors; options are not reassigned.

    Serialised as the entry the job file wrote (``type`` included, defaults left out as they
    were), not as every field: the config hash and a run's recorded shape hold that form, so
    a job file hashes the same as when filters were kept as raw entries, and a run started
    then still resumes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    _written: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def filter_name(self) -> str:
        """The ``type`` of the filter these options are for."""
        for name, cls in FILTERS.items():
            if cls.options_model is type(self):
                return name
        raise LookupError(f"{type(self).__name__} are no registered filter's options")

    @model_serializer(mode="plain")
    def _as_written(self) -> dict[str, Any]:
        if self._written:
            return dict(self._written)
        fields = type(self).model_fields
        chosen = {fields[key].alias or key: getattr(self, key) for key in self.model_fields_set}
        return {"type": self.filter_name, **chosen}


OptionsT = TypeVar("OptionsT", bound=FilterOptions)


class Filter(ABC, Generic[OptionsT]):
    """One check on a sample row (a mapping shaped like ``storage.schema.SAMPLE_SCHEMA``)."""

    name: ClassVar[str]
    options_model: ClassVar[type[FilterOptions]] = FilterOptions

    def __init__(self, options: OptionsT | None = None) -> None:
        self.options: OptionsT = (
            options if options is not None else cast(OptionsT, self.options_model())
        )
        self.stats: Counter[str] = Counter()

    @abstractmethod
    def check(self, sample: Mapping[str, Any]) -> Verdict:
        """The verdict for one sample; pure apart from any model the filter loads once."""

    def __call__(self, sample: Mapping[str, Any]) -> Verdict:
        """:meth:`check`, counted in :attr:`stats` as ``kept`` or ``dropped_<reason>``."""
        verdict = self.check(sample)
        self.stats["kept" if verdict.keep else f"dropped_{verdict.reason}"] += 1
        return verdict

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"


FILTERS: dict[str, type[Filter[Any]]] = {}

FilterT = TypeVar("FilterT", bound=type[Filter[Any]])


def register(cls: FilterT) -> FilterT:
    """Class decorator: make a filter available to :func:`build_filters` under its name."""
    if cls.name in FILTERS and FILTERS[cls.name] is not cls:
        raise ValueError(f"two filters are named {cls.name!r}")
    FILTERS[cls.name] = cls
    return cls


def text_of(sample: Mapping[str, Any], field: str = "response_text") -> str:
    """The text a filter looks at; a missing or NULL field reads as empty."""
    value = sample.get(field)
    return value if isinstance(value, str) else ""


def parse_filters(specs: Sequence[object]) -> list[FilterOptions]:
    """Typed options from config entries like ``{"type": "length", "min_tokens": 5}``, in
    order; options already typed pass as they are.

    Raises ``ValueError`` with one line per problem, each naming the entry, the filter type
    and the field (``filters[0] (length).min_tokens: Input should be a valid integer``).
    """
    parsed: list[FilterOptions] = []
    for index, spec in enumerate(specs):
        where = f"filters[{index}]"
        if isinstance(spec, FilterOptions):
            parsed.append(spec)
            continue
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where}: expected a mapping with a 'type' key, got {spec!r}")
        options = dict(spec)
        kind = options.pop("type", None)
        if kind is None:
            raise ValueError(f"{where}: missing 'type' (one of: {', '.join(sorted(FILTERS))})")
        cls = FILTERS.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise ValueError(
                f"{where}.type: unknown filter {kind!r} (one of: {', '.join(sorted(FILTERS))})"
            )
        try:
            validated = cls.options_model.model_validate(options)
        except ValidationError as exc:
            lines = []
            for error in exc.errors():
                field = ".".join(str(part) for part in error["loc"])
                lines.append(f"{where} ({kind}){'.' + field if field else ''}: {error['msg']}")
            raise ValueError("\n".join(lines)) from None
        validated._written = dict(spec)
        parsed.append(validated)
    return parsed


def build_filters(specs: Sequence[FilterOptions | Mapping[str, Any]]) -> list[Filter[Any]]:
    """The filters for typed options (a loaded config's), in order; entries still raw (tests,
    a recipe's fixed checks) are typed first by :func:`parse_filters`, with its errors."""
    return [FILTERS[options.filter_name](options) for options in parse_filters(specs)]


def run_filters(filters: Sequence[Filter[Any]], sample: Mapping[str, Any]) -> Verdict:
    """The first drop among ``filters`` (in order, each one counted), or :data:`KEEP`."""
    for item in filters:
        verdict = item(sample)
        if not verdict.keep:
            return verdict
    return KEEP
