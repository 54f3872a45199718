"""Run the demo: serve + a local LLM server + simulated users, then a report and an exactness check."""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import IO, Any, Final
from zoneinfo import ZoneInfo

from tokenmeter import semconv
from tokenmeter.demo import invoice
from tokenmeter.demo.llm_server import DemoLLMServer, LedgerLine
from tokenmeter.demo.workload import EMBEDDING_MODEL, Call, plan
from tokenmeter.errors import TokenmeterError
from tokenmeter.store.client import holder_pid

MARKER: Final = ".tokenmeter-demo"
WORKERS: Final = 6
READY_TIMEOUT_SECONDS: Final = 120.0
DASHBOARD_PORT: Final = 9400  # serve's default API port: the page is at http://127.0.0.1:9400/
DEMO_CATALOG: Final = "models.yaml"  # the built-in DeepSeek entries with a price change mid-month (demo/invoice.py)
SILENT_MODELS: Final = frozenset({"qwen2.5-14b-instruct"})  # "an old local server": never reports usage
DASHBOARD_RANGE: Final = "30d"  # what the printed dashboard link shows: the month of history and today


class DemoError(TokenmeterError):
    """The demo cannot go on; the message says why."""


def live_instance_id() -> str:
    """service.instance.id of this process's live traffic (the history has its own: demo/history.py)."""
    return f"demo-{os.getpid()}"


def prepare_directory(directory: Path) -> None:
    """An empty demo directory; a previous demo's data is replaced, anything else is refused.

    A previous demo's store still served (its dashboard: `tokenmeter demo --show`) is refused
    too: chDB holds an exclusive flock on ``<store>/status`` while it runs, so the demo takes
    that lock itself, without waiting, and keeps it while it deletes.
    """
    if directory.exists() and any(directory.iterdir()):
        if not (directory / MARKER).exists():
            raise DemoError(f"{directory} exists and is not a tokenmeter demo directory; choose another with --dir")
        with _store_lock(directory / "chdb"):
            shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text("made by `tokenmeter demo`; removed and made again by the next run\n")


@contextmanager
def _store_lock(store: Path) -> Iterator[None]:
    """Hold the chDB store's lock (DemoError naming the holder when another process has it)."""
    status = store / "status"
    try:
        descriptor = os.open(status, os.O_RDONLY)
    except FileNotFoundError:
        yield  # no store, or one that never ran: nothing holds it
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = holder_pid(status) or " (PID unknown)"
            raise DemoError(
                f"the previous demo's store {store} is in use by another process{holder} (probably its "
                "dashboard, `tokenmeter demo --show` / `make dashboard`); stop that process (Ctrl-C in its "
                "terminal) and run the demo again, or run it in another directory with --dir"
            ) from None
        yield
    finally:
        os.close(descriptor)


class ServeProcess:
    """`tokenmeter serve` on the demo's chDB directory, ports picked by the OS (the API's too unless given)."""

    def __init__(self, directory: Path, api_port: int = 0, log_name: str = "serve.log") -> None:
        self.directory = directory
        self.log_name = log_name
        policy = directory / "policy.yaml"
        policy.write_text(resources.files("tokenmeter.demo").joinpath("policy.yaml").read_text(encoding="utf-8"))
        self.store_url = f"chdb://{directory / 'chdb'}"
        self.env = {**os.environ, "XDG_DATA_HOME": str(directory / "xdg")}
        if (directory / DEMO_CATALOG).exists():  # the demo's prices (demo/invoice.py): the enforcer's estimates
            self.env["TOKENMETER_MODELS"] = str(directory / DEMO_CATALOG)
        self.args = [
            sys.executable, "-m", "tokenmeter.cli", "serve", "--clickhouse-url", self.store_url,
            "--policy", str(policy), "--otlp-grpc-port", "0", "--otlp-http-port", "0", "--api-port", str(api_port),
            "--refresh-interval", "0.5", "--settle-seconds", "2",
        ]  # fmt: skip
        self.log: IO[str] | None = None
        self.process: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}

    def start(self) -> None:
        self.log = (self.directory / self.log_name).open("w", encoding="utf-8")
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            self.args, stdout=subprocess.PIPE, stderr=self.log, text=True, env=self.env
        )
        assert self.process.stdout is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(READY_TIMEOUT_SECONDS)
        if not line or not line[0]:
            self.stop()
            raise DemoError(f"tokenmeter serve did not start; see {self.directory / self.log_name}")
        self.info = json.loads(line[0])

    def dashboard_url(self) -> str:
        return f"{self.info['api']}/"

    @property
    def token(self) -> str:
        return (self.directory / "xdg" / "tokenmeter" / "api-token").read_text(encoding="utf-8").strip()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        if self.log is not None:
            self.log.close()


@dataclass(frozen=True)
class Endpoints:
    """Where the instrumented workload sends its telemetry and asks for quota decisions."""

    otlp_http: str  # e.g. http://127.0.0.1:4318
    enforcer: str  # e.g. http://127.0.0.1:9400
    enforcer_token: str
    otlp_token: str | None = None


def _demo_settings(endpoints: Endpoints, hash_key: str, answer_cache: str | None, models: Path | None) -> Any:
    from tokenmeter.settings import Settings

    # propagate="loopback": the demo's own model server counts per user from the baggage (by default only hops get it).
    # local_count="always": every call is also counted locally, so the drift panel has rows on every run (the
    # default samples 10 % of calls by trace id, and a small demo could draw none).
    # answer_cache="memory" by default: the demo shows what the repeat-answer cache saves.
    # stream_usage="inject": streams report the server's usage too, with DeepSeek's cache hits (a local count of a
    # stream cannot know them), so the month reconciles with the provider's export to the token.
    return Settings(enforcer_url=endpoints.enforcer, enforcer_token=endpoints.enforcer_token, hash_key=hash_key,
                    propagate="loopback", local_count="always", answer_cache=answer_cache, models=models,
                    stream_usage="inject")  # fmt: skip


@contextmanager
def instrumented(endpoints: Endpoints, hash_key: str, export_interval_ms: int = 1000,
                 answer_cache: str | None = "memory", models: Path | None = None) -> Iterator[Any]:  # fmt: skip
    """tokenmeter's instrumentation in this process, exporting over OTLP/HTTP and asking the enforcer;
    ``answer_cache``: the repeat-answer cache's place (docs/answer-cache.md), None: off; ``models``: the catalog."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tokenmeter.catalog import ModelCatalog
    from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
    from tokenmeter.tokenizers import TokenizerRegistry

    headers = {"authorization": f"Bearer {endpoints.otlp_token}"} if endpoints.otlp_token else None
    process = {semconv.SERVICE_NAME: "chatchat-demo", semconv.SERVICE_INSTANCE_ID: live_instance_id()}
    resource = Resource.create(process)
    spans = InMemorySpanExporter()  # for the decisions table at the end
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoints.otlp_http}/v1/traces", headers=headers))
    )
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    exporter = OTLPMetricExporter(endpoint=f"{endpoints.otlp_http}/v1/metrics", headers=headers)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=export_interval_ms)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            settings=_demo_settings(endpoints, hash_key, answer_cache, models),
                            registry=TokenizerRegistry(ModelCatalog.load(models)), skip_dep_check=True)  # fmt: skip
    try:
        yield spans
    finally:
        instrumentor.uninstrument()  # flushes the finisher, spans and counters
        meter_provider.shutdown()
        tracer_provider.shutdown()


def make_call(client: Any, call: Call) -> str:
    """One user's turn; returns what happened from the user's side."""
    import tokenmeter

    person = call.person
    retrieved = 3  # passages in the prompt (workload.plan)
    with tokenmeter.attribution(user=person.user, department=person.department, app=person.app), \
            tokenmeter.retrieval(retrieved, top_score=call.top_score):  # fmt: skip
        try:
            if call.embed_first:
                client.embeddings.create(model=EMBEDDING_MODEL, input=call.messages[-1]["content"])
            if call.stream:
                for _chunk in client.chat.completions.create(
                    model=person.model, messages=call.messages, max_tokens=person.max_tokens, stream=True
                ):
                    pass
            else:
                client.chat.completions.create(model=person.model, messages=call.messages, max_tokens=person.max_tokens)
        except tokenmeter.QuotaDegraded:
            return "degraded"  # Chatchat would answer from the retrieved passages only
        except tokenmeter.QuotaExceeded:
            return "denied"
    return "answered"


def run_workload(base_url: str, calls: list[Call], progress: Any | None) -> Counter[str]:
    """The calls on WORKERS threads with think time; ``progress``: a rich Progress, or None."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="sk-demo", max_retries=0)
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    task = progress.add_task("simulated users", total=len(calls)) if progress is not None else None

    def one(index_and_call: tuple[int, Call]) -> None:
        index, call = index_and_call
        time.sleep(random.Random(index).uniform(0.1, 0.5))  # noqa: S311 - think time, not a secret
        outcome = make_call(client, call)
        with lock:
            outcomes[outcome] += 1
        if progress is not None:
            progress.advance(task)

    with ThreadPoolExecutor(WORKERS, thread_name_prefix="demo-user") as pool:
        list(pool.map(one, enumerate(calls)))
    return outcomes


def run_demo(directory: Path, scale: float = 1.0, dashboard_port: int | None = DASHBOARD_PORT,
             screenshot: Path | None = None) -> int:  # fmt: skip
    """The whole demo; returns the exit code (1 when a check of the totals fails).

    Afterwards the dashboard is served on ``dashboard_port`` until Ctrl-C when someone is at the
    terminal (``None``: never); otherwise the way to open it is printed.
    """
    from tokenmeter.cli.output_console import output_console

    console = output_console(highlight=False)  # printed commands are never split across lines
    started = time.monotonic()
    directory = directory.resolve()
    prepare_directory(directory)
    serve = _run_and_check(directory, scale, console)
    if serve is None:
        return 1
    _print_next_steps(console, serve, time.monotonic() - started)
    if screenshot is not None:
        take_screenshot(directory, screenshot, console)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if dashboard_port is not None and interactive:
        return show_dashboard(directory, dashboard_port, console)
    console.print(f"\nWeb dashboard: http://127.0.0.1:{dashboard_port or DASHBOARD_PORT}/ while "
                  f"`tokenmeter demo --show --dir {directory}` (make dashboard) runs; it asks for the API token "
                  f"in {directory / 'xdg' / 'tokenmeter' / 'api-token'}.", soft_wrap=True, markup=False)  # fmt: skip
    return 0


def _run_and_check(directory: Path, scale: float, console: Any) -> ServeProcess | None:
    """Serve, the month of history and today's traffic, the checks of the totals and the month's reconciliation
    with the provider's bill; the (stopped) serve, or None when a check failed."""
    from tokenmeter.catalog import ModelCatalog
    from tokenmeter.tokenizers import TokenizerRegistry

    price_change = datetime.combine(datetime.now(UTC).date() - timedelta(days=15), datetime.min.time(), UTC)
    models = invoice.write_demo_catalog(directory, price_change)
    console.print(f"[bold]1/6[/] tokenmeter serve on an embedded ClickHouse store in {directory} ...")
    serve = ServeProcess(directory)
    serve.start()
    llm = DemoLLMServer(TokenizerRegistry(ModelCatalog.load(models)), SILENT_MODELS).start()
    try:
        try:
            first_day, past_ledger = _backfill_history(serve, llm, scale, console)
            reports, outcomes, cache_hits = _run_and_report(serve, llm, scale, console)
        finally:
            serve.stop()
        if not _check(serve, reports, outcomes, cache_hits=cache_hits, llm=llm, console=console):
            return None
        bypassed = invoice.bypass(llm.base_url)  # a script's own HTTP calls: billed, never seen by tokenmeter
    finally:
        llm.stop()
    month = invoice.MonthOfCalls(serve.store_url, first_day, (past_ledger, llm.ledger), models,
                                 ModelCatalog.load(models))  # fmt: skip
    return serve if invoice.reconcile_month(month, bypassed, price_change, directory / "deepseek-export", console) \
        else None  # fmt: skip


def _print_next_steps(console: Any, serve: ServeProcess, seconds: float) -> None:
    directory = serve.directory
    console.print(f"\nDone in {seconds:.0f} s. The data stays in {directory}:")
    console.print(f"  tokenmeter report --clickhouse-url {serve.store_url} --by user --period day")
    console.print(f"  tokenmeter report --clickhouse-url {serve.store_url} --by department --period month"
                  "   # the month so far, history included")  # fmt: skip
    console.print(f"  tokenmeter serve --clickhouse-url {serve.store_url} --policy {directory / 'policy.yaml'}"
                  "   # then: tokenmeter check --model qwen-max --user zhang.wei --department 研发部")  # fmt: skip
    console.print("  Grafana dashboards for the same data: docs/dashboards.md")


def show_dashboard(directory: Path, port: int, console: Any) -> int:
    """Serve a finished demo's data with the dashboard until Ctrl-C."""
    directory = directory.resolve()
    if not (directory / MARKER).exists() or not (directory / "chdb").is_dir():
        raise DemoError(f"no demo data in {directory}: run `tokenmeter demo --dir {directory}` first")
    serve = ServeProcess(directory, api_port=port, log_name="serve-dashboard.log")
    try:
        serve.start()
    except DemoError:
        log = directory / "serve-dashboard.log"
        raise DemoError(f"could not serve the dashboard on 127.0.0.1:{port} (in use?); see {log}, "
                        "or choose another port with --port") from None  # fmt: skip
    from tokenmeter.web import token_link

    # The last 30 days: the history and today (the page's own default is the last hour).
    link = token_link(serve.dashboard_url(), serve.token, view=f"range={DASHBOARD_RANGE}")
    console.print(
        f"\nWeb dashboard of the demo's data: {link}",
        soft_wrap=True,
        markup=False,
    )  # one line: terminals make the whole link clickable
    console.print("  (the link hands the page the demo's API token; Ctrl-C stops serving)")
    stop = threading.Event()
    # Ctrl-C, or the terminal closing (SIGHUP) or a kill (SIGTERM): stop serve too rather than leave it running.
    previous = {signum: signal.signal(signum, lambda *_: stop.set())
                for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}  # fmt: skip
    try:
        while not stop.is_set() and serve.process is not None and serve.process.poll() is None:
            stop.wait(0.5)
        console.print("stopping ...")
    finally:
        serve.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def take_screenshot(directory: Path, path: Path, console: Any) -> None:
    """The dashboard of the demo's data as a PNG (README's picture), from headless Chromium."""
    from tokenmeter.web.browser import BrowserError, screenshot

    serve = ServeProcess(directory, log_name="serve-screenshot.log")
    serve.start()
    try:
        written = screenshot(serve.dashboard_url(), serve.token, path, view=f"range={DASHBOARD_RANGE}")
    except BrowserError as exc:
        raise DemoError(str(exc)) from None
    finally:
        serve.stop()
    console.print(f"  screenshot of the web dashboard: {written}")


def _progress(console: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("     {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console)


def _backfill_history(serve: ServeProcess, llm: DemoLLMServer, scale: float,
                      console: Any) -> tuple[date, dict[tuple[str, str], LedgerLine]]:  # fmt: skip
    """The 30 days before today, through the same pipeline, dated in the past (demo/history.py); returns the
    first day's date (UTC) and the history's model server's ledger."""
    import yaml

    from tokenmeter.demo import history

    console.print(f"     OTLP {serve.info['otlp_http']}, API and enforcer {serve.info['api']}, "
                  f"policy {serve.directory / 'policy.yaml'}; local LLM server {llm.base_url}")  # fmt: skip
    policy = yaml.safe_load((serve.directory / "policy.yaml").read_text(encoding="utf-8"))
    zone = ZoneInfo(str(policy["timezone"]))
    days = history.history_days(datetime.now(UTC), zone, scale)
    console.print(f"[bold]2/6[/] a month of history: the same users' office hours ({zone.key}) from "
                  f"{days[0].day} to {days[-1].day}, dated in the past, through the same pipeline ...")  # fmt: skip
    endpoints = Endpoints(serve.info["otlp_http"], serve.info["api"], serve.token)
    past_llm = DemoLLMServer(llm.registry, llm.silent_models).start()  # today's server counts today only
    try:
        with _progress(console) as bar:
            made = history.backfill(endpoints, past_llm.base_url, days, bar, serve.directory / DEMO_CATALOG)
    finally:
        past_llm.stop()
    console.print(f"     {made:,} calls on {len(days)} days (weekends: the nightly job only)")
    return days[0].hour_ends[0].date(), past_llm.ledger


def _run_and_report(serve: ServeProcess, llm: DemoLLMServer, scale: float,
                    console: Any) -> tuple[dict[str, Any], Counter[str], Counter[str]]:  # fmt: skip
    """The reports, the users' outcomes, and the answers the cache gave per requested model."""
    from tokenmeter.catalog import ModelCatalog
    from tokenmeter.demo import savings, summary
    from tokenmeter.reporting import render_table

    calls = plan(scale=scale)
    console.print(f"[bold]3/6[/] today: {len(calls)} questions from {len({c.person.user for c in calls})} users in "
                  "3 departments, through the instrumented openai SDK ...")  # fmt: skip
    endpoints = Endpoints(serve.info["otlp_http"], serve.info["api"], serve.token)
    models = serve.directory / DEMO_CATALOG
    with instrumented(endpoints, hash_key=f"demo-{os.getpid()}", models=models) as spans, _progress(console) as bar:
        outcomes = run_workload(llm.base_url, calls, bar)
    token = serve.token
    summary.wait_until_settled(serve.info["api"], token)
    console.print("[bold]4/6[/] report (from serve's API: the numbers `tokenmeter report` prints)")
    reports = {by: summary.fetch_report(serve.info["api"], token, by) for by in ("department", "user", "model")}
    for report in reports.values():
        render_table(report, console)
    summary.render_budgets(console, summary.fetch_budgets(serve.info["api"], token))
    summary.render_decisions(console, summary.decisions(spans), outcomes)
    found = savings.savings(spans, ModelCatalog.load(models))
    savings.render_savings(console, found)
    return reports, outcomes, found.cache_hits


def _check(serve: ServeProcess, reports: dict[str, Any], outcomes: Counter[str], *, cache_hits: Counter[str],
           llm: DemoLLMServer, console: Any) -> bool:  # fmt: skip
    from tokenmeter.demo import summary
    from tokenmeter.store import open_store

    console.print("[bold]5/6[/] checking the report against a direct query of the stored OTLP rows ...")
    client = open_store(serve.store_url)
    try:
        stored = summary.raw_tokens_by(client, semconv.ENDUSER_ID, live_instance_id())
        events = client.query("SELECT event, count() FROM quota_events GROUP BY event ORDER BY event").result_rows
    finally:
        client.close()
    problems = summary.compare("user", summary.tokens_by_subject(reports["user"]), stored)
    problems += summary.compare("model", summary.tokens_by_subject(reports["model"]), dict(llm.tokens_by_model))
    answered = Counter(llm.calls_by_model) + cache_hits  # an answer from the cache is a call, with 0 tokens
    problems += summary.compare("calls sent, model", summary.sent_calls_by_subject(reports["model"]),
                                dict(answered))  # fmt: skip
    refused = {"all": outcomes["denied"] + outcomes["degraded"]}
    problems += summary.compare("calls refused", {"all": reports["user"].totals.refused_calls}, refused)
    if problems:
        console.print("[red]the totals differ:[/]")
        for line in problems:
            console.print(f"  {line}")
        return False
    total = reports["user"].totals.tokens
    console.print(f"     tokens per user in the report = the stored counters, per user ({total:,} tokens in all)")
    console.print("     tokens per model in the report = what the LLM server counted and served, per model")
    console.print(
        "     calls sent per model in the report = the calls the LLM server answered, per model "
        "(+ the answers from the cache)"
    )
    console.print(f"     calls refused in the report = the user turns a quota refused ({refused['all']:,})")
    console.print(f"     quota_events: {', '.join(f'{count} {event}' for event, count in events) or 'none'}")
    return True
