"""The attribution context: nesting, restoration, isolation, baggage, service.name default."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import baggage, context, propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tokenmeter import semconv
from tokenmeter.instrumentation.attribution import (
    MAX_VALUE_LENGTH,
    Attribution,
    attribution,
    bind_message,
    current_attribution,
    default_app,
    sanitize,
)

TRICKY_IDS = [
    'o"brien',
    "smith, john",
    "a;b;c",
    "k=v",
    "x=1;y=2,z",
    "first last",
    "  padded  ",
    "张三",
    "研发部/平台组",
    "🦊 fox 🚀",
    "👩‍💻",  # a ZWJ sequence
    "100%",
    "a+b",
    "%20literal",
    "back\\slash",
    "<script>",
    "ü©ñ",
]


pytestmark = pytest.mark.usefixtures("no_service_name")


def tokenmeter_baggage() -> dict[str, object]:
    keys = {
        semconv.BAGGAGE_USER,
        semconv.BAGGAGE_DEPARTMENT,
        semconv.BAGGAGE_APP,
        semconv.BAGGAGE_SESSION,
        semconv.BAGGAGE_MESSAGE,
    }
    return {key: value for key, value in baggage.get_all().items() if key in keys}


# --- values ----------------------------------------------------------------------


def test_values_are_stripped_capped_and_cleaned_of_control_characters() -> None:
    who = Attribution(user="  alice \n", department="r&d\x00\x1b[31m", app="\t", session="x" * 1000)
    assert who == Attribution(user="alice", department="r&d[31m", app=None, session="x" * MAX_VALUE_LENGTH)


def test_values_other_than_str_are_converted() -> None:
    assert Attribution(user=42).user == "42"  # type: ignore[arg-type]


def test_lone_surrogates_are_dropped() -> None:
    assert sanitize("a\ud800b") == "ab"


@given(st.text())
def test_sanitize_is_idempotent_bounded_and_control_free(text: str) -> None:
    clean = sanitize(text)
    assert sanitize(clean) == clean
    if clean is not None:
        assert 0 < len(clean) <= MAX_VALUE_LENGTH
        assert clean == clean.strip()
        assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in clean)


@pytest.mark.parametrize("value", TRICKY_IDS)
def test_tricky_values_are_kept_verbatim(value: str) -> None:
    assert Attribution(user=value).user == value.strip()


def test_merged_lets_inner_non_none_fields_win() -> None:
    outer = Attribution(user="alice", department="sales", app="chat")
    inner = Attribution(department="ml", session="s1")
    assert outer.merged(inner) == Attribution(user="alice", department="ml", app="chat", session="s1")
    assert outer.merged(Attribution()) == outer


def test_baggage_items_and_from_baggage_are_inverse() -> None:
    who = Attribution(user="alice", department="ml", app="chat", session="s1")
    items = who.baggage_items()
    assert items == {
        semconv.BAGGAGE_USER: "alice",
        semconv.BAGGAGE_DEPARTMENT: "ml",
        semconv.BAGGAGE_APP: "chat",
        semconv.BAGGAGE_SESSION: "s1",
    }
    assert Attribution.from_baggage({**items, "unrelated": "x"}) == who


# --- scopes ----------------------------------------------------------------------


def test_no_scope_means_empty_attribution() -> None:
    assert current_attribution() == Attribution()
    assert tokenmeter_baggage() == {}


def test_nesting_overrides_and_restores() -> None:
    with attribution(user="alice", department="sales") as outer:
        assert outer == Attribution(user="alice", department="sales")
        with attribution(department="ml", session="s1") as inner:
            assert inner == Attribution(user="alice", department="ml", session="s1")
            assert current_attribution() == inner
            with attribution(user=None, app="kb"):
                assert current_attribution() == Attribution(user="alice", department="ml", app="kb", session="s1")
            assert current_attribution() == inner
        assert current_attribution() == outer
    assert current_attribution() == Attribution()


def test_baggage_carries_the_same_fields_and_is_restored() -> None:
    with attribution(user="alice", department="ml"):
        assert tokenmeter_baggage() == {
            semconv.BAGGAGE_USER: "alice",
            semconv.BAGGAGE_DEPARTMENT: "ml",
        }
        with attribution(session="s1"):
            assert baggage.get_all()[semconv.BAGGAGE_SESSION] == "s1"
            assert baggage.get_all()[semconv.BAGGAGE_USER] == "alice"
        assert semconv.BAGGAGE_SESSION not in baggage.get_all()
    assert tokenmeter_baggage() == {}


def test_other_baggage_entries_are_kept() -> None:
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with attribution(user="alice"):
            assert baggage.get_all()["tenant"] == "acme"
        assert dict(baggage.get_all()) == {"tenant": "acme"}
    finally:
        context.detach(token)


def test_restored_after_an_exception() -> None:
    with attribution(user="alice"):
        with pytest.raises(ZeroDivisionError), attribution(user="bob", department="ml"):
            assert current_attribution().user == "bob"
            _ = 1 / 0
        assert current_attribution() == Attribution(user="alice")
        assert tokenmeter_baggage() == {semconv.BAGGAGE_USER: "alice"}
    assert current_attribution() == Attribution()
    assert tokenmeter_baggage() == {}


def test_a_scope_object_cannot_be_entered_twice_at_once() -> None:
    scope = attribution(user="alice")
    with scope, pytest.raises(RuntimeError, match="already entered"), scope:
        pass
    with scope:  # but again after it was left
        assert current_attribution().user == "alice"


def test_exit_in_another_context_does_not_raise() -> None:
    scope = attribution(user="alice")
    entered = contextvars.copy_context()
    entered.run(scope.__enter__)
    assert entered.run(current_attribution).user == "alice"
    contextvars.copy_context().run(scope.__exit__, None, None, None)
    assert current_attribution() == Attribution()


def test_decorates_plain_functions() -> None:
    @attribution(user="alice", app="batch")
    def job(x: int) -> tuple[int, Attribution]:
        return x * 2, current_attribution()

    assert job(21) == (42, Attribution(user="alice", app="batch"))
    assert job.__name__ == "job"
    assert current_attribution() == Attribution()


async def test_decorates_async_functions() -> None:
    @attribution(user="alice")
    async def job() -> Attribution:
        await asyncio.sleep(0)
        return current_attribution()

    assert await job() == Attribution(user="alice")
    assert current_attribution() == Attribution()


# --- isolation -------------------------------------------------------------------


def test_threads_are_isolated() -> None:
    barrier = threading.Barrier(3)
    seen: dict[str, tuple[Attribution, Attribution, dict[str, object]]] = {}

    def worker(name: str) -> None:
        before = current_attribution()
        with attribution(user=name):
            barrier.wait(timeout=5)  # all threads inside their scopes at once
            seen[name] = (before, current_attribution(), tokenmeter_baggage())
            barrier.wait(timeout=5)

    with attribution(user="main"):
        threads = [threading.Thread(target=worker, args=(f"user-{i}",)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert current_attribution() == Attribution(user="main")

    for name, (before, inside, carried) in seen.items():
        assert before == Attribution()  # a new thread starts with an empty context
        assert inside == Attribution(user=name)
        assert carried == {semconv.BAGGAGE_USER: name}
    assert len(seen) == 3


async def test_asyncio_tasks_are_isolated_and_inherit_from_their_creator() -> None:
    async def request(name: str) -> tuple[Attribution, Attribution]:
        inherited = current_attribution()
        with attribution(user=name):
            for _ in range(5):
                await asyncio.sleep(0)  # interleave with the other tasks
                assert current_attribution().user == name
                assert baggage.get_all()[semconv.BAGGAGE_USER] == name
            return inherited, current_attribution()

    with attribution(department="ml"):
        results = await asyncio.gather(*(request(f"user-{i}") for i in range(10)))
        assert current_attribution() == Attribution(department="ml")
    for i, (inherited, inside) in enumerate(results):
        assert inherited == Attribution(department="ml")
        assert inside == Attribution(user=f"user-{i}", department="ml")
    assert current_attribution() == Attribution()


async def test_a_task_started_inside_a_scope_keeps_it_after_the_scope_ends() -> None:
    release = asyncio.Event()

    async def background() -> Attribution:
        await release.wait()
        return current_attribution()

    with attribution(user="alice"):
        task = asyncio.create_task(background())
    release.set()
    assert await task == Attribution(user="alice")


# --- incoming baggage and W3C round trip ------------------------------------------


def test_fields_missing_from_scopes_come_from_current_baggage() -> None:
    ctx = baggage.set_baggage(semconv.BAGGAGE_USER, "upstream-user")
    ctx = baggage.set_baggage(semconv.BAGGAGE_DEPARTMENT, "upstream-dept", context=ctx)
    token = context.attach(ctx)
    try:
        assert current_attribution() == Attribution(user="upstream-user", department="upstream-dept")
        with attribution(department="local-dept"):
            assert current_attribution() == Attribution(user="upstream-user", department="local-dept")
    finally:
        context.detach(token)


def test_an_authoritative_scope_does_not_believe_incoming_baggage() -> None:
    token = context.attach(baggage.set_baggage(semconv.BAGGAGE_USER, "mallory"))
    try:
        with attribution(department="ml", authoritative=True):
            assert current_attribution() == Attribution(department="ml")
            assert semconv.BAGGAGE_USER not in baggage.get_all()
            with attribution(session="s1"):  # nested scopes stay authoritative
                assert current_attribution() == Attribution(department="ml", session="s1")
        assert current_attribution().user == "mallory"
    finally:
        context.detach(token)


def _round_trip(carrier_propagator: W3CBaggagePropagator | CompositePropagator) -> Attribution:
    carrier: dict[str, str] = {}
    carrier_propagator.inject(carrier)
    received = carrier_propagator.extract(carrier, context=context.Context())
    token = context.attach(received)
    try:
        return current_attribution()
    finally:
        context.detach(token)


@pytest.mark.parametrize("value", TRICKY_IDS)
def test_tricky_ids_round_trip_through_w3c_baggage(value: str) -> None:
    with attribution(user=value, department=value, app=value, session=value) as sent:
        carrier: dict[str, str] = {}
        W3CBaggagePropagator().inject(carrier)
        assert carrier["baggage"].isascii()
        received = _round_trip(W3CBaggagePropagator())
    assert received == sent
    assert received.user == value.strip()


def test_tricky_ids_round_trip_through_the_global_propagator() -> None:
    # The default global propagator is tracecontext + baggage (OTEL_PROPAGATORS).
    with attribution(user='o"brien, 张三; 🦊', department="研发部=1", session="a b") as sent:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        received_ctx = propagate.extract(carrier, context=context.Context())
    token = context.attach(received_ctx)
    try:
        assert current_attribution() == sent
    finally:
        context.detach(token)


@given(st.text(min_size=1, max_size=MAX_VALUE_LENGTH + 20))
def test_any_text_round_trips_through_w3c_baggage(value: str) -> None:
    propagator = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    with attribution(user=value) as sent:
        received = _round_trip(propagator)
    assert received.user == sent.user == sanitize(value)


# --- app default from service.name -------------------------------------------------


def test_app_defaults_to_otel_service_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "chatchat")
    default_app.cache_clear()
    assert current_attribution() == Attribution(app="chatchat")
    with attribution(user="alice") as who:
        assert who == Attribution(user="alice", app="chatchat")
        assert semconv.BAGGAGE_APP not in baggage.get_all()  # the default is not propagated
        with attribution(app="kb-bot"):
            assert current_attribution().app == "kb-bot"


def test_app_defaults_to_service_name_in_resource_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,service.name=chatchat-api")
    default_app.cache_clear()
    assert current_attribution().app == "chatchat-api"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "wins")
    assert current_attribution().app == "chatchat-api"  # read once
    default_app.cache_clear()
    assert current_attribution().app == "wins"


def test_baggage_app_beats_the_service_name_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "chatchat")
    default_app.cache_clear()
    token = context.attach(baggage.set_baggage(semconv.BAGGAGE_APP, "upstream-app"))
    try:
        assert current_attribution().app == "upstream-app"
    finally:
        context.detach(token)


# --- the answer's message id -------------------------------------------------------


def test_the_message_id_rides_in_baggage_like_the_other_fields() -> None:
    with attribution(user="alice", message="  m-1\n") as who:
        assert who == Attribution(user="alice", message="m-1")
        assert tokenmeter_baggage() == {semconv.BAGGAGE_USER: "alice", semconv.BAGGAGE_MESSAGE: "m-1"}
        received = _round_trip(W3CBaggagePropagator())
        with attribution(message="m-2"):  # the inner answer wins, the user stays
            assert current_attribution() == Attribution(user="alice", message="m-2")
    assert received == Attribution(user="alice", message="m-1")
    assert semconv.BAGGAGE_MESSAGE == semconv.TM_MESSAGE_ID == "tokenmeter.message.id"
    assert Attribution.from_baggage({semconv.BAGGAGE_MESSAGE: "m-3"}) == Attribution(message="m-3")
    assert tokenmeter_baggage() == {}


def test_an_authoritative_scope_drops_an_incoming_message_id() -> None:
    token = context.attach(baggage.set_baggage(semconv.BAGGAGE_MESSAGE, "someone-elses-answer"))
    try:
        assert current_attribution().message == "someone-elses-answer"
        with attribution(user="alice", authoritative=True):
            assert current_attribution() == Attribution(user="alice")
            assert semconv.BAGGAGE_MESSAGE not in baggage.get_all()
        with attribution(user="alice", message="m-1", authoritative=True):  # one it was given is kept
            assert current_attribution().message == baggage.get_all()[semconv.BAGGAGE_MESSAGE] == "m-1"
    finally:
        context.detach(token)


async def test_bind_message_lasts_for_the_rest_of_the_enclosing_scope_and_no_longer() -> None:
    async def answer_calls() -> tuple[Attribution, object]:
        await asyncio.sleep(0)
        return current_attribution(), baggage.get_all().get(semconv.BAGGAGE_MESSAGE)

    with attribution(user="alice", authoritative=True):
        bind_message("  m-7 ")
        assert current_attribution() == Attribution(user="alice", message="m-7")
        # A task started later (a streamed answer's) and a worker thread see it too.
        assert await asyncio.create_task(answer_calls()) == (Attribution(user="alice", message="m-7"), "m-7")
        assert await asyncio.to_thread(lambda: current_attribution().message) == "m-7"
        bind_message("")  # nothing to bind: the answer stays
        assert current_attribution().message == "m-7"
    assert current_attribution() == Attribution()
    assert tokenmeter_baggage() == {}


async def test_bind_message_in_a_task_stays_in_that_task() -> None:
    async def request() -> str | None:
        bind_message("m-8")
        return current_attribution().message

    with attribution(user="bob"):
        assert await asyncio.create_task(request()) == "m-8"
        assert current_attribution() == Attribution(user="bob")
        assert semconv.BAGGAGE_MESSAGE not in baggage.get_all()
