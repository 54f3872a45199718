"""CSV exports: the table is chosen by the header (the first of the provider's tables whose required columns are
all there), each following line is a record. Alibaba Cloud's bills may come as GB 18030 rather than UTF-8."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

from tokenmeter.reconcile.export_formats import ExportFormat
from tokenmeter.reconcile.export_records import Record
from tokenmeter.reconcile.export_rows import ExportError, Where

ENCODINGS = ("utf-8-sig", "gb18030")


def decode(data: bytes, name: str) -> str:
    for encoding in ENCODINGS:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ExportError(f"{name}: not text in {' or '.join(ENCODINGS)}")


def _header_key(text: str) -> str:
    """A header as compared: no spaces, lower case (``Instance ID``, ``InstanceID`` and ``实例 ID`` match)."""
    return "".join(text.replace("\ufeff", "").split()).lower()


def header_columns(table: ExportFormat, header: list[str]) -> dict[str, int] | None:
    """Field -> column index for the fields the header has; None when a required one is missing."""
    positions = {_header_key(text): index for index, text in reversed(list(enumerate(header)))}
    found = {}
    for name, spellings in table.columns.items():
        index = next((positions[_header_key(s)] for s in spellings if _header_key(s) in positions), None)
        if index is not None:
            found[name] = index
    return found if all(name in found for name in table.required) else None


def csv_records(text: str, name: str, tables: tuple[ExportFormat, ...]) -> tuple[ExportFormat, Iterator[Record]]:
    """The table the header matches and the records of the lines after it."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise ExportError(f"{name}: empty file (no header line)")
    for table in tables:
        columns = header_columns(table, header)
        if columns is not None:
            return table, _records(reader, name, header, columns)
    expected = "; ".join(f"{table.name}: {', '.join(table.columns[f][0] for f in table.required)}" for table in tables)
    raise ExportError(f"{name}, line 1: the header {', '.join(header)!r} is none of the exports known: {expected}")


def _records(reader: Iterator[list[str]], name: str, header: list[str], columns: dict[str, int]) -> Iterator[Record]:
    names = {field: header[index].strip() for field, index in columns.items()}
    for line_number, cells in enumerate(reader, start=2):
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) < len(header):
            raise ExportError(f"{name}, line {line_number}: {len(cells)} columns, the header has {len(header)}")
        values = {field: cells[index] for field, index in columns.items()}
        yield Record(values, Where(name, f"line {line_number}"), names)
