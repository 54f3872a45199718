"""One insert of OTLP requests into the store: the protobuf schema ClickHouse reads them with, and the block.

The receiver's writers (:mod:`~tokenmeter.collector.ingest_writer`) insert with these; tests and
benchmarks use them to put requests into a store exactly as the receiver would.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf.internal.encoder import _VarintBytes

from tokenmeter.collector.payloads import OtlpPayload, Signal

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


@dataclass(frozen=True)
class IngestSchema:
    """How ClickHouse finds otlp_ingest.proto for ``FORMAT Protobuf``.

    chDB runs in this process, so it reads the package's file by absolute path. A
    ClickHouse server cannot see our files: it gets the schema text inline
    (``format_schema_source='string'``, ClickHouse >= 25.x), which it caches under its
    format_schema_path. (chDB would write that cache into the working directory.)
    """

    text: str
    path: Path | None = None

    @classmethod
    def for_store(cls, embedded: bool) -> IngestSchema:
        resource = resources.files("tokenmeter.collector").joinpath("otlp_ingest.proto")
        text = resource.read_text(encoding="utf-8")
        path = Path(str(resource))
        return cls(text, path if embedded and path.is_file() else None)

    def settings(self, signal: Signal) -> dict[str, str]:
        if self.path is not None:
            return {"format_schema": f"{self.path}:{signal.schema_message}"}
        return {
            "format_schema_source": "string",
            "format_schema": self.text,
            "format_schema_message_name": signal.schema_message,
        }


def insert_payloads(client: Client, signal: Signal, payloads: list[OtlpPayload], schema: IngestSchema) -> None:
    """One insert of length-delimited requests into the signal's input table.

    A block of one request can repeat byte for byte (an SDK retry arriving alone, the
    one-by-one retry of a failed batch), so ClickHouse's block deduplication stays on for
    it. A block of several is whatever was queued at that moment and does not repeat;
    hashing it for the deduplication window of every table the views fill cost ~14 % of
    an insert (docs/benchmarks.md), so those inserts skip it.
    """
    block = b"".join(_VarintBytes(len(payload.protobuf)) + payload.protobuf for payload in payloads)
    settings = schema.settings(signal)
    if len(payloads) > 1:
        settings = {**settings, **without_block_deduplication(client)}
    client.raw_insert(signal.input_table, insert_block=block, fmt="Protobuf", settings=settings)


def without_block_deduplication(client: Client) -> dict[str, str]:
    """Insert settings that skip ClickHouse's block deduplication.

    The tables keep a deduplication window for the production collector, whose retries
    re-send a block byte for byte. Newer ClickHouse (chDB 4.4's included) reads
    ``deduplicate_insert`` and ignores ``insert_deduplicate``; older servers know only
    the latter.
    """
    if "deduplicate_insert" in client.server_settings:
        return {"deduplicate_insert": "disable"}
    return {"insert_deduplicate": "0"}
