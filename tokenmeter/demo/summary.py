"""The demo's ending: reports from serve's API, the decisions taken, and the exactness checks."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import httpx

from tokenmeter import semconv
from tokenmeter.reporting import UsageReport
from tokenmeter.store.usage_queries import REFUSED_ERROR_TYPES

if TYPE_CHECKING:
    from rich.console import Console

DECISION_ORDER: Final = ("allow", "warn", "downgrade", "degrade", "deny", semconv.QUOTA_UNAVAILABLE)
# Each series of the cumulative token counter of one process (the demo's live one: the
# history is another), straight from the stored OTLP rows: its largest value is what it
# counted. Independent of the accounting tables the report reads.
RAW_TOKENS_SQL: Final = f"""
SELECT subject, toInt64(sum(counted)) FROM (
    SELECT Attributes[{{attribute:String}}] AS subject, max(Value) AS counted
    FROM otel_metrics_sum
    WHERE MetricName = '{semconv.METRIC_USAGE_TOKENS}'
      AND ResourceAttributes['{semconv.SERVICE_INSTANCE_ID}'] = {{instance:String}}
    GROUP BY MetricName, ServiceName, ResourceAttributes, Attributes, StartTimeUnix
)
GROUP BY subject
"""  # noqa: S608 - the metric and attribute names are semconv constants; the values are bound


def fetch_report(api: str, token: str, by: str) -> UsageReport:
    response = httpx.get(f"{api}/v1/report", params={"by": by, "period": "day"},
                         headers={"authorization": f"Bearer {token}"}, timeout=30)  # fmt: skip
    response.raise_for_status()
    return UsageReport.from_dict(response.json())


def fetch_budgets(api: str, token: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{api}/v1/usage", headers={"authorization": f"Bearer {token}"}, timeout=30)
    response.raise_for_status()
    return list(response.json()["budgets"])


def _reserved(row: dict[str, Any]) -> bool:
    """Whether the enforcer holds a reservation on the budget row (tokens, or cost in the limit's currency)."""
    return bool(row["reserved_tokens"]) or (row["reserved_cost"] is not None and Decimal(row["reserved_cost"]) != 0)


def wait_until_settled(api: str, token: str, timeout: float = 30.0) -> None:
    """Until the enforcer holds no reservation: every call's usage is in its snapshot."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_reserved(row) for row in fetch_budgets(api, token)):
            return
        time.sleep(0.2)


def decisions(spans: Any) -> Counter[tuple[str, bool]]:
    """(quota decision, refused) of every chat and embeddings span of the run; refused: the quota error was
    raised instead of sending the call (the span's error.type)."""
    return Counter(
        (str(span.attributes[semconv.TM_QUOTA_DECISION]),
         span.attributes.get(semconv.ERROR_TYPE) in REFUSED_ERROR_TYPES)
        for span in spans.get_finished_spans()
        if span.attributes and semconv.TM_QUOTA_DECISION in span.attributes
    )  # fmt: skip


def render_decisions(console: Console, taken: Counter[tuple[str, bool]], outcomes: Counter[str]) -> None:
    from rich.table import Table

    table = Table(title="Quota decisions taken (one per LLM call, from the spans)")
    table.add_column("decision")
    table.add_column("calls sent", justify="right")
    table.add_column("calls refused", justify="right")
    meaning = {
        "allow": "within every budget", "warn": "went ahead; a budget is past a warning threshold",
        "downgrade": "went ahead on the cheaper model of the route table",
        "degrade": "chat not sent: answered from retrieval only (its embeddings still run)",
        "deny": "not sent: QuotaExceeded", semconv.QUOTA_UNAVAILABLE: "enforcer did not answer in time",
    }  # fmt: skip
    table.add_column("what it means")
    for action in DECISION_ORDER:
        sent, refused = taken.get((action, False), 0), taken.get((action, True), 0)
        if sent or refused:
            table.add_row(action, f"{sent:,}" if sent else "", f"{refused:,}" if refused else "", meaning[action])
    console.print(table)
    console.print(f"user turns: {outcomes['answered']} answered, {outcomes['degraded']} answered from retrieval "
                  f"only, {outcomes['denied']} refused with a quota message")  # fmt: skip


def render_budgets(console: Console, budgets: list[dict[str, Any]]) -> None:
    from rich.table import Table
    from rich.text import Text

    # The enforcer's ratio is of used + reserved (calls in flight, and finished calls whose usage is not in
    # its snapshot yet): the table shows both, so the ratio is what its columns add up to.
    table = Table(title="Budgets today (GET /v1/usage)")
    for name, justify in (("budget", "left"), ("subject", "left"), ("used", "right"), ("reserved", "right"),
                          ("limit", "right"), ("(used + reserved) / limit", "right"),
                          ("when exceeded", "left")):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in budgets:
        if row["limit_cost"] is not None:
            used, reserved, limit = (f"{row[key]} {row['currency']}" for key in ("used_cost", "reserved_cost",
                                                                                 "limit_cost"))  # fmt: skip
        else:
            used, reserved, limit = (f"{row[key]:,}" for key in ("used_tokens", "reserved_tokens", "limit_tokens"))
        style = "red" if row["ratio"] >= 1 else "yellow" if row["ratio"] >= 0.8 else ""
        table.add_row(row["budget"], Text(row["subject"] or "(organisation)"), used,
                      reserved if _reserved(row) else "", limit, Text(f"{row['ratio']:.0%}", style=style),
                      row["action"])  # fmt: skip
    console.print(table)


def raw_tokens_by(client: Any, attribute: str, instance: str) -> dict[str, int]:
    """Tokens per value of ``attribute`` that the process ``instance`` (service.instance.id) counted."""
    rows = client.query(RAW_TOKENS_SQL, parameters={"attribute": attribute, "instance": instance}).result_rows
    return {str(subject): int(tokens) for subject, tokens in rows}


def compare(label: str, reported: Mapping[str, int], other: Mapping[str, int]) -> list[str]:
    """Lines describing every difference; empty when equal."""
    return [
        f"{label} {subject!r}: report {reported.get(subject, 0):,}, other {other.get(subject, 0):,}"
        for subject in sorted({*reported, *other})
        if reported.get(subject, 0) != other.get(subject, 0)
    ]


def tokens_by_subject(report: UsageReport) -> dict[str, int]:
    return {row.subject: row.tokens for row in report.rows}


def sent_calls_by_subject(report: UsageReport) -> dict[str, int]:
    return {row.subject: row.calls for row in report.rows if row.calls}
