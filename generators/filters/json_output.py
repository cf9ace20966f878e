"""Drop structured-output answers that are not valid JSON or do not match a JSON Schema."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, field_validator

from distillery.generators.filters.base import (
    KEEP,
    Filter,
    FilterOptions,
    Verdict,
    drop,
    register,
    text_of,
)

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

# A whole answer wrapped in one Markdown code fence, as chat models often return JSON.
_FENCE = re.compile(r"\A\s*```[A-Za-z0-9_-]*[ \t]*\n(?P<body>.*?)\n?```\s*\Z", re.DOTALL)


class JsonOptions(FilterOptions):
    json_schema: dict[str, Any] | None = Field(
        None, alias="schema", description="A JSON Schema the parsed answer must match."
    )
    strip_code_fence: bool = Field(
        True, description="Accept an answer that is one ```json fenced block."
    )
    field: str = Field("response_text", description="The column holding the JSON.")

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            schema_validator(value)
        return value


def schema_validator(schema: dict[str, Any]) -> Validator:
    """A validator for ``schema`` (its own ``$schema`` picks the draft; default the latest);
    ``ValueError`` naming the problem if ``schema`` is not a valid JSON Schema.

    jsonschema is imported here, not with the module: it costs ~50 ms, and the job file's
    loader imports every filter's options (``distillery.config``) for every command."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
    return cls(schema)


def parse_json(text: str, strip_code_fence: bool = True) -> tuple[Any, Verdict]:
    """(the parsed document, KEEP) or (None, the ``invalid_json`` drop with line and column)."""
    if strip_code_fence and (fenced := _FENCE.match(text)):
        text = fenced.group("body")
    try:
        return json.loads(text), KEEP
    except json.JSONDecodeError as exc:
        return None, drop("invalid_json", f"line {exc.lineno} column {exc.colno}: {exc.msg}")


def schema_verdict(validator: Validator, document: Any) -> Verdict:
    """KEEP, or the ``schema_mismatch`` drop with jsonschema's ``best_match`` and its path."""
    import jsonschema.exceptions

    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is None:
        return KEEP
    where = "/".join(str(part) for part in error.absolute_path) or "(root)"
    return drop("schema_mismatch", f"{where}: {error.message}")


@register
class JsonFilter(Filter[JsonOptions]):
    """The schema's own ``$schema`` picks the draft (default: the latest jsonschema knows);
    the error reported is jsonschema's ``best_match``, with its path in the document."""

    name: ClassVar[str] = "json"
    options_model: ClassVar[type[FilterOptions]] = JsonOptions

    def __init__(self, options: JsonOptions | None = None) -> None:
        super().__init__(options)
        schema = self.options.json_schema
        self._validator = schema_validator(schema) if schema is not None else None

    def check(self, sample: Mapping[str, Any]) -> Verdict:
        text = text_of(sample, self.options.field)
        document, verdict = parse_json(text, self.options.strip_code_fence)
        if verdict.keep and self._validator is not None:
            return schema_verdict(self._validator, document)
        return verdict
