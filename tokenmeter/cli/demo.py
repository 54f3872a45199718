"""`tokenmeter demo` (what `make demo` runs) and `tokenmeter demo-traffic` (docker-compose's simulated users)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from tokenmeter.cli.exit_codes import EXIT_BAD_INPUT
from tokenmeter.cli.output_console import output_console


def add_demo_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the whole pipeline on the embedded store with simulated users (make demo)",
        description=(
            "Start serve with a demo policy and a local LLM server, run three departments' simulated users "
            "through the instrumented openai SDK, print the report and check it against the store."
        ),
    )
    demo.add_argument("--dir", type=Path, default=Path(".tokenmeter-demo"), metavar="DIR",
                      help="where the demo's store and logs go; a previous demo there is replaced, unless "
                           "another process (its dashboard) still serves it")  # fmt: skip
    demo.add_argument("--scale", type=float, default=1.0, help="share of the workload to run (default 1)")
    demo.add_argument("--port", type=int, default=9400,
                      help="where the web dashboard is served afterwards (default 9400)")  # fmt: skip
    demo.add_argument("--no-dashboard", action="store_true",
                      help="end after the report (the default when not run from a terminal)")  # fmt: skip
    demo.add_argument("--show", action="store_true",
                      help="no new run: serve the last demo's data with the web dashboard until Ctrl-C")  # fmt: skip
    demo.add_argument("--screenshot", type=Path, metavar="PNG",
                      help="also write a screenshot of the web dashboard (needs Chromium and Playwright)")  # fmt: skip
    demo.set_defaults(run=lambda args, _stdout, _stdin: run_demo_command(args))

    traffic = commands.add_parser(
        "demo-traffic",
        help="the demo's simulated users against a running collector and enforcer (docker-compose)",
        description=(
            "Rounds of the demo workload through the instrumented openai SDK, exporting OTLP/HTTP to "
            "--otlp-endpoint and asking the enforcer at --enforcer-url (token: TOKENMETER_ENFORCER_TOKEN; "
            "TOKENMETER_OTLP_TOKEN is sent to the collector when set)."
        ),
    )
    traffic.add_argument("--otlp-endpoint", required=True, metavar="URL", help="OTLP/HTTP, e.g. http://otelcol:4318")
    traffic.add_argument("--enforcer-url", required=True, metavar="URL", help="e.g. http://enforcer:9400")
    traffic.add_argument("--rounds", type=int, default=0, help="rounds to run; 0 runs until SIGTERM (default)")
    traffic.add_argument("--scale", type=float, default=1.0, help="share of the workload per round (default 1)")
    traffic.set_defaults(run=lambda args, _stdout, _stdin: run_traffic_command(args))


def run_demo_command(args: argparse.Namespace) -> int:
    from tokenmeter.demo.run import DemoError, run_demo, show_dashboard

    if not 0 < args.scale <= 1:
        return _bad_input("demo", f"--scale must be above 0 and at most 1, got {args.scale}")
    if not 0 < args.port < 65536:
        return _bad_input("demo", f"--port must be a TCP port, got {args.port}")
    try:
        if args.show:
            return show_dashboard(args.dir, args.port, output_console(highlight=False))
        return run_demo(args.dir, args.scale, None if args.no_dashboard else args.port, args.screenshot)
    except DemoError as exc:
        return _bad_input("demo", str(exc))


def run_traffic_command(args: argparse.Namespace) -> int:
    from tokenmeter.demo.run import Endpoints
    from tokenmeter.demo.traffic import run_traffic
    from tokenmeter.settings import get_settings

    settings = get_settings()
    if settings.enforcer_token is None:
        return _bad_input("demo-traffic", "set TOKENMETER_ENFORCER_TOKEN to the enforcer's token")
    if args.rounds < 0 or not 0 < args.scale <= 1:
        return _bad_input("demo-traffic", "--rounds must be 0 or more and --scale above 0 and at most 1")
    endpoints = Endpoints(
        otlp_http=args.otlp_endpoint.rstrip("/"),
        enforcer=args.enforcer_url.rstrip("/"),
        enforcer_token=settings.enforcer_token.get_secret_value(),
        otlp_token=settings.otlp_token.get_secret_value() if settings.otlp_token else None,
    )
    return run_traffic(endpoints, args.rounds, args.scale)


def _bad_input(command: str, message: str, stderr: TextIO = sys.stderr) -> int:
    stderr.write(f"tokenmeter {command}: {message}\n")
    return EXIT_BAD_INPUT
