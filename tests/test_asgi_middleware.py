"""The identity middleware: resolve_identity's rules, then real requests through a real ASGI app."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tokenmeter import semconv
from tokenmeter.instrumentation.asgi import IdentityMiddleware
from tokenmeter.instrumentation.attribution import Attribution, attribution, current_attribution
from tokenmeter.instrumentation.identity import first_group, is_trusted_peer, resolve_identity
from tokenmeter.settings import Settings, get_settings

try:  # the openai SDK 3.x ships httpx2; older environments have httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    httpx = pytest.importorskip("httpx")

TRUSTED = ("127.0.0.1", 50000)
UNTRUSTED = ("203.0.113.7", 50000)
SECRET = "s3cret-for-tests-only-0123456789abcdef"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN_ID = "b7ad6b7169203331"


pytestmark = pytest.mark.usefixtures("no_service_name")


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def hs256(claims: Mapping[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(dict(claims), secret, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def baggage_header(**fields: str) -> str:
    """A ``baggage`` header as an upstream tokenmeter process would send it."""
    carrier: dict[str, str] = {}
    with attribution(**fields):
        W3CBaggagePropagator().inject(carrier)
    return carrier["baggage"]


# --- resolve_identity: the pure rules ------------------------------------------------


def test_headers_from_a_trusted_peer() -> None:
    headers = {
        "X-Forwarded-User": "alice",
        "X-Forwarded-Groups": "ml,research",
        "X-Tokenmeter-App": "kb-chat",
        "X-Conversation-Id": "c-42",
    }
    assert resolve_identity(headers, "127.0.0.1", Settings()) == Attribution(
        user="alice", department="ml", app="kb-chat", session="c-42"
    )


def test_headers_from_an_untrusted_peer_are_ignored() -> None:
    headers = {"X-Forwarded-User": "alice", "baggage": baggage_header(user="bob")}
    assert resolve_identity(headers, "203.0.113.7", Settings()) == Attribution()
    assert resolve_identity(headers, None, Settings()) == Attribution()
    assert resolve_identity(headers, "testclient", Settings()) == Attribution()


def test_asgi_byte_headers_in_any_case_and_utf8() -> None:
    headers = [(b"x-forwarded-user", "张三".encode()), (b"X-DEPARTMENT", b"R&D")]
    assert resolve_identity(headers, "::1", Settings()) == Attribution(user="张三", department="R&D")


def test_latin1_header_bytes_do_not_fail() -> None:
    assert resolve_identity([(b"x-forwarded-user", b"caf\xe9")], "127.0.0.1", Settings()).user == "café"


def test_first_configured_header_present_wins() -> None:
    settings = Settings()  # user_header = X-Forwarded-User, X-User-Id
    assert resolve_identity({"X-User-Id": "second"}, "127.0.0.1", settings).user == "second"
    both = {"X-User-Id": "second", "X-Forwarded-User": "first"}
    assert resolve_identity(both, "127.0.0.1", settings).user == "first"
    blank_first = {"X-Forwarded-User": "   ", "X-User-Id": "second"}
    assert resolve_identity(blank_first, "127.0.0.1", settings).user == "second"


def test_header_names_come_from_settings() -> None:
    settings = Settings(
        user_header=["X-Remote-User"],
        department_header=["X-Remote-Dept"],
        app_header=["X-App"],
        session_header=["X-Chat-Id"],
    )
    headers = {
        "X-Forwarded-User": "ignored",
        "X-Remote-User": "carol",
        "X-Remote-Dept": "ops",
        "X-App": "bot",
        "X-Chat-Id": "c1",
    }
    assert resolve_identity(headers, "127.0.0.1", settings) == Attribution(
        user="carol", department="ops", app="bot", session="c1"
    )


def test_an_identity_header_sent_with_different_values_is_not_believed() -> None:
    forged = [(b"x-forwarded-user", b"mallory"), (b"x-forwarded-user", b"alice")]
    assert resolve_identity(forged, "127.0.0.1", Settings()).user is None
    repeated = [(b"x-forwarded-user", b"alice"), (b"x-forwarded-user", b"alice")]
    assert resolve_identity(repeated, "127.0.0.1", Settings()).user == "alice"


@pytest.mark.parametrize(
    ("raw", "department"),
    [
        ("ml", "ml"),
        ("ml,research", "ml"),
        (" ml , research ", "ml"),
        (",,ml", "ml"),
        ("/org/dept", "/org/dept"),
        ("/org/dept,/org/other", "/org/dept"),
        ("研发部,市场部", "研发部"),
        (",", None),
        ("", None),
    ],
)
def test_department_header_takes_the_first_group(raw: str, department: str | None) -> None:
    assert first_group(raw) == department
    assert resolve_identity({"X-Forwarded-Groups": raw}, "127.0.0.1", Settings()).department == department


@pytest.mark.parametrize(
    ("host", "proxies", "trusted"),
    [
        ("127.0.0.1", ["127.0.0.0/8", "::1"], True),
        ("127.8.9.10", ["127.0.0.0/8", "::1"], True),
        ("::1", ["127.0.0.0/8", "::1"], True),
        ("[::1]", ["127.0.0.0/8", "::1"], True),
        ("::ffff:127.0.0.1", ["127.0.0.0/8"], True),
        ("10.1.2.3", ["127.0.0.0/8", "::1"], False),
        ("10.1.2.3", ["10.0.0.0/8"], True),
        ("10.1.2.3", ["10.1.2.3"], True),
        ("fd00::5", ["fd00::/8"], True),
        ("203.0.113.7", ["*"], True),
        (None, ["*"], True),
        (None, ["127.0.0.0/8"], False),
        ("", ["127.0.0.0/8"], False),
        ("testclient", ["127.0.0.0/8"], False),
        ("/run/app.sock", ["127.0.0.0/8"], False),
        ("127.0.0.1", [], False),
        ("127.0.0.1", ["not-a-network", "127.0.0.1"], True),
    ],
)
def test_trusted_peers(host: str | None, proxies: list[str], trusted: bool) -> None:
    assert is_trusted_peer(host, proxies) is trusted


def test_a_bad_trusted_proxies_entry_is_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert is_trusted_peer("10.0.0.1", ["10.0.0.0/33", "10.0.0.0/8"])
    assert "TOKENMETER_TRUSTED_PROXIES" in caplog.text
    assert "10.0.0.0/33" in caplog.text


def test_baggage_from_a_trusted_peer() -> None:
    headers = {"baggage": baggage_header(user='o"brien, 张三', department="ml", session="s;1=2")}
    assert resolve_identity(headers, "127.0.0.1", Settings()) == Attribution(
        user='o"brien, 张三', department="ml", session="s;1=2"
    )


def test_several_baggage_headers_are_one_list() -> None:
    headers = [
        (b"baggage", baggage_header(user="alice").encode()),
        (b"baggage", baggage_header(department="ml").encode()),
    ]
    assert resolve_identity(headers, "127.0.0.1", Settings()) == Attribution(user="alice", department="ml")


def test_headers_beat_baggage_field_by_field() -> None:
    headers = {
        "X-Forwarded-User": "from-header",
        "baggage": baggage_header(user="from-baggage", department="ml"),
    }
    assert resolve_identity(headers, "127.0.0.1", Settings()) == Attribution(user="from-header", department="ml")


def test_jwt_is_believed_from_any_peer_and_beats_headers() -> None:
    settings = Settings(jwt_secret=SECRET)
    headers = {
        **bearer(hs256({"sub": "alice", "department": "ml"})),
        "X-Forwarded-User": "proxy-user",
        "X-Conversation-Id": "c1",
    }
    assert resolve_identity(headers, "203.0.113.7", settings) == Attribution(user="alice", department="ml")
    assert resolve_identity(headers, "127.0.0.1", settings) == Attribution(user="alice", department="ml", session="c1")


def test_jwt_is_ignored_when_no_key_is_configured() -> None:
    headers = bearer(hs256({"sub": "alice"}))
    assert resolve_identity(headers, "203.0.113.7", Settings()) == Attribution()


@pytest.mark.parametrize(
    ("claims", "settings", "expected"),
    [
        ({"sub": "alice"}, {}, Attribution(user="alice")),
        ({"uid": 1234}, {"jwt_user_claim": "uid"}, Attribution(user="1234")),
        ({"sub": 1234}, {}, Attribution()),  # PyJWT: "sub" must be a string
        (
            {"sub": "alice", "groups": ["/org/ml", "/org/x"]},
            {"jwt_department_claim": "groups"},
            Attribution(user="alice", department="/org/ml"),
        ),
        ({"sub": "alice", "department": "R&D, Europe"}, {}, Attribution(user="alice", department="R&D, Europe")),
        (
            {"email": "a@example.com", "org": {"dept": "ml"}},
            {"jwt_user_claim": "email", "jwt_department_claim": "org.dept"},
            Attribution(user="a@example.com", department="ml"),
        ),
        (
            {"https://example.com/department": "ml", "sub": "a"},
            {"jwt_department_claim": "https://example.com/department"},
            Attribution(user="a", department="ml"),
        ),
        ({"sub": {"nested": "object"}, "department": True}, {}, Attribution()),
        ({"sub": "alice", "aud": "chatchat"}, {"jwt_audience": "chatchat"}, Attribution(user="alice")),
        ({"sub": "alice", "aud": "other"}, {"jwt_audience": "chatchat"}, Attribution()),
        ({"sub": "alice"}, {"jwt_audience": "chatchat"}, Attribution()),
        ({"sub": "alice", "aud": "anything"}, {}, Attribution(user="alice")),
        ({"sub": "alice", "exp": dt.datetime.now(tz=dt.UTC) - dt.timedelta(minutes=5)}, {}, Attribution()),
        ({"sub": "alice", "exp": dt.datetime.now(tz=dt.UTC) + dt.timedelta(minutes=5)}, {}, Attribution(user="alice")),
        ({"sub": "alice", "nbf": dt.datetime.now(tz=dt.UTC) + dt.timedelta(minutes=5)}, {}, Attribution()),
    ],
)
def test_jwt_claims(claims: dict[str, Any], settings: dict[str, Any], expected: Attribution) -> None:
    headers = bearer(hs256(claims))
    assert resolve_identity(headers, "203.0.113.7", Settings(jwt_secret=SECRET, **settings)) == expected


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer {hs256({'sub': 'alice'}, secret='wrong-secret-wrong-secret-wrong!!')}",
        f"Bearer {hs256({'sub': 'alice'})}x",
        "Bearer not.a.jwt",
        "Bearer ",
        "Bearer",
        "Basic YWxpY2U6cGFzc3dvcmQ=",
        f"Token {hs256({'sub': 'alice'})}",
        f"Bearer {jwt.encode({'sub': 'alice'}, None, algorithm='none')}",
        f"Bearer {hs256({'sub': 'alice'})}, Bearer {hs256({'sub': 'bob'})}",
    ],
)
def test_bad_authorization_gives_no_identity(authorization: str) -> None:
    settings = Settings(jwt_secret=SECRET)
    assert resolve_identity({"Authorization": authorization}, "203.0.113.7", settings) == Attribution()


def test_lower_case_bearer_scheme_is_accepted() -> None:
    headers = {"authorization": f"bearer {hs256({'sub': 'alice'})}"}
    assert resolve_identity(headers, "203.0.113.7", Settings(jwt_secret=SECRET)).user == "alice"


def test_algorithms_not_listed_in_settings_are_refused() -> None:
    settings = Settings(jwt_secret=SECRET, jwt_algorithms=["HS512"])
    assert resolve_identity(bearer(hs256({"sub": "alice"})), "203.0.113.7", settings) == Attribution()


def test_rs256_with_a_public_key(rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode({"sub": "alice", "department": "ml"}, rsa_key, algorithm="RS256")
    settings = Settings(jwt_public_key=public_pem(rsa_key))
    expected = Attribution(user="alice", department="ml")
    assert resolve_identity(bearer(token), "203.0.113.7", settings) == expected


def test_public_key_with_escaped_newlines_or_from_a_file(rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    token = jwt.encode({"sub": "alice"}, rsa_key, algorithm="RS256")
    escaped = public_pem(rsa_key).replace("\n", "\\n")  # as some .env files carry it
    assert resolve_identity(bearer(token), None, Settings(jwt_public_key=escaped)).user == "alice"
    key_file = tmp_path / "jwt.pub"
    key_file.write_text(public_pem(rsa_key))
    assert resolve_identity(bearer(token), None, Settings(jwt_public_key=str(key_file))).user == "alice"


def test_es256_with_a_public_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode({"sub": "alice"}, key, algorithm="ES256")
    assert resolve_identity(bearer(token), None, Settings(jwt_public_key=public_pem(key))).user == "alice"


def test_rs256_signed_by_another_key_is_ignored(rsa_key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode({"sub": "mallory"}, other, algorithm="RS256")
    settings = Settings(jwt_public_key=public_pem(rsa_key))
    assert resolve_identity(bearer(token), None, settings) == Attribution()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_public_key_used_as_an_hmac_secret_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    """Algorithm confusion: an HS256 token whose HMAC key is the (public) RSA key must not verify."""
    pem = public_pem(rsa_key)
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{_b64url(json.dumps({'sub': 'mallory'}).encode())}"
    signature = hmac.new(pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{_b64url(signature)}"
    assert resolve_identity(bearer(forged), None, Settings(jwt_public_key=pem)) == Attribution()
    with_secret = Settings(jwt_public_key=pem, jwt_secret=SECRET)
    assert resolve_identity(bearer(forged), None, with_secret) == Attribution()
    assert resolve_identity(bearer(hs256({"sub": "alice"})), None, with_secret).user == "alice"


def test_an_unusable_public_key_is_warned_about_once(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    settings = Settings(jwt_public_key=missing, jwt_algorithms=["RS256", "HS256"])
    token = jwt.encode(
        {"sub": "alice"}, rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm="RS256"
    )
    with caplog.at_level(logging.WARNING, logger="tokenmeter"):
        for _ in range(3):
            assert resolve_identity(bearer(token), None, settings) == Attribution()
    warnings = [r for r in caplog.records if "TOKENMETER_JWT_PUBLIC_KEY" in r.getMessage()]
    assert len(warnings) == 1
    assert missing in warnings[0].getMessage()


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "x-forwarded-user",
                "x-user-id",
                "x-forwarded-groups",
                "x-department",
                "x-tokenmeter-app",
                "x-conversation-id",
                "baggage",
                "authorization",
                "traceparent",
            ]
        ),
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80),
    ),
    st.sampled_from(["203.0.113.7", "10.0.0.1", "2001:db8::1", None, "testclient"]),
)
def test_untrusted_peers_without_a_verified_jwt_never_get_an_identity(
    headers: dict[str, str], host: str | None
) -> None:
    assert resolve_identity(headers, host, Settings(jwt_secret=SECRET)) == Attribution()


# --- the middleware around a real ASGI app -----------------------------------------


def tokenmeter_baggage() -> dict[str, object]:
    keys = {semconv.BAGGAGE_USER, semconv.BAGGAGE_DEPARTMENT, semconv.BAGGAGE_APP, semconv.BAGGAGE_SESSION}
    return {key: value for key, value in baggage.get_all().items() if key in keys}


def what_the_app_sees() -> dict[str, Any]:
    who = current_attribution()
    span = trace.get_current_span().get_span_context()
    return {
        "user": who.user,
        "department": who.department,
        "app": who.app,
        "session": who.session,
        "baggage": tokenmeter_baggage(),
        "trace_id": format(span.trace_id, "032x") if span.is_valid else None,
        "span_id": format(span.span_id, "016x") if span.is_valid else None,
    }


class EchoApp:
    """A raw ASGI app answering what attribution it ran in; counts its calls."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay
        self.scopes: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        self.scopes.append(scope)
        if self.delay:
            await asyncio.sleep(self.delay)
        seen = what_the_app_sees()
        # A task the request starts sees the same attribution.
        seen["task_user"] = await asyncio.create_task(_user_in_task())
        # So does sync code run in a worker thread the way Starlette runs `def` endpoints.
        seen["thread_user"] = await asyncio.to_thread(lambda: current_attribution().user)
        body = json.dumps(seen).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


async def _user_in_task() -> str | None:
    await asyncio.sleep(0)
    return current_attribution().user


async def get(
    app: Any,
    headers: Mapping[str, str | bytes] | list[tuple[str, str | bytes]] | None = None,
    client: tuple[str, int] = TRUSTED,
) -> Any:
    transport = httpx.ASGITransport(app=app, client=client)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        return await http.get("/chat", headers=headers)


async def test_the_app_sees_identity_from_proxy_headers() -> None:
    echo = EchoApp()
    response = await get(
        IdentityMiddleware(echo, Settings()),
        {
            "X-Forwarded-User": "张三".encode(),
            "X-Forwarded-Groups": "研发部,市场部".encode(),
            "X-Conversation-Id": "c-1",
        },
    )
    assert response.status_code == 200
    seen = response.json()
    assert (seen["user"], seen["department"], seen["app"], seen["session"]) == ("张三", "研发部", None, "c-1")
    assert seen["task_user"] == seen["thread_user"] == "张三"
    assert seen["baggage"] == {
        semconv.BAGGAGE_USER: "张三",
        semconv.BAGGAGE_DEPARTMENT: "研发部",
        semconv.BAGGAGE_SESSION: "c-1",
    }
    assert current_attribution() == Attribution()  # nothing leaks out of the request


async def test_proxy_headers_from_an_untrusted_peer_are_ignored() -> None:
    echo = EchoApp()
    response = await get(
        IdentityMiddleware(echo, Settings()),
        {"X-Forwarded-User": "mallory", "baggage": baggage_header(user="mallory")},
        client=UNTRUSTED,
    )
    assert response.status_code == 200
    assert response.json()["user"] is None
    assert response.json()["baggage"] == {}


async def test_trusted_proxies_and_header_names_are_configurable() -> None:
    settings = Settings(trusted_proxies=["203.0.113.0/24"], user_header=["X-Remote-User"])
    app = IdentityMiddleware(EchoApp(), settings)
    response = await get(app, {"X-Remote-User": "dana", "X-Forwarded-User": "ignored"}, client=UNTRUSTED)
    assert response.json()["user"] == "dana"
    response = await get(app, {"X-Remote-User": "dana"}, client=TRUSTED)  # loopback no longer listed
    assert response.json()["user"] is None


async def test_the_app_sees_identity_from_an_hs256_jwt() -> None:
    app = IdentityMiddleware(EchoApp(), Settings(jwt_secret=SECRET))
    response = await get(app, bearer(hs256({"sub": "alice", "department": "ml"})), client=UNTRUSTED)
    assert (response.json()["user"], response.json()["department"]) == ("alice", "ml")


async def test_the_app_sees_identity_from_an_rs256_jwt(rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(
        {"sub": "alice", "department": "ml", "exp": dt.datetime.now(tz=dt.UTC) + dt.timedelta(hours=1)},
        rsa_key,
        algorithm="RS256",
    )
    app = IdentityMiddleware(EchoApp(), Settings(jwt_public_key=public_pem(rsa_key)))
    response = await get(app, bearer(token), client=UNTRUSTED)
    assert (response.json()["user"], response.json()["department"]) == ("alice", "ml")


@pytest.mark.parametrize(
    "token",
    [
        hs256({"sub": "alice", "exp": dt.datetime.now(tz=dt.UTC) - dt.timedelta(seconds=1)}),
        hs256({"sub": "alice"}, secret="a-different-secret-a-different-secret"),
        "eyJhbGciOiJIUzI1NiJ9.garbage.garbage",
    ],
    ids=["expired", "bad-signature", "malformed"],
)
async def test_an_invalid_jwt_is_ignored_and_the_request_succeeds(token: str, caplog: pytest.LogCaptureFixture) -> None:
    echo = EchoApp()
    with caplog.at_level(logging.DEBUG, logger="tokenmeter"):
        response = await get(
            IdentityMiddleware(echo, Settings(jwt_secret=SECRET)),
            {**bearer(token), "X-Forwarded-User": "proxy-user"},
        )
    assert response.status_code == 200
    assert echo.calls == 1
    assert response.json()["user"] == "proxy-user"  # the other sources still count
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("tokenmeter")]
    assert any("JWT not verified" in r.getMessage() for r in caplog.records)


async def test_the_app_sees_identity_from_incoming_baggage_and_continues_the_trace() -> None:
    headers = {
        "baggage": baggage_header(user='o"brien; 🦊', department="ml", app="upstream", session="s=1,2")
        + ",tenant=acme",
        "traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01",
    }
    response = await get(IdentityMiddleware(EchoApp(), Settings()), headers)
    seen = response.json()
    assert (seen["user"], seen["department"], seen["app"], seen["session"]) == (
        'o"brien; 🦊',
        "ml",
        "upstream",
        "s=1,2",
    )
    assert seen["trace_id"] == TRACE_ID
    assert seen["span_id"] == PARENT_SPAN_ID


async def test_baggage_and_traceparent_from_an_untrusted_peer_are_ignored() -> None:
    headers = {
        "baggage": baggage_header(user="mallory"),
        "traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01",
    }
    seen = (await get(IdentityMiddleware(EchoApp(), Settings()), headers, client=UNTRUSTED)).json()
    assert seen["user"] is None
    assert seen["trace_id"] is None


async def test_a_malformed_baggage_header_does_not_fail_the_request() -> None:
    echo = EchoApp()
    headers = {
        "baggage": "enduser.id=%E4%B8%AD;;;==,=,,tokenmeter.department=ml,\x7f=\x7f",
        "X-Forwarded-User": "alice",
    }
    response = await get(IdentityMiddleware(echo, Settings()), headers)
    assert response.status_code == 200
    assert echo.calls == 1
    assert response.json()["user"] == "alice"


class BrokenPropagator(TextMapPropagator):
    """A third-party propagator that fails on every request."""

    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        raise RuntimeError("broken propagator")

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        raise RuntimeError("broken propagator")

    @property
    def fields(self) -> set[str]:
        return {"baggage"}


async def test_a_failing_propagator_costs_only_the_baggage(caplog: pytest.LogCaptureFixture) -> None:
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(BrokenPropagator())
    echo = EchoApp()
    try:
        with caplog.at_level(logging.WARNING, logger="tokenmeter"):
            app = IdentityMiddleware(echo, Settings())
            for _ in range(3):
                response = await get(app, {"X-Forwarded-User": "alice", "baggage": baggage_header(app="x")})
                assert response.status_code == 200
                assert response.json()["user"] == "alice"
    finally:
        propagate.set_global_textmap(previous)
    assert echo.calls == 3
    # Logged once per place it failed (baggage identity, trace context), not once per request.
    middleware_warnings = [r for r in caplog.records if r.name == "tokenmeter.instrumentation.asgi"]
    assert len(middleware_warnings) == 1
    assert "caller's trace" in middleware_warnings[0].getMessage()
    assert len([r for r in caplog.records if r.name.startswith("tokenmeter")]) <= 2


async def test_an_internal_failure_serves_the_request_unchanged_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = Settings.model_construct(user_header=None)  # bypasses validation: iterating it fails
    echo = EchoApp()
    app = IdentityMiddleware(echo, broken)
    with caplog.at_level(logging.WARNING, logger="tokenmeter"):
        responses = [await get(app, {"X-Forwarded-User": "alice"}) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert echo.calls == 3
    assert responses[0].json()["user"] is None
    assert len([r for r in caplog.records if r.name == "tokenmeter.instrumentation.asgi"]) == 1


async def test_app_exceptions_propagate_unchanged_and_the_context_is_restored() -> None:
    calls = 0

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        assert current_attribution().user == "alice"
        raise LookupError("from the app")

    with pytest.raises(LookupError, match="from the app"):
        await get(IdentityMiddleware(failing, Settings()), {"X-Forwarded-User": "alice"})
    assert calls == 1
    assert current_attribution() == Attribution()


async def test_concurrent_requests_are_isolated() -> None:
    app = IdentityMiddleware(EchoApp(delay=0.01), Settings())
    responses = await asyncio.gather(*(get(app, {"X-Forwarded-User": f"user-{i}"}) for i in range(20)))
    assert [r.json()["user"] for r in responses] == [f"user-{i}" for i in range(20)]
    assert [r.json()["task_user"] for r in responses] == [f"user-{i}" for i in range(20)]


async def test_the_scope_is_passed_on_unchanged() -> None:
    echo = EchoApp()
    await get(IdentityMiddleware(echo, Settings()), {"X-Forwarded-User": "alice"})
    scope = echo.scopes[0]
    assert (b"x-forwarded-user", b"alice") in scope["headers"]
    assert scope["path"] == "/chat"


async def test_websocket_scopes_get_an_identity() -> None:
    seen: list[Attribution] = []
    sent: list[dict[str, Any]] = []

    async def ws_app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        seen.append(current_attribution())
        await send({"type": "websocket.accept"})

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "path": "/ws",
        "headers": [(b"x-forwarded-user", b"alice")],
        "client": ["127.0.0.1", 40000],
    }
    await IdentityMiddleware(ws_app, Settings())(scope, receive, send)
    assert seen == [Attribution(user="alice")]
    assert sent == [{"type": "websocket.accept"}]


async def test_other_scope_types_pass_through_untouched() -> None:
    received: list[Any] = []

    async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
        received.append((scope, current_attribution(), dict(baggage.get_all())))

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "headers": [(b"x-forwarded-user", b"alice")]}
    await IdentityMiddleware(lifespan_app, Settings())(scope, receive, send)
    assert received == [(scope, Attribution(), {})]


async def test_invalid_settings_in_the_environment_turn_the_middleware_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TOKENMETER_FAIL_MODE", "sideways")
    get_settings.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="tokenmeter"):
            echo = EchoApp()
            response = await get(IdentityMiddleware(echo), {"X-Forwarded-User": "alice"})
    finally:
        get_settings.cache_clear()
    assert response.status_code == 200
    assert response.json()["user"] is None
    assert "settings are invalid" in caplog.text


# --- beside OpenTelemetry's own ASGI middleware ----------------------------------------


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


async def test_inside_otel_asgi_middleware_untrusted_baggage_is_dropped(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, _ = spans
    app = OpenTelemetryMiddleware(IdentityMiddleware(EchoApp(), Settings()), tracer_provider=provider)
    headers = {"baggage": baggage_header(user="mallory", department="finance") + ",tenant=acme"}
    seen = (await get(app, headers, client=UNTRUSTED)).json()
    assert (seen["user"], seen["department"]) == (None, None)
    assert seen["baggage"] == {}  # and so it is not propagated to the next hop either


async def test_inside_otel_asgi_middleware_llm_spans_nest_under_the_server_span(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    app = OpenTelemetryMiddleware(IdentityMiddleware(EchoApp(), Settings()), tracer_provider=provider)
    headers = {
        "traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01",
        "baggage": baggage_header(user="alice"),
    }
    seen = (await get(app, headers)).json()
    assert seen["user"] == "alice"
    assert seen["trace_id"] == TRACE_ID
    server = next(s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.SERVER)
    assert seen["span_id"] == format(server.context.span_id, "016x")  # the server span, not the caller's
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == PARENT_SPAN_ID


async def test_a_request_without_identity_runs_with_none() -> None:
    # Even a context some outer code attached does not lend its baggage to the request.
    token = context.attach(baggage.set_baggage(semconv.BAGGAGE_USER, "outer"))
    try:
        seen = (await get(IdentityMiddleware(EchoApp(), Settings()), client=UNTRUSTED)).json()
    finally:
        context.detach(token)
    assert seen["user"] is None
