"""One record of an export (a CSV line, a JSON result) turned into rows through its table.

A record holds the raw values of the table's fields that the file has; a field the file lacks is absent (a
token type the export does not report), an empty value is 0. A record the table does not cover (a row of
another service in a bill, a token type the table has no entry for) is left out with the reason, which the
import reports; a value that cannot be read is an error naming the file, line and column.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from tokenmeter.reconcile.export_formats import ExportFormat, unit_key
from tokenmeter.reconcile.export_rows import ProviderRow, RowKey, Where, day_value, decimal_value, unix_day_value
from tokenmeter.reconcile.model_names import export_model_key
from tokenmeter.reconcile.token_types import COST

DAY_SECONDS = 86_400
_CURRENCY = re.compile(r"^[A-Z]{3}$")


@dataclass(frozen=True)
class Record:
    values: Mapping[str, object]  # field -> raw value, for the fields the file has
    where: Where  # the file and the line or element
    columns: Mapping[str, str]  # field -> its column or key in the file (for errors)

    def at(self, name: str) -> Where:
        return self.where.at(self.columns.get(name, name))

    def text(self, name: str) -> str:
        value = self.values.get(name)
        return "" if value is None else str(value).strip()


@dataclass(frozen=True)
class RecordKey:
    day: date
    model: str
    workspace: str
    api_key: str


def rows_of_record(table: ExportFormat, record: Record, aliases: Mapping[str, str]) -> list[ProviderRow] | str:
    """The record's rows, or why the table does not cover it."""
    if table.compound is not None:
        split = _split_compound(table, record)
        if isinstance(split, str):
            return split
        record = split
    quantities = _quantities(table, record)
    if isinstance(quantities, str):
        return quantities
    key = _record_key(table, record)
    model_key = export_model_key(key.model, aliases)
    rows = [
        ProviderRow(RowKey(key.day, key.model, key.workspace, key.api_key, token_type), model_key, quantity)
        for token_type, quantity in quantities.items()
    ]
    if "cost" in table.columns and "cost" in record.values:
        currency = (record.text("currency") or table.default_currency).upper()
        if not _CURRENCY.match(currency):
            raise record.at("currency").error(f"{currency!r} is not a currency code (ISO 4217, e.g. CNY)")
        amount = decimal_value(record.values["cost"], record.at("cost"))
        rows.append(
            ProviderRow(RowKey(key.day, key.model, key.workspace, key.api_key, COST), model_key, amount, currency)
        )
    return rows


def _split_compound(table: ExportFormat, record: Record) -> Record | str:
    assert table.compound is not None
    name, separator, parts = table.compound
    pieces = record.text(name).split(separator)
    if len(pieces) != len(parts):
        return f"{record.columns.get(name, name)} not of {len(parts)} parts separated by {separator!r}"
    values = {**record.values, **{part: piece.strip() for part, piece in zip(parts, pieces, strict=True)}}
    return Record(values, record.where, {**record.columns, **dict.fromkeys(parts, record.columns.get(name, name))})


def _record_key(table: ExportFormat, record: Record) -> RecordKey:
    raw_day = record.values.get("day")
    day = (
        unix_day_value(raw_day, record.at("day"))
        if table.day_kind == "unix_seconds"
        else day_value(raw_day, record.at("day"))
    )
    if table.day_kind == "unix_seconds" and record.values.get("end") is not None:
        end = decimal_value(record.values["end"], record.at("end"))
        if end - Decimal(str(raw_day)) > DAY_SECONDS:
            raise record.at("end").error(
                "a bucket longer than a day cannot be put on one day: ask with bucket_width=1d"
            )
    model = record.text("model")
    if table.model_rule == "before_comma":
        model = model.split(",")[0].strip()
    if not model:
        raise record.at("model").error(table.model_hint or "no model")
    api_key = next((record.text(name) for name in table.api_key if record.text(name)), "")
    if table.api_key_pattern and not re.match(table.api_key_pattern, api_key):
        api_key = ""
    return RecordKey(day, model, record.text("workspace"), api_key)


def _quantities(table: ExportFormat, record: Record) -> dict[str, Decimal] | str:
    """Token type -> count: each token column the record has (wide), or its one typed count (long)."""
    found: dict[str, Decimal] = {}
    for name, token_types in table.token_fields.items():
        if name in record.values:
            value = decimal_value(record.values[name], record.at(name))
            for token_type in token_types:
                found[token_type] = found.get(token_type, Decimal(0)) + value
    if not table.type_values:
        return found
    type_name = record.text("type")
    token_types = table.type_values.get(type_name)
    if token_types is None:
        return f"{record.columns.get('type', 'type')} {type_name!r} (not in the table)"
    count = decimal_value(record.values.get("quantity"), record.at("quantity")) * _unit(table, record)
    return {token_type: count for token_type in token_types}


def _unit(table: ExportFormat, record: Record) -> int:
    if not table.units:
        return 1
    unit = record.text("unit")
    per = table.units.get(unit_key(unit))
    if per is None:
        raise record.at("unit").error(f"unknown unit {unit!r}; the table knows {', '.join(table.units)}")
    return per
