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

With ``--against PANELS_PY`` (another version's tokenmeter/dashboards/panels.py, e.g. from
``git show REV:tokenmeter/dashboards/panels.py > /tmp/panels_rev.py``) it instead times each panel's web
query of this version and of that one, alternating run by run, checks both return the same rows, and
prints the medians and the ratio this / that.

    .venv/bin/python bench/dashboard_panels.py --against /tmp/panels_rev.py [--repeat 7] [--keep DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
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
    sys.modules[name] = module  # (dataclasses look their module up while the file runs)
    spec.loader.exec_module(module)
    return module


usage_bench = _load("usage_query_latency", HERE / "usage_query_latency.py")
grafana = _load("grafana_macros", HERE.parent / "tests" / "support" / "grafana_macros.py")


def _median_ms(run: Any, repeat: int) -> float:
    return statistics.median(usage_bench.timed(run, repeat))


def _boards_of(panels_py: Path) -> dict[str, Any]:
    """The page's boards as another version of panels.py defines them (loaded under its own name)."""
    other = _load("other_panels", panels_py)
    return {"overview": other.overview(), "departments": other.departments_and_users()}


def _alternating_ms(first: Any, second: Any, repeat: int) -> tuple[float, float]:
    """Medians of two (warm) queries timed run by run in turn, so both see the same machine."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for run, spent in ((first, times[0]), (second, times[1])):
            started = time.perf_counter()
            run()
            spent.append((time.perf_counter() - started) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])


def compare_versions(client: Any, against: Path, cases: dict[str, Any], repeat: int) -> int:
    """This version's panels against another's: same rows, and time this / that."""
    others = _boards_of(against)
    print(f"{'board/panel':<48} {'case':<19} {'this':>9} {'that':>9} {'ratio':>6}")
    totals: dict[str, list[float]] = {}
    for case, (selection, span) in cases.items():
        for board_name, board in WEB_BOARDS.items():
            for panel in board.panels:
                this_sql, this_parameters = bind(panel.sql, selection, span)
                that_sql, that_parameters = bind(others[board_name].panel(panel.id).sql, selection, span)
                this_rows = client.query(this_sql, parameters=this_parameters).result_rows
                that_rows = client.query(that_sql, parameters=that_parameters).result_rows
                if sorted(map(repr, this_rows)) != sorted(map(repr, that_rows)):
                    print(f"MISMATCH: {board_name}/{panel.id} {case}", file=sys.stderr)
                    return 1
                this_ms, that_ms = _alternating_ms(lambda: client.query(this_sql, parameters=this_parameters),  # noqa: B023
                                                   lambda: client.query(that_sql, parameters=that_parameters),  # noqa: B023
                                                   repeat)  # fmt: skip
                total = totals.setdefault(case, [0.0, 0.0])
                total[0], total[1] = total[0] + this_ms, total[1] + that_ms
                label = f"{board_name}/{panel.id} {panel.title}"[:48]
                print(f"{label:<48} {case:<19} {this_ms:>9.1f} {that_ms:>9.1f} {this_ms / that_ms:>6.2f}")
    print("\npage load (12 panels, one after another):")
    for case, (this_ms, that_ms) in totals.items():
        print(f"  {case:<19} this {this_ms:>8.0f} ms   that {that_ms:>8.0f} ms   ratio {this_ms / that_ms:.2f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    usage_bench.add_month_store_arguments(parser)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per panel and case")
    parser.add_argument("--against", type=Path, help="another version's panels.py: time this one against it")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tokenmeter-dashboard-") as tmp:
        path = args.keep or Path(tmp) / "chdb"
        client = usage_bench.open_month_store(path, args.rows)
        [(rows,)] = client.query("SELECT count() FROM usage_counter_minutely").result_rows
        month_end = usage_bench.MONTH_END
        ranges = {"last day": month_end - timedelta(days=1), "month": usage_bench.MONTH_START}
        selections: dict[str, dict[str, list[str]]] = {"all": {}, "one user": {"user": ["user-42"]}}
        if args.against:
            cases = {f"{r}, {s}": (chosen, TimeRange.with_auto_interval(start, month_end))
                     for r, start in ranges.items() for s, chosen in selections.items()}  # fmt: skip
            print(f"usage_counter_minutely: {rows:,} rows; median of {args.repeat} alternating runs, ms\n")
            return compare_versions(client, args.against, cases, args.repeat)
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
