"""JSON exports: API responses as saved. One page object (``{"object": "page", "data": [buckets]}``), a JSON
array of pages, or one page per line (JSON Lines). Each bucket's results are records, read through the table
whose ``json_object`` is the result's ``object``; a result of another kind (audio, images) is left out and
reported. Numbers are read as their text (Decimal), never as floats."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

from tokenmeter.reconcile.export_formats import ExportFormat
from tokenmeter.reconcile.export_records import Record
from tokenmeter.reconcile.export_rows import ExportError, Where


def json_pages(text: str, name: str) -> list[tuple[str, Any]]:
    """(label, page) for each page: ``page 2`` of an array, ``line 3`` of JSON Lines, ``page 1`` of one object."""
    try:
        document = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as whole:
        lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
        if whole.msg != "Extra data" or len(lines) < 2:  # one value, then more: JSON Lines
            raise ExportError(f"{name}, line {whole.lineno}, column {whole.colno}: not JSON ({whole.msg})") from None
        pages = []
        for number, line in lines:
            try:
                pages.append((f"line {number}", json.loads(line, parse_float=Decimal)))
            except json.JSONDecodeError as error:
                raise ExportError(f"{name}, line {number}, column {error.colno}: not JSON ({error.msg})") from None
        return pages
    if isinstance(document, list):
        return [(f"page {index}", page) for index, page in enumerate(document, start=1)]
    return [("page 1", document)]


def json_records(
    pages: list[tuple[str, Any]], name: str, tables: tuple[ExportFormat, ...]
) -> Iterator[tuple[ExportFormat | str, Record]]:
    """Each result with its table (or, for a result no table reads, the reason it is left out)."""
    by_object = {table.json_object: table for table in tables}
    for label, page in pages:
        for where, bucket in _buckets(page, Where(name, label)):
            for index, result in enumerate(bucket["results"]):
                at = Where(name, f"{where.line}.results[{index}]")
                if not isinstance(result, dict):
                    raise at.error("a result is not a JSON object")
                kind = str(result.get("object", ""))
                table = by_object.get(kind)
                if table is None:
                    yield f"results of object {kind!r} (not in the tables)", Record({}, at, {})
                    continue
                yield table, _record(table, bucket, result, at)


def _buckets(page: Any, where: Where) -> Iterator[tuple[Where, Mapping[str, Any]]]:
    data = page.get("data") if isinstance(page, dict) else None
    if not isinstance(data, list):
        raise where.error('not an API page: expected {"object": "page", "data": [...]}')
    for index, bucket in enumerate(data):
        at = Where(where.file, f"{where.line}, data[{index}]")
        if not isinstance(bucket, dict) or not isinstance(bucket.get("results"), list):
            raise at.error('not a bucket: expected {"start_time": ..., "results": [...]}')
        yield at, bucket


def _record(table: ExportFormat, bucket: Mapping[str, Any], result: Mapping[str, Any], where: Where) -> Record:
    values, columns = {}, {}
    for name, keys in table.columns.items():
        source = bucket if name in ("day", "end") else result
        found, value = _lookup(source, keys[0])
        if found:
            values[name], columns[name] = value, keys[0]
        elif name in table.required and name != "model":  # a missing model is the table's own hint
            raise where.at(keys[0]).error("missing")
    return Record(values, where, columns | {name: keys[0] for name, keys in table.columns.items()})


def _lookup(source: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    value: Any = source
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value
