"""The row types (storage/rows.py) and the Arrow schemas (storage/schema.py) cannot drift."""

from __future__ import annotations

import types
import typing
from datetime import datetime
from typing import Any

import pyarrow as pa
import pytest

from distillery.storage.rows import ROW_TYPES
from distillery.storage.schema import TABLES


def _fits(annotation: Any, arrow: pa.DataType) -> bool:
    """Whether values of the Python ``annotation`` are what pyarrow writes as ``arrow``."""
    origin = typing.get_origin(annotation)
    if origin is types.UnionType or origin is typing.Union:
        return all(
            _fits(arg, arrow) for arg in typing.get_args(annotation) if arg is not type(None)
        )
    if origin is list:
        (item,) = typing.get_args(annotation)
        return pa.types.is_list(arrow) and _fits(item, arrow.value_type)
    if origin is dict:  # a chat message: a struct of strings
        key, value = typing.get_args(annotation)
        return (
            pa.types.is_struct(arrow)
            and key is str
            and all(_fits(value, arrow.field(i).type) for i in range(arrow.num_fields))
        )
    if origin is typing.Literal:  # a column of a few known strings (delivery)
        values = typing.get_args(annotation)
        return all(isinstance(v, str) for v in values) and pa.types.is_string(arrow)
    if annotation is str:
        return pa.types.is_string(arrow) or isinstance(arrow, pa.JsonType)
    if annotation is int:
        return pa.types.is_integer(arrow)
    if annotation is float:
        return pa.types.is_floating(arrow)
    if annotation is datetime:
        return pa.types.is_timestamp(arrow)
    return False


def _optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def test_every_table_has_a_row_type() -> None:
    assert set(ROW_TYPES) == set(TABLES)


@pytest.mark.parametrize("table", sorted(TABLES))
def test_row_type_has_the_schema_columns_with_compatible_types(table: str) -> None:
    schema, row = TABLES[table], ROW_TYPES[table]
    hints = typing.get_type_hints(row)
    required: frozenset[str] = vars(row)["__required_keys__"]
    assert set(hints) == set(schema.names)
    for field in schema:
        assert _fits(hints[field.name], field.type), (table, field.name, field.type)
        if not field.nullable:  # always there and never null
            assert field.name in required, (table, field.name)
            assert not _optional(hints[field.name]), (table, field.name)


def test_the_check_catches_a_mismatch() -> None:
    """The comparison above fails on a wrong type, so its passing means something."""
    assert not _fits(int, pa.string())
    assert not _fits(str | None, pa.int32())
    assert not _fits(list[str], pa.list_(pa.uint64()))
    assert not _fits(dict[str, str], pa.struct([("n", pa.int8())]))
    assert _fits(list[dict[str, str]], TABLES["samples"].field("messages").type)
    assert not _fits(typing.Literal["online", "batch"], pa.int8())
    assert not _fits(typing.Literal[1, 2], pa.string())


@pytest.mark.parametrize("table", ["samples", "rejected", "failures"])
def test_every_table_of_requests_says_how_its_answer_was_bought(table: str) -> None:
    hints = typing.get_type_hints(ROW_TYPES[table])
    assert typing.get_args(hints["delivery"]) == ("online", "batch")
    assert "delivery" in vars(ROW_TYPES[table])["__required_keys__"]  # set on every row
    assert TABLES[table].field("provider_batch_id").type == pa.string()
