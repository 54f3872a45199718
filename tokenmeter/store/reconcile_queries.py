# ruff: noqa: S608 - the SQL is this module's own constants; values are bound parameters
"""The store's side of `tokenmeter reconcile` (docs/reconcile.md): importing a provider's export into
``provider_usage`` and reading both sides of the comparison.

Importing is idempotent: the values already held for the export's keys are read first (FINAL: the latest of
each) and only new or changed ones are written, in one insert, after every file was read. tokenmeter's side:
``llm_usage FINAL`` (a re-sent span counts once) in the period's days (the provider's time zone), the calls
that ran (not refused by a quota) and were not answered by the repeat-answer cache (the provider never saw
those); requests are the calls without an error. Every value is a bound parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Final

from tokenmeter.reconcile.cells import ProviderCell, TokenmeterCell
from tokenmeter.reconcile.comparison import DEFAULT_THRESHOLD, Reconciliation, compare
from tokenmeter.reconcile.export_rows import ImportedExport, RowKey
from tokenmeter.reconcile.periods import ReconcilePeriod
from tokenmeter.reconcile.reading import read_export
from tokenmeter.reconcile.token_types import (
    AUDIO_INPUT,
    AUDIO_OUTPUT,
    CACHE_WRITE,
    CACHED_INPUT,
    INPUT,
    OUTPUT,
    REASONING,
    REQUESTS,
)
from tokenmeter.store.usage_queries import CALL_RAN

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from tokenmeter.catalog import ModelCatalog

TABLE: Final = "provider_usage"
COLUMNS: Final = (
    "provider",
    "day",
    "model",
    "workspace",
    "api_key",
    "token_type",
    "model_key",
    "quantity",
    "currency",
    "day_zone",
    "source_file",
    "imported_at",
)
DAYS: Final = "provider = {provider:String} AND day >= {first:Date} AND day <= {last:Date}"
HELD_SQL: Final = f"""
    SELECT day, model, workspace, api_key, token_type, model_key, quantity, currency
    FROM {TABLE} FINAL WHERE {DAYS}"""
BILLED_SQL: Final = f"SELECT DISTINCT model_key FROM {TABLE} FINAL WHERE provider = {{provider:String}}"
# tokenmeter's columns in the order of the comparison's token types.
TOKEN_SUMS: Final = (
    (REQUESTS, "countIf(error_type = '')"),
    (INPUT, "sum(input_tokens)"),
    (CACHED_INPUT, "sum(cache_read_input_tokens)"),
    (CACHE_WRITE, "sum(cache_creation_input_tokens)"),
    (OUTPUT, "sum(output_tokens)"),
    (REASONING, "sum(reasoning_output_tokens)"),
    (AUDIO_INPUT, "sum(audio_input_tokens)"),
    (AUDIO_OUTPUT, "sum(audio_output_tokens)"),
)
TOKENMETER_SQL: Final = f"""
    SELECT toDate(time, {{zone:String}}) AS day, effective_model, virtual, {", ".join(sql for _, sql in TOKEN_SUMS)},
           sumMapIf([currency], [assumeNotNull(cost)], NOT unpriced AND cost IS NOT NULL) AS costs,
           countIf(unpriced OR cost IS NULL) AS unpriced_calls
    FROM llm_usage FINAL
    WHERE time >= {{start:DateTime64(9, 'UTC')}} AND time < {{end:DateTime64(9, 'UTC')}}
      AND {CALL_RAN} AND NOT cache_hit
    GROUP BY day, effective_model, virtual
    ORDER BY day, effective_model, virtual"""


@dataclass(frozen=True)
class ImportResult:
    written: int  # values new or changed
    unchanged: int


def write_export(client: Client, imported: ImportedExport, now: datetime | None = None) -> ImportResult:
    """Write the export's values that the store does not hold yet (or holds with another value), in one insert."""
    days = imported.days
    if days is None:
        return ImportResult(0, 0)
    parameters = {"provider": imported.provider, "first": days[0], "last": days[1]}
    held = {RowKey(*row[:5]): tuple(row[5:]) for row in client.query(HELD_SQL, parameters=parameters).result_rows}
    fresh = [row for row in imported.rows if held.get(row.key) != (row.model_key, row.quantity, row.currency)]
    if fresh:
        at, source = now or datetime.now(UTC), "; ".join(imported.files)
        values = [[imported.provider, *astuple(row.key), row.model_key, row.quantity, row.currency, imported.zone,
                   source, at] for row in fresh]  # fmt: skip
        client.insert(TABLE, values, column_names=list(COLUMNS))
    return ImportResult(len(fresh), len(imported.rows) - len(fresh))


def provider_cells(client: Client, provider: str, period: ReconcilePeriod) -> list[ProviderCell]:
    parameters = {"provider": provider, "first": period.first, "last": period.last}
    return [
        ProviderCell(day, key, model, workspace, api_key, token_type, Decimal(quantity), currency)
        for day, model, workspace, api_key, token_type, key, quantity, currency in client.query(
            HELD_SQL, parameters=parameters
        ).result_rows
    ]


def billed_model_keys(client: Client, provider: str) -> set[str]:
    """Every model key the provider has billed in any export imported."""
    return {str(row[0]) for row in client.query(BILLED_SQL, parameters={"provider": provider}).result_rows}


def tokenmeter_cells(client: Client, period: ReconcilePeriod) -> list[TokenmeterCell]:
    start, end = period.utc_bounds()
    result = client.query(TOKENMETER_SQL, parameters={"zone": period.zone, "start": start, "end": end})
    cells = []
    for day, model, virtual, *sums, costs, unpriced in result.result_rows:
        counts = {name: int(value) for (name, _), value in zip(TOKEN_SUMS, sums, strict=True)}
        cells.append(
            TokenmeterCell(
                day,
                str(model),
                bool(virtual),
                counts,
                {str(c): Decimal(a) for c, a in zip(*costs, strict=True)},
                int(unpriced),
            )
        )
    return cells


def reconcile(
    client: Client,
    provider: str,
    paths: Iterable[str | Path] = (),
    *,
    month: str | None = None,
    first: str | None = None,
    last: str | None = None,
    catalog: ModelCatalog | None = None,
    threshold: Decimal = DEFAULT_THRESHOLD,
    aliases: Mapping[str, str] | None = None,
) -> Reconciliation:
    """Import ``paths`` (the provider's export files; none: compare what is held) and compare the period
    (``month`` YYYY-MM, ``first``/``last`` days, else the months the files cover) with tokenmeter's calls.

    Raises ExportError (a file's bad value; nothing written) or ValueError (a bad period or option).
    """
    imported = read_export(provider, list(paths), aliases)
    period = ReconcilePeriod.parse(imported.zone, month, first, last, imported.days)
    result = write_export(client, imported) if imported.rows else None
    model_catalog = catalog or _catalog()
    cells = tokenmeter_cells(client, period)
    provider_of = {cell.model: _provider(model_catalog, cell.model) for cell in cells}
    reconciliation = compare(
        provider,
        period,
        provider_cells(client, provider, period),
        cells,
        billed=billed_model_keys(client, provider),
        provider_of=provider_of,
        threshold=threshold,
    )
    if result is not None:
        reconciliation.notes.append(
            f"imported {', '.join(imported.files)}: {result.written} values written, {result.unchanged} already held"
        )
    reconciliation.notes.extend(f"{reason}: {count} rows left out" for reason, count in imported.skipped.items())
    return reconciliation


def _catalog() -> ModelCatalog:
    from tokenmeter.catalog import ModelCatalog
    from tokenmeter.settings import get_settings

    return ModelCatalog.load(get_settings().models)


def _provider(catalog: ModelCatalog, model: str) -> str | None:
    entry = catalog.lookup(model)
    return entry.provider if entry is not None else None
