"""How long the web dashboard's panels take on a month of a busy deployment (chDB), beside Grafana's expansion.

The page runs the 12 panels of Overview and Departments and users through serve's one store
reader thread, so a page load costs about the sum of the panel queries. This script builds
(or reuses, --keep) the store of bench/usage_query_latency.py: 5,000 users in 50
departments, a month of counter points, ~10 million rows in usage_counter_minutely. Then,
for the last day and for the whole month, with no filter and with one user, it times each
panel's query as the web page runs it (values bound as parameters,
tokenmeter.dashboards.macros.bind) side by side with Grafana's expansion of the same SQL
(values pasted in, tests/support/grafana_macros.py), checks both return the same rows, and prints
per-panel medians, the page total and the ratio web / Grafana.

    .venv/bin/python bench/dashboard_panels.py [--rows 10000000] [--repeat 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from tokenmeter.dashboards.macros import TimeRange, bind
from tokenmeter.web.panel_data import WEB_BOARDS

HERE = Path(__file__).resolve().parent


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


usage_bench = _load("usage_query_latency", HERE / "usage_query_latency.py")
grafana = _load("grafana_macros", HERE.parent / "tests" / "support" / "grafana_macros.py")


def _median_ms(run: Any, repeat: int) -> float:
    return statistics.median(usage_bench.timed(run, repeat))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    usage_bench.add_month_store_arguments(parser)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per panel and case")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tokenmeter-dashboard-") as tmp:
        path = args.keep or Path(tmp) / "chdb"
        client = usage_bench.open_month_store(path, args.rows)
        [(rows,)] = client.query("SELECT count() FROM usage_counter_minutely").result_rows
        month_end = usage_bench.MONTH_END
        ranges = {"last day": month_end - timedelta(days=1), "month": usage_bench.MONTH_START}
        selections: dict[str, dict[str, list[str]]] = {"all": {}, "one user": {"user": ["user-42"]}}
        print(f"usage_counter_minutely: {rows:,} rows; median of {args.repeat} runs per query, ms\n")
        print(f"{'board/panel':<48} {'range':<9} {'filter':<9} {'web':>9} {'grafana':>9} {'ratio':>6}")
        totals: dict[tuple[str, str], list[float]] = {}
        for range_name, start in ranges.items():
            span = TimeRange.with_auto_interval(start, month_end)
            for selection_name, selection in selections.items():
                literal_selection = {name: values or None for name, values in selection.items()}
                for board_name, board in WEB_BOARDS.items():
                    for panel in board.panels:
                        sql, parameters = bind(panel.sql, selection, span)
                        literal = grafana.expand(panel.sql, literal_selection, span, {})
                        web_rows = client.query(sql, parameters=parameters).result_rows
                        grafana_rows = client.query(literal).result_rows
                        if sorted(map(repr, web_rows)) != sorted(map(repr, grafana_rows)):
                            print(f"MISMATCH: {board_name}/{panel.id} {range_name} {selection_name}", file=sys.stderr)
                            return 1
                        web = _median_ms(lambda: client.query(sql, parameters=parameters), args.repeat)  # noqa: B023
                        literal_ms = _median_ms(lambda: client.query(literal), args.repeat)  # noqa: B023
                        total = totals.setdefault((range_name, selection_name), [0.0, 0.0])
                        total[0] += web
                        total[1] += literal_ms
                        label = f"{board_name}/{panel.id} {panel.title}"[:48]
                        print(f"{label:<48} {range_name:<9} {selection_name:<9} {web:>9.1f} {literal_ms:>9.1f} "
                              f"{web / literal_ms:>6.2f}")  # fmt: skip
        print("\npage load (12 panels, one after another):")
        for (range_name, selection_name), (web, literal_ms) in totals.items():
            print(f"  {range_name:<9} {selection_name:<9} web {web:>8.0f} ms   grafana {literal_ms:>8.0f} ms   "
                  f"ratio {web / literal_ms:.2f}")  # fmt: skip
        client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
