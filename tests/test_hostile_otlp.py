"""Poisoned, absurd and malformed OTLP against a real `tokenmeter serve` with a quota policy.

The OTLP ports take no token on loopback by default, so any local process can send anything.
After every hostile request: the valid usage totals are unchanged (plus exactly the valid points
sent beside the poisoned ones), reports answer, and the enforcer decides on fresh usage.
"""

from __future__ import annotations

import gzip
import json
import math
import socket
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import httpx
import pytest
from budget_days import timezone_far_from_midnight
from google.rpc import status_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1 import metrics_pb2
from otlp_requests import GRPC_METHODS, attributes, grpc_export, now_ns, post, resource
from serve_process import ServeProcess

from tokenmeter import semconv

DEPARTMENT = "研发部"
ALICE_TOKENS = 3000
LIMIT = 10_000
POLICY = f"""
timezone: {timezone_far_from_midnight()}
budgets:
  - {{name: alice-daily, scope: user, subject: alice, period: day, limit: {{tokens: {LIMIT}}}, action: deny}}
"""
NOW = now_ns()
START = NOW - 3600 * 10**9
DAY = datetime.fromtimestamp(NOW / 1e9, UTC).strftime("%Y-%m-%d")


def point(user: str, value: float | int, *, time_ns: int | None = None, start_ns: int = START,
          token_type: str = semconv.TOKEN_TYPE_INPUT) -> metrics_pb2.NumberDataPoint:  # fmt: skip
    labels = {semconv.ENDUSER_ID: user, semconv.TM_DEPARTMENT: DEPARTMENT, semconv.GEN_AI_TOKEN_TYPE: token_type,
              semconv.GEN_AI_REQUEST_MODEL: "qwen2.5-7b-instruct"}  # fmt: skip
    data_point = metrics_pb2.NumberDataPoint(attributes=attributes(labels), start_time_unix_nano=start_ns,
                                             time_unix_nano=NOW if time_ns is None else time_ns)  # fmt: skip
    if isinstance(value, float):
        data_point.as_double = value
    else:
        data_point.as_int = value
    return data_point


def counter(points: list[metrics_pb2.NumberDataPoint], *, temporality: int = 2, monotonic: bool = True,
            name: str = semconv.METRIC_USAGE_TOKENS) -> metrics_pb2.Metric:  # fmt: skip
    return metrics_pb2.Metric(name=name, unit="{token}", sum=metrics_pb2.Sum(
        data_points=points, aggregation_temporality=temporality, is_monotonic=monotonic))  # fmt: skip


def request(*metrics: metrics_pb2.Metric, instance: str = "instance-1") -> ExportMetricsServiceRequest:
    return ExportMetricsServiceRequest(resource_metrics=[metrics_pb2.ResourceMetrics(
        resource=resource("hostile-test", instance),
        scope_metrics=[metrics_pb2.ScopeMetrics(scope=InstrumentationScope(name="tokenmeter"), metrics=metrics)],
    )])  # fmt: skip


class Stack:
    """serve with the policy, and the totals it must report."""

    def __init__(self, serve: ServeProcess) -> None:
        self.serve = serve
        self.expected: dict[str, int] = {"alice": ALICE_TOKENS}
        self.bystanders = 0

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.serve.api_token}"}

    def bystander(self) -> metrics_pb2.NumberDataPoint:
        """A valid point of a new user, sent beside poisoned ones: it must be stored."""
        self.bystanders += 1
        user = f"bystander-{self.bystanders}"
        self.expected[user] = 7
        return point(user, 7)

    def report(self) -> dict[str, int]:
        response = httpx.get(f"{self.serve.api}/v1/report", params={"by": "user", "period": "day", "at": DAY},
                             headers=self.auth, timeout=30)  # fmt: skip
        assert response.status_code == 200, response.text
        return {row["subject"]: row["input_tokens"] for row in response.json()["rows"]}

    def budget(self) -> dict[str, Any]:
        response = httpx.get(f"{self.serve.api}/v1/usage", params={"budget": "alice-daily"}, headers=self.auth,
                             timeout=30)  # fmt: skip
        assert response.status_code == 200, response.text
        return response.json()

    def assert_intact(self) -> None:
        """The report has exactly the valid totals; the enforcer's snapshot is fresh and right; health is ok."""
        deadline = time.monotonic() + 30
        while True:
            report, budget = self.report(), self.budget()
            used = [row["used_tokens"] for row in budget["budgets"] if row["subject"] == "alice"]
            if (report == self.expected and used == [ALICE_TOKENS] and not budget["stale"]) or (
                time.monotonic() > deadline
            ):
                break
            time.sleep(0.2)
        assert report == self.expected
        assert used == [ALICE_TOKENS]
        assert not budget["stale"] and budget["snapshot_age_seconds"] < 10
        health = httpx.get(f"{self.serve.api}/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok", health.text


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("hostile")
    policy = work / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    serve = ServeProcess(work / "serve", ["--policy", str(policy), "--refresh-interval", "0.3",
                                          "--max-request-bytes", "1000000", "--body-timeout", "2",
                                          "--grpc-max-connection-age", "1"]).start()  # fmt: skip
    try:
        valid = request(counter([point("alice", ALICE_TOKENS - 1000, time_ns=NOW - 2 * 10**9),
                                 point("alice", ALICE_TOKENS, time_ns=NOW - 10**9)]))  # fmt: skip
        assert post(serve.otlp_http, "metrics", valid.SerializeToString()).status_code == 200
        stack = Stack(serve)
        stack.assert_intact()
        yield stack
    finally:
        serve.stop()


def _send(stack: Stack, transport: str, body: ExportMetricsServiceRequest) -> ExportMetricsServiceResponse:
    if transport == "http":
        response = post(stack.serve.otlp_http, "metrics", body.SerializeToString())
        assert response.status_code == 200, response.content
        return ExportMetricsServiceResponse.FromString(response.content)
    return ExportMetricsServiceResponse.FromString(grpc_export(stack.serve.otlp_grpc, "metrics",
                                                               body.SerializeToString()))  # fmt: skip


# (case, the poisoned metric, how many points it has, what the partial success must say)
POISON: list[tuple[str, Any, str]] = [
    ("+inf on alice's own series", lambda: counter([point("alice", math.inf, time_ns=NOW)]), "not a finite number"),
    ("-inf", lambda: counter([point("alice", -math.inf)]), "not a finite number"),
    ("nan", lambda: counter([point("alice", math.nan)]), "not a finite number"),
    ("a negative series", lambda: counter([point("alice", -4000)]), "below 0"),
    ("2**63", lambda: counter([point("alice", 2**63 - 1)]), "above"),
    ("1e300", lambda: counter([point("alice", 1e300)]), "above"),
    ("a point at the end of time", lambda: counter([point("alice", 5, time_ns=2**63 + 5, start_ns=2**63)]), "its time"),
    ("a point from 1970", lambda: counter([point("alice", 5, time_ns=10**9, start_ns=0)]), "its time"),
    ("a point a year ahead", lambda: counter([point("alice", 5, time_ns=NOW + 365 * 86400 * 10**9)]), "its time"),
    ("a start after the point", lambda: counter([point("alice", 5, start_ns=NOW + 10**9)]), "its time"),
    ("alice's series going down", lambda: counter([point("alice", 10, time_ns=NOW)]), "lower than the series"),
    ("a delta counter", lambda: counter([point("alice", 9000)], temporality=1), "not a cumulative monotonic sum"),
    ("a non-monotonic sum", lambda: counter([point("alice", 9000)], monotonic=False), "not a cumulative monotonic sum"),
    (
        "a gauge under the counter's name",
        lambda: metrics_pb2.Metric(
            name=semconv.METRIC_USAGE_TOKENS, gauge=metrics_pb2.Gauge(data_points=[point("alice", 9000)])
        ),
        "not a cumulative monotonic sum",
    ),
    (
        "a point without a value",
        lambda: counter(
            [
                metrics_pb2.NumberDataPoint(
                    attributes=attributes({semconv.ENDUSER_ID: "alice"}), start_time_unix_nano=START, time_unix_nano=NOW
                )
            ]
        ),
        "no value",
    ),
]


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize(("case", "poisoned", "reason"), POISON, ids=[case for case, _, _ in POISON])
def test_poisoned_counter_points_are_refused_and_the_rest_is_stored(
    stack: Stack, transport: str, case: str, poisoned: Any, reason: str
) -> None:
    # The poisoned metric beside a valid one, in the same request.
    body = request(poisoned(), counter([stack.bystander()]))
    response = _send(stack, transport, body)
    assert response.partial_success.rejected_data_points == 1, case
    message = response.partial_success.error_message
    assert semconv.METRIC_USAGE_TOKENS in message and reason in message, message
    stack.assert_intact()


def test_rejected_points_are_counted_by_reason(stack: Stack) -> None:
    text = httpx.get(f"{stack.serve.api}/metrics", headers=stack.auth, timeout=10).text
    rejected = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("tokenmeter_receiver_rejected_points_total{")}  # fmt: skip
    label = 'tokenmeter_receiver_rejected_points_total{{metric="tokenmeter.usage.tokens",reason="{}"}}'
    # each case above ran over both transports
    assert rejected[label.format("not_finite")] >= 6
    assert rejected[label.format("negative")] >= 2
    assert rejected[label.format("too_large")] >= 4
    assert rejected[label.format("decreased")] >= 2


def test_a_series_forged_above_alice_counts_once_the_receiver_accepts_it(stack: Stack) -> None:
    # Not refusable by value (a bigger total is what a busy app sends): this is what the OTLP token
    # is for (docs/serve.md). Shown here so the limit of the guard is a test, not a belief.
    forged = request(counter([point("mallory", 123)]), instance="forger")
    assert _send(stack, "http", forged).partial_success.rejected_data_points == 0
    stack.expected["mallory"] = 123
    stack.assert_intact()


def _valid_body(stack: Stack) -> bytes:
    return request(counter([stack.bystander()])).SerializeToString()


def test_malformed_requests_get_4xx_and_change_nothing(stack: Stack) -> None:
    serve = stack.serve
    valid = _valid_body(stack)
    stack.expected.pop(f"bystander-{stack.bystanders}")  # never stored whole: only malformed versions are sent
    cases: list[tuple[str, bytes, dict[str, str], int]] = [
        ("garbage", b"\xff\x00garbage\x12\x34", {}, 400),
        ("empty JSON", b"", {"content-type": "application/json"}, 400),
        (
            "JSON nested 100k deep",
            b'{"resourceMetrics": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            {"content-type": "application/json"},
            400,
        ),
        (
            "a JSON counter of Infinity",
            json.dumps(
                {
                    "resourceMetrics": [
                        {
                            "scopeMetrics": [
                                {
                                    "metrics": [
                                        {
                                            "name": semconv.METRIC_USAGE_TOKENS,
                                            "sum": {
                                                "aggregationTemporality": 2,
                                                "isMonotonic": True,
                                                "dataPoints": [
                                                    {
                                                        "asDouble": "Infinity",
                                                        "timeUnixNano": str(NOW),
                                                        "attributes": [
                                                            {
                                                                "key": semconv.ENDUSER_ID,
                                                                "value": {"stringValue": "alice"},
                                                            }
                                                        ],
                                                    }
                                                ],
                                            },
                                        }
                                    ]
                                }
                            ]
                        }
                    ]
                }
            ).encode(),
            {"content-type": "application/json"},
            200,
        ),
        ("gzip bomb", gzip.compress(b"\x00" * 20_000_000), {"content-encoding": "gzip"}, 413),
        ("deflate bomb", zlib.compress(b"\x00" * 20_000_000), {"content-encoding": "deflate"}, 413),
        ("truncated gzip", gzip.compress(valid)[:-12], {"content-encoding": "gzip"}, 400),
        ("over the size limit", b"\x0a" * 1_500_000, {}, 413),
    ]
    cases += [(f"truncated at {cut}", valid[:cut], {}, 400) for cut in (1, 2, len(valid) // 2, len(valid) - 1)]
    for case, body, headers, status in cases:
        content_type = headers.pop("content-type", "application/x-protobuf")
        response = post(serve.otlp_http, "metrics", body, content_type=content_type, headers=headers)
        assert response.status_code == status, (case, response.status_code, response.content[:300])
        if status == 200:  # the JSON Infinity point: refused by the guard, named in partial success
            assert response.json()["partialSuccess"]["rejectedDataPoints"] in {1, "1"}, case
        elif content_type == "application/json":
            assert response.json()["message"], case
        else:
            assert status_pb2.Status.FromString(response.content).message, case
    stack.assert_intact()


def test_malformed_grpc_requests_are_invalid_arguments(stack: Stack) -> None:
    valid = _valid_body(stack)
    stack.expected.pop(f"bystander-{stack.bystanders}")
    for body in (b"\xff\x00garbage", valid[:1], valid[: len(valid) // 2], valid[:-1]):
        with pytest.raises(grpc.RpcError) as refused:
            grpc_export(stack.serve.otlp_grpc, "metrics", body)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, body[:20]
    # a gzip bomb: gRPC inflates it and refuses more than --max-request-bytes
    with grpc.insecure_channel(stack.serve.otlp_grpc, compression=grpc.Compression.Gzip) as channel:
        export = channel.unary_unary(GRPC_METHODS["metrics"])
        with pytest.raises(grpc.RpcError) as too_big:
            export(b"\x0a" * 20_000_000, timeout=30)
        assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    stack.assert_intact()


def _raw_http(address: str, head: str, body: bytes, wait: float = 20.0) -> bytes:
    """Send a request whose body is shorter than its Content-Length; what the server answers before closing."""
    host, port = address.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=wait) as connection:
        connection.sendall(head.encode() + b"\r\n\r\n" + body)
        received = b""
        started = time.monotonic()
        while time.monotonic() - started < wait:
            try:
                chunk = connection.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                return received  # closed by the server
            received += chunk
        raise AssertionError(f"the server held the connection for {wait} s; received {received[:200]!r}")


@pytest.mark.parametrize("path", ["/v1/metrics", "/v1/check"])
def test_a_body_that_never_arrives_gets_408_and_the_connection_closes(stack: Stack, path: str) -> None:
    address = stack.serve.otlp_http if path == "/v1/metrics" else stack.serve.api
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            f"Authorization: Bearer {stack.serve.api_token}\r\nContent-Length: 1000")  # fmt: skip
    answer = _raw_http(address, head, b"\x0a\x05short")
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    stack.assert_intact()


def _http2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _literal_header(name: str, value: str) -> bytes:
    # HPACK "literal header field without indexing, new name", no Huffman; names and values < 127 bytes
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def test_a_grpc_message_that_never_arrives_does_not_hold_the_connection(stack: Stack) -> None:
    # HTTP/2 by hand: a gRPC call whose message says 1,000 bytes and sends 10, then nothing.
    host, port = stack.serve.otlp_grpc.rsplit(":", 1)
    headers = b"".join(_literal_header(name, value) for name, value in [
        (":method", "POST"), (":scheme", "http"), (":path", GRPC_METHODS["metrics"]),
        (":authority", stack.serve.otlp_grpc), ("content-type", "application/grpc"), ("te", "trailers")])  # fmt: skip
    with socket.create_connection((host, int(port)), timeout=1) as connection:
        connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _http2_frame(4, 0, 0, b"")
                           + _http2_frame(1, 0x4, 1, headers)
                           + _http2_frame(0, 0, 1, b"\x00" + (1000).to_bytes(4, "big") + b"\x0a" * 10))  # fmt: skip
        started, received = time.monotonic(), b""
        while time.monotonic() - started < 30:
            try:
                chunk = connection.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            received += chunk
            while len(received) >= 9 and len(received) >= 9 + int.from_bytes(received[:3], "big"):
                length, kind, flags = int.from_bytes(received[:3], "big"), received[3], received[4]
                if kind == 4 and not flags & 1:  # acknowledge the server's settings, as a live client does
                    connection.sendall(_http2_frame(4, 1, 0, b""))
                if kind == 6 and not flags & 1:  # and its pings
                    connection.sendall(_http2_frame(6, 1, 0, received[9 : 9 + length]))
                received = received[9 + length :]
        else:
            raise AssertionError("the server held a call with a half-sent message for 30 s")
    # --grpc-max-connection-age 1 and --body-timeout 2: closed after ~3 s
    assert time.monotonic() - started < 25
    stack.assert_intact()


def test_the_enforcer_still_denies_on_the_true_usage(stack: Stack) -> None:
    # A call is admitted while used + reserved is below the limit. 3,000 used: a call reserving 7,000 is
    # admitted, and the next is denied (3,000 + 7,000 reach 10,000). With usage read as 0 or negative (a
    # frozen snapshot, a -4,000 series), the next would be allowed.
    def check(tokens: int, dry_run: bool) -> dict[str, Any]:
        body = {"user": "alice", "department": DEPARTMENT, "model": "qwen2.5-7b-instruct", "input_tokens": tokens,
                "max_output_tokens": 0, "dry_run": dry_run}  # fmt: skip
        response = httpx.post(f"{stack.serve.api}/v1/check", json=body, headers=stack.auth, timeout=10)
        assert response.status_code == 200, response.text
        return dict(response.json())

    first = check(7000, dry_run=False)
    assert first["decision"] == "allow"
    try:
        assert check(1, dry_run=True)["decision"] == "deny"
    finally:
        released = httpx.post(f"{stack.serve.api}/v1/release", json={"reservation_id": first["reservation_id"]},
                              headers=stack.auth, timeout=10)  # fmt: skip
        assert released.status_code == 200
