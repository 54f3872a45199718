"""`GET /healthz` of a real serve says not-ok, with 503 and the reason, when its store cannot answer."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
from serve_process import ServeProcess

DEADLINE_SECONDS = 60.0


def _health_until(api: str, status_code: int) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        response = httpx.get(f"{api}/healthz", timeout=30)
        if response.status_code == status_code:
            document: dict[str, Any] = response.json()
            return document
        if time.monotonic() > deadline:
            raise AssertionError(f"/healthz never answered {status_code}; last {response.status_code} {response.text}")
        time.sleep(0.1)


def test_health_follows_whether_the_store_can_answer(tmp_path: Path) -> None:
    serve = ServeProcess(tmp_path / "serve").start()
    try:
        store = serve.data_dir / "chdb"
        healthy = _health_until(serve.api, 200)
        assert healthy["status"] == "ok"
        assert healthy["store"] == f"chdb://{store}"

        # The store's files gone from under the running process (the issue deleted them; moved away
        # here, so they can come back). Metadata-only queries still answer then; reading data does not.
        os.rename(store, store.with_name("chdb-away"))
        try:
            broken = _health_until(serve.api, 503)
        finally:
            os.rename(store.with_name("chdb-away"), store)
        assert broken["status"] == "unavailable"
        [problem] = broken["problems"]
        assert problem.startswith("the store cannot answer:"), problem
        assert str(store) in problem  # chDB names the file it could not open

        again = _health_until(serve.api, 200)
        assert again["status"] == "ok" and again["problems"] == []
    finally:
        exit_code = serve.stop()
    assert exit_code == 0, "".join(serve.stderr_lines)
