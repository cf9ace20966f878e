"""Schema-shaped answers: a JSON document generated from the schema a request asks for.

A client's structured-output path (send the schema, parse, validate, repair) needs answers that
validate — and, under the ``invalid-json`` and ``schema-mismatch`` faults, answers that do not.
The document is a pure function of the request key, like the emulator's prose: strings are
words of the prose answer, numbers and choices come from a RNG seeded by the key.

Covered: ``type`` (a name or a list; Gemini's upper-case OpenAPI names too), ``properties`` and
``required``, ``items`` and ``prefixItems`` with ``minItems``/``maxItems``, ``enum``,
``const``, ``anyOf``/``oneOf``/``allOf``, local ``$ref`` (``#/$defs/...``), ``nullable``,
numeric bounds, string lengths and the common ``format``s, also when a client moved them into
the description (``{minimum: 1}``) because the API refuses them. Not covered: ``pattern`` (any
string is sent), ``not``, conditionals and ``uniqueItems`` beyond what chance gives.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import re
import uuid
from typing import Any

import jsonschema

_MAX_DEPTH = 12
_HINT = re.compile(r"(\w+): (-?\d+(?:\.\d+)?)\b")
_NUMERIC = {
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
}
_INVALID_PREFIX = "Sure! Here is the JSON you asked for:\n"


class _Builder:
    def __init__(self, root: dict[str, Any], rng: random.Random, words: list[str]) -> None:
        self.root = root
        self.rng = rng
        self.words = words or ["value"]

    def resolve(self, schema: Any) -> dict[str, Any]:
        """``schema`` with a local ``$ref`` followed (a few hops at most)."""
        for _ in range(8):
            if not isinstance(schema, dict):
                return {}
            ref = schema.get("$ref")
            if not isinstance(ref, str) or not ref.startswith("#/"):
                return schema
            target: Any = self.root
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            schema = target
        return {}

    def value(self, schema: Any, depth: int = 0) -> Any:
        schema = with_hints(self.resolve(schema))
        if depth > _MAX_DEPTH:
            return None
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self.rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                typed = [o for o in options if self.resolve(o).get("type") not in ("null", "NULL")]
                return self.value(self.rng.choice(typed or options), depth + 1)
        if isinstance(schema.get("allOf"), list):
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                part = self.resolve(part)
                merged.update(part)
                if "properties" in part:
                    merged["properties"] = {
                        **merged.get("properties", {}),
                        **part["properties"],
                    }
            rest = {k: v for k, v in schema.items() if k != "allOf"}
            return self.value({**merged, **rest}, depth + 1)
        kind = _type_of(schema)
        if kind == "object":
            return self.object(schema, depth)
        if kind == "array":
            return self.array(schema, depth)
        if kind == "integer":
            low, high = _bounds(schema, 0, 100)
            return self.rng.randint(int(low), max(int(low), int(high)))
        if kind == "number":
            low, high = _bounds(schema, 0.0, 100.0)
            return round(self.rng.uniform(low, max(low, high)), 2)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self.string(schema)

    def object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {name: self.value(sub, depth + 1) for name, sub in properties.items()}

    def array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        low = int(schema.get("minItems", 1))
        high = int(schema.get("maxItems", max(low, 3)))
        count = self.rng.randint(low, max(low, high))
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items = schema.get("items", {})
        if not isinstance(items, dict):
            items = {}
        count = max(count, len(prefix))
        return [
            self.value(prefix[i] if i < len(prefix) else items, depth + 1) for i in range(count)
        ]

    def string(self, schema: dict[str, Any]) -> str:
        rng = self.rng
        fmt = schema.get("format")
        if fmt == "date-time":
            moment = dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
                seconds=rng.randrange(365 * 86400)
            )
            return moment.isoformat().replace("+00:00", "Z")
        if fmt == "date":
            return (dt.date(2024, 1, 1) + dt.timedelta(days=rng.randrange(365))).isoformat()
        if fmt == "email":
            return f"{rng.choice(self.words).lower()}@example.com"
        if fmt in ("uri", "url"):
            return f"https://example.com/{rng.choice(self.words).lower()}"
        if fmt == "uuid":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        start = rng.randrange(len(self.words))
        text = " ".join(self.words[start : start + rng.randint(2, 8)]) or self.words[0]
        low = int(schema.get("minLength", 0))
        while len(text) < low:
            text += " " + rng.choice(self.words)
        if "maxLength" in schema:
            text = text[: int(schema["maxLength"])]
        return text


def with_hints(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` plus the numeric constraints a client moved into its description (as
    Anthropic's SDK and distillery do: ``"...{minimum: 1, maxItems: 4}"``), read as a model
    reading the description would follow them."""
    description = schema.get("description")
    if not isinstance(description, str) or not description.endswith("}"):
        return schema
    hints = {
        key: float(number) if "." in number else int(number)
        for key, number in _HINT.findall(description[description.rfind("{") :])
        if key in _NUMERIC and key not in schema
    }
    return {**schema, **hints} if hints else schema


def _type_of(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        named = [str(k) for k in kind if str(k).lower() != "null"]
        kind = named[0] if named else "null"
    if isinstance(kind, str):
        return kind.lower()  # Gemini's responseSchema names types in upper case
    if "properties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"


def _bounds(schema: dict[str, Any], low: float, high: float) -> tuple[float, float]:
    if "minimum" in schema:
        low = float(schema["minimum"])
    if "exclusiveMinimum" in schema and not isinstance(schema["exclusiveMinimum"], bool):
        low = float(schema["exclusiveMinimum"]) + 1
    if "maximum" in schema:
        high = float(schema["maximum"])
    if "exclusiveMaximum" in schema and not isinstance(schema["exclusiveMaximum"], bool):
        high = float(schema["exclusiveMaximum"]) - 1
    if high < low:  # one bound given, beyond the other's default: move the default
        capped = "maximum" in schema or "exclusiveMaximum" in schema
        floored = "minimum" in schema or "exclusiveMinimum" in schema
        if capped and not floored:
            low = high - 100
        else:
            high = low if capped else low + 100
    return low, high


def document(schema: dict[str, Any], key: bytes, prose: str) -> Any:
    """A JSON value matching ``schema``, determined by ``key``, with words from ``prose``."""
    rng = random.Random(hashlib.blake2b(b"schema\x00" + key, digest_size=16).digest())
    words = [w.strip(".,;:!?\"'()") for w in prose.split()]
    return _Builder(schema, rng, [w for w in words if w]).value(schema)


def answer_text(schema: dict[str, Any], key: bytes, prose: str) -> str:
    """The answer a structured-output request gets: compact JSON text, as the real APIs send."""
    return json.dumps(document(schema, key, prose), ensure_ascii=False, separators=(",", ":"))


def invalid_json(text: str) -> str:
    """A chatty preface and half the JSON: what a model ignoring the format sends."""
    return _INVALID_PREFIX + text[: max(1, len(text) // 2)]


def mismatch(schema: dict[str, Any], text: str) -> str:
    """JSON that parses but does not match ``schema`` (a required property dropped, or the
    wrong type); ``text`` unchanged if it is not JSON or the schema accepts anything."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    candidates: list[Any] = []
    if isinstance(value, dict):
        required = _resolve_root(schema).get("required") or []
        if required and required[0] in value:
            candidates.append({k: v for k, v in value.items() if k != required[0]})
        for name in value:
            candidates.append({**value, name: {"unexpected": [True]}})
    candidates += [["not", "an", "object"], "not an object", 0]
    validator = jsonschema.validators.validator_for(schema)(schema)
    for candidate in candidates:
        if not validator.is_valid(candidate):
            return json.dumps(candidate, ensure_ascii=False, separators=(",", ":"))
    return text


def _resolve_root(schema: dict[str, Any]) -> dict[str, Any]:
    return _Builder(schema, random.Random(0), []).resolve(schema)


def openapi_to_json_schema(schema: Any) -> Any:
    """Gemini's ``responseSchema`` (OpenAPI subset: upper-case types, ``nullable``) as JSON
    Schema, so one validator serves both of Gemini's schema fields."""
    if isinstance(schema, list):
        return [openapi_to_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: openapi_to_json_schema(value) for key, value in schema.items()}
    kind = converted.get("type")
    if isinstance(kind, str):
        converted["type"] = kind.lower()
    if converted.pop("nullable", False) and isinstance(converted.get("type"), str):
        converted["type"] = [converted["type"], "null"]
    converted.pop("propertyOrdering", None)
    return converted
