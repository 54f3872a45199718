"""The demo's ending: reports from serve's API, the decisions taken, and the exactness checks."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import httpx

from tokenmeter import semconv
from tokenmeter.reporting import UsageReport

if TYPE_CHECKING:
    from rich.console import Console

DECISION_ORDER: Final = ("allow", "warn", "downgrade", "degrade", "deny", semconv.QUOTA_UNAVAILABLE)
# Each series of the cumulative token counter, straight from the stored OTLP rows: its
# largest value is what it counted. Independent of the accounting tables the report reads.
RAW_TOKENS_SQL: Final = f"""
SELECT subject, toInt64(sum(counted)) FROM (
    SELECT Attributes[{{attribute:String}}] AS subject, max(Value) AS counted
    FROM otel_metrics_sum
    WHERE MetricName = '{semconv.METRIC_USAGE_TOKENS}'
    GROUP BY MetricName, ServiceName, ResourceAttributes, Attributes, StartTimeUnix
)
GROUP BY subject
"""  # noqa: S608 - the metric is a semconv constant; the attribute is bound


def fetch_report(api: str, token: str, by: str) -> UsageReport:
    response = httpx.get(f"{api}/v1/report", params={"by": by, "period": "day"},
                         headers={"authorization": f"Bearer {token}"}, timeout=30)  # fmt: skip
    response.raise_for_status()
    return UsageReport.from_dict(response.json())


def fetch_budgets(api: str, token: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{api}/v1/usage", headers={"authorization": f"Bearer {token}"}, timeout=30)
    response.raise_for_status()
    return list(response.json()["budgets"])


def wait_until_settled(api: str, token: str, timeout: float = 30.0) -> None:
    """Until the enforcer holds no reservation: every call's usage is in its snapshot."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(row["reserved_tokens"] == 0 for row in fetch_budgets(api, token)):
            return
        time.sleep(0.2)


def decisions(spans: Any) -> Counter[str]:
    """The quota decision on every chat and embeddings span of the run."""
    return Counter(
        str(span.attributes[semconv.TM_QUOTA_DECISION])
        for span in spans.get_finished_spans()
        if span.attributes and semconv.TM_QUOTA_DECISION in span.attributes
    )


def render_decisions(console: Console, taken: Counter[str], outcomes: Counter[str]) -> None:
    from rich.table import Table

    table = Table(title="Quota decisions taken (one per LLM call, from the spans)")
    table.add_column("decision")
    table.add_column("calls", justify="right")
    meaning = {
        "allow": "within every budget", "warn": "went ahead; a budget is past a warning threshold",
        "downgrade": "went ahead on the cheaper model of the route table",
        "degrade": "not sent: answered from retrieval only", "deny": "not sent: QuotaExceeded",
        semconv.QUOTA_UNAVAILABLE: "enforcer did not answer in time",
    }  # fmt: skip
    table.add_column("what it means")
    for action in DECISION_ORDER:
        if taken.get(action):
            table.add_row(action, f"{taken[action]:,}", meaning[action])
    console.print(table)
    console.print(f"user turns: {outcomes['answered']} answered, {outcomes['degraded']} answered from retrieval "
                  f"only, {outcomes['denied']} refused with a quota message")  # fmt: skip


def render_budgets(console: Console, budgets: list[dict[str, Any]]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="Budgets today (GET /v1/usage)")
    for name, justify in (("budget", "left"), ("subject", "left"), ("used", "right"), ("limit", "right"),
                          ("ratio", "right"), ("when exceeded", "left")):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in budgets:
        if row["limit_cost"] is not None:
            used, limit = f"{row['used_cost']} {row['currency']}", f"{row['limit_cost']} {row['currency']}"
        else:
            used, limit = f"{row['used_tokens']:,}", f"{row['limit_tokens']:,}"
        style = "red" if row["ratio"] >= 1 else "yellow" if row["ratio"] >= 0.8 else ""
        table.add_row(row["budget"], Text(row["subject"] or "(organisation)"), used, limit,
                      Text(f"{row['ratio']:.0%}", style=style), row["action"])  # fmt: skip
    console.print(table)


def raw_tokens_by(client: Any, attribute: str) -> dict[str, int]:
    rows = client.query(RAW_TOKENS_SQL, parameters={"attribute": attribute}).result_rows
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
