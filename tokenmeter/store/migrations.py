"""Schema migrations: numbered SQL files rendered for one server or a cluster, applied once.

Files live in ``tokenmeter/store/sql/NNNN_name.sql``: statements separated by a line
ending in ``;``. They hold ``${...}`` placeholders that :func:`render` fills in:

==============================  ==================================  ==========================================
placeholder                     single server (chDB or ClickHouse)  ``--cluster NAME``
==============================  ==================================  ==========================================
``${on_cluster}``               (nothing)                           ``ON CLUSTER 'NAME'``
``${local(t)}``                 ``t``                               ``t_local`` (the shard-local table)
``${engine(E)}``                ``E``                               ``ReplicatedE('/clickhouse/tables/{shard}/
                                                                    {database}/{table}', '{replica}')``
``${distributed(t, key)}``      (statement left out)                ``CREATE TABLE t ... ENGINE = Distributed``
``${dedup_window}``             ``non_replicated_deduplication_     ``replicated_deduplication_window = 10000``
                                window = 10000``
``${raw_ttl(expr)}``            ``TTL expr + toIntervalDay(N)``     same (nothing when ``--ttl-days 0``)
``${aggregate_ttl(expr)}``      ``TTL expr + toIntervalDay(400)``   same
``${otlp_attributes_type}``     the column type of an OTLP attribute list read with FORMAT Protobuf
``${otlp_attributes_map(e)}``   that list as the exporter's ``Map(LowCardinality(String), String)``
``${otlp_any_value_type}``,     one OTLP AnyValue's column type, and the value as the exporter's string
``${otlp_any_value_string(e)}``
``${otlp_exemplars_type}``,     an OTLP exemplar list's column type, and the exporter's ``Exemplars.*`` columns
``${otlp_exemplar_columns(e)}``
``${sane_counter_value(v)}``,   ``v`` is a value / ``(v, t)`` a point tokenmeter's counters may hold
``${sane_counter_point(v, t)}`` (finite, 0 to 2**53, time in 2000-2099: :mod:`tokenmeter.store.counter_points`)
``${name(C)}``                  the telemetry name :mod:`tokenmeter.semconv` holds as ``C``, quoted:
                                ``${name(ENDUSER_ID)}`` is ``'enduser.id'``
==============================  ==================================  ==========================================

Each applied file is recorded in ``tokenmeter_migrations`` with the SHA-256 of its text with
the names filled in (``${name(C)}`` only: a file that spelled a name before keeps its checksum);
a later change to an applied file is an error naming the file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Final

from tokenmeter import semconv
from tokenmeter.errors import TokenmeterError
from tokenmeter.store import counter_points, otlp_sql

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

MIGRATIONS_TABLE: Final = "tokenmeter_migrations"
DEFAULT_RAW_TTL_DAYS: Final = 30
DEFAULT_AGGREGATE_TTL_DAYS: Final = 400
DEDUP_WINDOW_BLOCKS: Final = 10_000
REPLICA_PATH: Final = "/clickhouse/tables/{shard}/{database}/{table}"

_APPLIED_SQL: Final = (
    "SELECT version, argMax(name, applied_at), argMax(checksum, applied_at) FROM tokenmeter_migrations GROUP BY version"
)
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_PLACEHOLDER = re.compile(r"\$\{(\w+)(?:\(([^()]*(?:\([^()]*\)[^()]*)*)\))?\}")
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENGINES = frozenset({"MergeTree", "ReplacingMergeTree", "AggregatingMergeTree", "SummingMergeTree"})
_STATEMENT_END = re.compile(r";[ \t]*(?:\n|$)")
_NAME = re.compile(r"\$\{name\((\w*)\)\}")


class MigrationError(TokenmeterError):
    """A migration cannot be rendered or applied; the message names the file and the fix."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str = field(repr=False)

    @property
    def file_name(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(fill_in_names(self.sql, self.file_name).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RenderOptions:
    """How migrations are rendered: one server, or a cluster; retention in days (0 = keep)."""

    cluster: str | None = None
    raw_ttl_days: int = DEFAULT_RAW_TTL_DAYS
    aggregate_ttl_days: int = DEFAULT_AGGREGATE_TTL_DAYS

    def __post_init__(self) -> None:
        if self.cluster is not None and not _CLUSTER_NAME.match(self.cluster):
            raise MigrationError(
                f"cluster name {self.cluster!r} is not valid: use letters, digits, '_', '-' or '.' "
                "(the name under <remote_servers> in the server config)"
            )
        for label, days in (("--ttl-days", self.raw_ttl_days), ("aggregate TTL", self.aggregate_ttl_days)):
            if days < 0:
                raise MigrationError(f"{label} must be 0 (keep forever) or a positive number of days, got {days}")


@dataclass
class MigrationResult:
    applied: list[Migration] = field(default_factory=list)
    already_applied: list[Migration] = field(default_factory=list)


def load_migrations() -> list[Migration]:
    """The migrations shipped in tokenmeter/store/sql, in version order."""
    found: list[Migration] = []
    for entry in resources.files("tokenmeter.store").joinpath("sql").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number: {[m.file_name for m in found]}")
    return found


def semconv_name(constant: str) -> str:
    """``${name(C)}``: the quoted telemetry name of :mod:`tokenmeter.semconv`'s constant ``C``."""
    value = getattr(semconv, constant, None) if constant.isupper() else None
    if not isinstance(value, str):
        raise ValueError(f"tokenmeter.semconv has no name {constant!r}")
    return f"'{value}'"


def fill_in_names(sql: str, source: str = "<sql>") -> str:
    """The text with every ``${name(C)}`` filled in (the rest of the placeholders left)."""
    try:
        return _NAME.sub(lambda match: semconv_name(match.group(1)), sql)
    except ValueError as exc:
        raise MigrationError(f"{source}: {exc}") from None


def render(sql: str, options: RenderOptions, source: str = "<sql>") -> list[str]:
    """Fill in the placeholders of one migration file; returns its statements."""
    handlers: dict[str, Callable[[list[str]], str]] = {
        "on_cluster": lambda args: _no_args(args, lambda: _on_cluster(options)),
        "local": lambda args: _local(_one_identifier(args), options),
        "engine": lambda args: _engine(args, options),
        "distributed": lambda args: _distributed(args, options),
        "dedup_window": lambda args: _no_args(args, lambda: _dedup_window(options)),
        "raw_ttl": lambda args: _ttl(args, options.raw_ttl_days),
        "aggregate_ttl": lambda args: _ttl(args, options.aggregate_ttl_days),
        "otlp_attributes_type": lambda args: _no_args(args, lambda: otlp_sql.ATTRIBUTES_TYPE),
        "otlp_any_value_type": lambda args: _no_args(args, lambda: otlp_sql.ANY_VALUE_TYPE),
        "otlp_attributes_map": lambda args: otlp_sql.attributes_map(_one_expression(args)),
        "otlp_any_value_string": lambda args: otlp_sql.any_value_string(_one_expression(args)),
        "otlp_exemplars_type": lambda args: _no_args(args, lambda: otlp_sql.EXEMPLARS_TYPE),
        "otlp_exemplar_columns": lambda args: otlp_sql.exemplar_columns(_one_expression(args)),
        "sane_counter_value": lambda args: counter_points.sane_value_sql(_one_expression(args)),
        "sane_counter_point": lambda args: counter_points.sane_point_sql(*_expressions(args, 2)),
        "name": lambda args: semconv_name(_one_expression(args)),
    }

    def substitute(match: re.Match[str]) -> str:
        name, raw_args = match.group(1), match.group(2)
        handler = handlers.get(name)
        if handler is None:
            raise MigrationError(f"{source}: unknown placeholder ${{{name}}}; known: {sorted(handlers)}")
        args = [] if raw_args is None else _split_args(raw_args)
        try:
            return handler(args)
        except ValueError as exc:
            raise MigrationError(f"{source}: bad placeholder {match.group(0)}: {exc}") from None

    rendered = _PLACEHOLDER.sub(substitute, sql)
    statements = []
    for chunk in _STATEMENT_END.split(rendered):
        body = "\n".join(line for line in chunk.splitlines() if not line.lstrip().startswith("--")).strip()
        if body:
            statements.append("\n".join(line.rstrip() for line in body.splitlines() if line.strip()))
    return statements


def render_all(
    options: RenderOptions, migrations: Sequence[Migration] | None = None
) -> list[tuple[Migration, list[str]]]:
    """Every migration with its rendered statements (what ``db migrate --dry-run`` prints)."""
    chosen = load_migrations() if migrations is None else migrations
    return [(migration, render(migration.sql, options, migration.file_name)) for migration in chosen]


def migrations_table_sql(options: RenderOptions) -> str:
    if options.cluster is None:
        engine = "ReplacingMergeTree"
    else:  # one path for every shard: all replicas of the cluster share the record
        path = f"/clickhouse/tables/tokenmeter/{{database}}/{MIGRATIONS_TABLE}"
        engine = f"ReplicatedReplacingMergeTree('{path}', '{{replica}}')"
    return (
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} {_on_cluster(options)} (\n"
        "    version UInt32,\n    name String,\n    checksum String,\n    applied_at DateTime64(3, 'UTC')\n"
        f") ENGINE = {engine}\nORDER BY version"
    )


def applied_migrations(client: Client) -> dict[int, tuple[str, str]]:
    """version -> (name, checksum) of the migrations recorded in the store."""
    result = client.query(_APPLIED_SQL)
    return {int(version): (str(name), str(checksum)) for version, name, checksum in result.result_rows}


def migrate(
    client: Client,
    options: RenderOptions,
    migrations: Sequence[Migration] | None = None,
    progress: Callable[[str], None] = lambda _line: None,
) -> MigrationResult:
    """Apply the migrations not yet recorded, in order. Re-running applies nothing.

    Raises MigrationError when an applied file has changed since (its checksum differs).
    """
    chosen = load_migrations() if migrations is None else list(migrations)
    client.command(migrations_table_sql(options))
    applied = applied_migrations(client)
    result = MigrationResult()
    for migration in chosen:
        recorded = applied.get(migration.version)
        if recorded is None:
            continue
        if recorded[1] != migration.checksum:
            raise MigrationError(
                f"migration {migration.file_name} was changed after it was applied (checksum {recorded[1][:12]}… "
                f"in {MIGRATIONS_TABLE}, {migration.checksum[:12]}… now); restore the file and put the change "
                "in a new, higher-numbered migration"
            )
    for migration in chosen:
        if migration.version in applied:
            result.already_applied.append(migration)
            continue
        statements = render(migration.sql, options, migration.file_name)
        progress(f"applying {migration.file_name} ({len(statements)} statements)")
        for statement in statements:
            try:
                client.command(statement)
            except Exception as exc:
                first_line = statement.splitlines()[0]
                raise MigrationError(f"{migration.file_name}: statement {first_line!r} failed: {exc}") from exc
        client.insert(
            MIGRATIONS_TABLE,
            [[migration.version, migration.name, migration.checksum, datetime.now(UTC)]],
            column_names=["version", "name", "checksum", "applied_at"],
        )
        result.applied.append(migration)
    return result


# --- placeholder renderers ------------------------------------------------------


def _split_args(raw: str) -> list[str]:
    args, depth, current = [], 0, []
    for char in raw:
        if char == "," and depth == 0:
            args.append("".join(current).strip())
            current = []
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current.append(char)
    if raw.strip():
        args.append("".join(current).strip())
    return args


def _no_args(args: list[str], make: Callable[[], str]) -> str:
    if args:
        raise ValueError("takes no arguments")
    return make()


def _one_identifier(args: list[str]) -> str:
    if len(args) != 1 or not _IDENTIFIER.match(args[0]):
        raise ValueError("needs one table name")
    return args[0]


def _one_expression(args: list[str]) -> str:
    if len(args) != 1 or not args[0]:
        raise ValueError("needs one expression")
    return args[0]


def _expressions(args: list[str], count: int) -> list[str]:
    if len(args) != count or not all(args):
        raise ValueError(f"needs {count} expressions")
    return args


def _on_cluster(options: RenderOptions) -> str:
    return "" if options.cluster is None else f"ON CLUSTER '{options.cluster}'"


def _local(table: str, options: RenderOptions) -> str:
    return table if options.cluster is None else f"{table}_local"


def _engine(args: list[str], options: RenderOptions) -> str:
    if not args or args[0] not in _ENGINES:
        raise ValueError(f"needs an engine from {sorted(_ENGINES)}")
    engine, engine_args = args[0], args[1:]
    if options.cluster is None:
        return f"{engine}({', '.join(engine_args)})"
    replicated_args = [f"'{REPLICA_PATH}'", "'{replica}'", *engine_args]
    return f"Replicated{engine}({', '.join(replicated_args)})"


def _distributed(args: list[str], options: RenderOptions) -> str:
    if len(args) != 2 or not _IDENTIFIER.match(args[0]):
        raise ValueError("needs a table name and a sharding key")
    if options.cluster is None:
        return ""
    table, key, local = args[0], args[1], _local(args[0], options)
    return (
        f"CREATE TABLE IF NOT EXISTS {table} {_on_cluster(options)} AS {local}\n"
        f"ENGINE = Distributed('{options.cluster}', currentDatabase(), {local}, {key})"
    )


def _dedup_window(options: RenderOptions) -> str:
    setting = "non_replicated_deduplication_window" if options.cluster is None else "replicated_deduplication_window"
    return f"{setting} = {DEDUP_WINDOW_BLOCKS}"


def _ttl(args: list[str], days: int) -> str:
    if len(args) != 1:
        raise ValueError("needs one time expression")
    return "" if days == 0 else f"TTL {args[0]} + toIntervalDay({days})"
