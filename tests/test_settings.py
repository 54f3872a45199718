"""Settings from the environment: comma lists as operators write them, on old and new pydantic-settings."""

from __future__ import annotations

import pytest

from tokenmeter.settings import Settings


def test_comma_lists_and_json_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENMETER_USER_HEADER", " X-Remote-User , X-User-Id,")
    monkeypatch.setenv("TOKENMETER_TRUSTED_PROXIES", '["10.0.0.0/8", "::1"]')
    monkeypatch.setenv("TOKENMETER_PRELOAD_MODELS", "qwen2.5-7b-instruct")
    settings = Settings()
    assert settings.user_header == ["X-Remote-User", "X-User-Id"]
    assert settings.trusted_proxies == ["10.0.0.0/8", "::1"]
    assert settings.preload_models == ["qwen2.5-7b-instruct"]


def test_other_settings_still_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENMETER_FAIL_MODE", "sideways")
    with pytest.raises(ValueError, match="fail_mode"):
        Settings()
