"""The bearer tokens servers make for local tools: kept in files of mode 0600, reused across restarts."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Final

from tokenmeter.settings import default_api_token_file

logger = logging.getLogger(__name__)

OTLP_TOKEN_FILE_NAME: Final = "otlp-token"  # noqa: S105 - a file name


def api_token_path(token_dir: Path | None = None) -> Path:
    return token_dir / default_api_token_file().name if token_dir is not None else default_api_token_file()


def otlp_token_path(token_dir: Path | None = None) -> Path:
    """Where serve writes the OTLP token it makes when it listens beyond loopback."""
    return (token_dir if token_dir is not None else default_api_token_file().parent) / OTLP_TOKEN_FILE_NAME


def load_or_create_api_token(token_dir: Path | None = None, path: Path | None = None) -> tuple[str, Path]:
    """The API token serve writes for local tools (mode 0600); reused across restarts."""
    return load_or_create_token(path or api_token_path(token_dir))


def load_or_create_token(path: Path) -> tuple[str, Path]:
    """A bearer token kept in ``path`` (mode 0600): read when there, else made; reused across restarts."""
    if path.exists():
        if path.stat().st_mode & 0o077:  # readable by others: tighten, and say so
            logger.warning("%s was readable by other users; setting its mode to 0600", path)
            path.chmod(0o600)
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token, path
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token, path
