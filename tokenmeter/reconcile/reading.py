"""Read a provider's export files into one :class:`ImportedExport`, all or nothing.

A file is JSON when its text starts with ``{`` or ``[``, else CSV; a ZIP (DeepSeek's monthly download) is read
member by member (its ``.csv`` and ``.json`` files). Every file is read before anything is written, so a bad
value anywhere leaves the store as it was.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from tokenmeter.reconcile.csv_exports import csv_records, decode
from tokenmeter.reconcile.export_formats import PROVIDERS, formats_of, zone_of
from tokenmeter.reconcile.export_records import rows_of_record
from tokenmeter.reconcile.export_rows import ExportError, ImportedExport, ProviderRow, sum_rows
from tokenmeter.reconcile.json_exports import json_pages, json_records

MEMBER_SUFFIXES = (".csv", ".json", ".jsonl")


def read_export(provider: str, paths: Iterable[str | Path], aliases: Mapping[str, str] | None = None) -> ImportedExport:
    """The rows of ``paths`` (one provider's exports); ExportError naming the file, line and column of a bad value."""
    if provider not in PROVIDERS:
        raise ExportError(f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)}")
    rows: list[ProviderRow] = []
    skipped: dict[str, int] = {}
    names = []
    for path in paths:
        for name, data in _contents(Path(path)):
            names.append(name)
            for reason_or_rows in _file_rows(provider, name, data, aliases or {}):
                if isinstance(reason_or_rows, str):
                    skipped[f"{name}: {reason_or_rows}"] = skipped.get(f"{name}: {reason_or_rows}", 0) + 1
                else:
                    rows.extend(reason_or_rows)
    currencies = sorted({row.currency for row in rows if row.currency})
    if len(currencies) > 1:
        raise ExportError(f"{', '.join(names)}: costs in {' and '.join(currencies)}; import one currency at a time")
    return ImportedExport(provider, zone_of(provider), sum_rows(rows, ", ".join(names)), tuple(names), skipped)


def _contents(path: Path) -> list[tuple[str, bytes]]:
    try:
        if not zipfile.is_zipfile(path):
            return [(str(path), path.read_bytes())]
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if m.lower().endswith(MEMBER_SUFFIXES)]
            if not members:
                raise ExportError(f"{path}: the ZIP holds no {', '.join(MEMBER_SUFFIXES)} file")
            return [(f"{path}:{member}", archive.read(member)) for member in sorted(members)]
    except (OSError, zipfile.BadZipFile) as exc:
        raise ExportError(f"{path}: cannot be read ({exc})") from None


def _file_rows(provider: str, name: str, data: bytes, aliases: Mapping[str, str]) -> Iterable[list[ProviderRow] | str]:
    text = decode(data, name)
    if text.lstrip()[:1] in ("{", "["):
        tables = formats_of(provider, "json")
        if not tables:
            raise ExportError(f"{name}: JSON, and no {provider} export is read as JSON (see docs/reconcile.md)")
        for table, record in json_records(json_pages(text, name), name, tables):
            yield table if isinstance(table, str) else rows_of_record(table, record, aliases)
        return
    tables = formats_of(provider, "csv")
    if not tables:
        raise ExportError(f"{name}: CSV, and no {provider} export is read as CSV (see docs/reconcile.md)")
    table, records = csv_records(text, name, tables)
    for record in records:
        yield rows_of_record(table, record, aliases)
