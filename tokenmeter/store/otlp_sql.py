"""SQL fragments that read OTLP protobuf inside ClickHouse.

The embedded receiver hands each OTLP request's bytes to ClickHouse unchanged
(``FORMAT Protobuf`` with tokenmeter/collector/otlp_ingest.proto); ``Null`` input
tables take them and materialized views flatten them into the exporter-shaped
``otel_*`` tables. These helpers spell the repeated parts of that SQL: the column
type of an OTLP attribute list and the expressions that turn one into the
``Map(LowCardinality(String), String)`` the collector's clickhouse exporter writes.

Attribute values become strings the way the exporter renders them: strings as they
are, ints in decimal, bools ``true``/``false``, doubles by ClickHouse's shortest
round-trip form, bytes base64, arrays and maps as JSON. Presence comes from the
oneof: every scalar member is ``Nullable`` so an int 0 is told apart from "unset".
"""

from __future__ import annotations

from typing import Final

# One AnyValue nested inside an array or map attribute; deeper nesting stays raw bytes.
_LEAF_VALUE_TYPE: Final = (
    "Tuple(string_value Nullable(String), bool_value Nullable(Bool), int_value Nullable(Int64), "
    "double_value Nullable(Float64), array_value Nullable(String), kvlist_value Nullable(String), "
    "bytes_value Nullable(String))"
)
ANY_VALUE_TYPE: Final = (
    "Tuple(string_value Nullable(String), bool_value Nullable(Bool), int_value Nullable(Int64), "
    "double_value Nullable(Float64), "
    f"array_value Tuple(values Array({_LEAF_VALUE_TYPE})), "
    f"kvlist_value Tuple(values Array(Tuple(key String, value {_LEAF_VALUE_TYPE}))), "
    "bytes_value Nullable(String))"
)
ATTRIBUTES_TYPE: Final = f"Array(Tuple(key String, value {ANY_VALUE_TYPE}))"


def _leaf_json(value: str) -> str:
    """A nested AnyValue as one JSON value (what the exporter puts inside arrays and maps)."""
    return (
        f"multiIf({value}.string_value IS NOT NULL, toJSONString(assumeNotNull({value}.string_value)), "
        f"{value}.int_value IS NOT NULL, toString(assumeNotNull({value}.int_value)), "
        f"{value}.bool_value IS NOT NULL, if(assumeNotNull({value}.bool_value), 'true', 'false'), "
        f"{value}.double_value IS NOT NULL, toJSONString(assumeNotNull({value}.double_value)), "
        f"{value}.bytes_value IS NOT NULL, toJSONString(base64Encode(assumeNotNull({value}.bytes_value))), "
        "'null')"
    )


def any_value_string(value: str) -> str:
    """SQL for one AnyValue (of ANY_VALUE_TYPE) as the exporter's string form.

    ``coalesce`` over the Nullable members, not ``multiIf``: measured twice as fast in
    the ingest views, and exactly one member is set. Bool's own ``toString`` gives
    ``true``/``false``. Empty arrays and maps yield NULL so the next member is tried.
    """
    array_json = (
        f"if(empty({value}.array_value.values), NULL, concat('[', arrayStringConcat("
        f"arrayMap(_leaf -> {_leaf_json('_leaf')}, {value}.array_value.values), ','), ']'))"
    )
    map_json = (
        f"if(empty({value}.kvlist_value.values), NULL, concat('{{', arrayStringConcat("
        f"arrayMap(_entry -> concat(toJSONString(_entry.key), ':', {_leaf_json('_entry.value')}), "
        f"{value}.kvlist_value.values), ','), '}}'))"
    )
    return (
        f"coalesce({value}.string_value, toString({value}.int_value), toString({value}.bool_value), "
        f"toString({value}.double_value), base64Encode({value}.bytes_value), {array_json}, {map_json}, '')"
    )


def attributes_map(attributes: str) -> str:
    """SQL turning an OTLP attribute list (of ATTRIBUTES_TYPE) into the exporter's Map."""
    return (
        f"CAST(mapFromArrays(arrayMap(_kv -> _kv.key, {attributes}), "
        f"arrayMap(_kv -> {any_value_string('_kv.value')}, {attributes})), "
        "'Map(LowCardinality(String), String)')"
    )


_EXEMPLAR_TYPE: Final = (
    f"Tuple(filtered_attributes {ATTRIBUTES_TYPE}, time_unix_nano UInt64, as_double Nullable(Float64), "
    "as_int Nullable(Int64), span_id String, trace_id String)"
)
EXEMPLARS_TYPE: Final = f"Array({_EXEMPLAR_TYPE})"


def exemplar_columns(exemplars: str) -> str:
    """The exporter's five ``Exemplars.*`` columns from an OTLP exemplar list."""
    columns = {
        "FilteredAttributes": attributes_map("_ex.filtered_attributes"),
        "TimeUnix": "fromUnixTimestamp64Nano(toInt64(_ex.time_unix_nano))",
        "Value": "coalesce(_ex.as_double, toFloat64(_ex.as_int), 0)",
        "SpanId": "lower(hex(_ex.span_id))",
        "TraceId": "lower(hex(_ex.trace_id))",
    }
    return ",\n    ".join(
        f"arrayMap(_ex -> {expression}, {exemplars}) AS `Exemplars.{name}`" for name, expression in columns.items()
    )


def attribute(column: str, key: str) -> str:
    """One attribute of an exporter-shaped map column, e.g. ``SpanAttributes['enduser.id']``; ``key`` is a
    :mod:`tokenmeter.semconv` name (never user input)."""
    return f"{column}['{key}']"
