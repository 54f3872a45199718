"""Who may write usage: serve never listens for OTLP beyond loopback without a token."""

from __future__ import annotations

import stat
from pathlib import Path

import grpc
import pytest
from otlp_requests import grpc_export, now_ns, post, usage_counter_request
from serve_process import running_serve


def _body() -> bytes:
    return usage_counter_request("alice", [(now_ns(), 10)], now_ns() - 10**9).SerializeToString()


def test_beyond_loopback_serve_makes_a_token_and_requires_it(tmp_path: Path) -> None:
    with running_serve(tmp_path / "serve", "--host", "0.0.0.0") as serve:
        token_file = Path(serve.info["otlp_token"])
        assert token_file.parent == tmp_path / "serve" / "xdg" / "tokenmeter"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text(encoding="utf-8").strip()
        assert len(token) >= 32
        http = serve.otlp_http.replace("0.0.0.0", "127.0.0.1")
        grpc_address = serve.otlp_grpc.replace("0.0.0.0", "127.0.0.1")
        assert post(http, "metrics", _body()).status_code == 401
        assert post(http, "metrics", _body(), headers={"authorization": "Bearer wrong"}).status_code == 401
        assert post(http, "metrics", _body(), headers={"authorization": f"Bearer {token}"}).status_code == 200
        with pytest.raises(grpc.RpcError) as refused:
            grpc_export(grpc_address, "metrics", _body())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        grpc_export(grpc_address, "metrics", _body(), metadata=(("authorization", f"Bearer {token}"),))
    assert any("OTLP receivers require the bearer token in" in line for line in serve.stderr_lines)
    # the same token after a restart: apps keep working
    with running_serve(tmp_path / "serve", "--host", "0.0.0.0") as again:
        assert Path(again.info["otlp_token"]).read_text(encoding="utf-8").strip() == token


def test_a_token_given_is_used_and_not_written(tmp_path: Path) -> None:
    with running_serve(tmp_path / "serve", "--host", "0.0.0.0",
                       env={"TOKENMETER_OTLP_TOKEN": "given-token"}) as serve:  # fmt: skip
        assert serve.info["otlp_token"] == "TOKENMETER_OTLP_TOKEN"
        http = serve.otlp_http.replace("0.0.0.0", "127.0.0.1")
        assert post(http, "metrics", _body(), headers={"authorization": "Bearer given-token"}).status_code == 200
    assert not (tmp_path / "serve" / "xdg" / "tokenmeter" / "otlp-token").exists()


def test_on_loopback_no_token_is_asked_and_serve_says_what_that_means(tmp_path: Path) -> None:
    with running_serve(tmp_path / "serve") as serve:
        assert serve.info["otlp_token"] is None
        assert post(serve.otlp_http, "metrics", _body()).status_code == 200
    assert any("any process on this machine can report usage" in line for line in serve.stderr_lines)
