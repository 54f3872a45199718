"""`tokenmeter count`: tokens of a text, a file or chat messages with a model's own tokenizer, or the catalog.

tokenmeter count --model qwen2.5-7b-instruct --text "人工智能"
tokenmeter count --model gpt-4 --messages-json chat.json      # or "-" for stdin
tokenmeter count --model deepseek-chat --file prompt.txt
tokenmeter count --list-models [--models my-models.yaml]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from tokenmeter.catalog import ModelCatalog, ModelEntry
from tokenmeter.catalog.entry import PriceSource
from tokenmeter.cli.exit_codes import EXIT_OK
from tokenmeter.cli.input_error import InputError
from tokenmeter.pricing import PER_1K, RATE_FIELDS, Price, PriceTier
from tokenmeter.settings import get_settings
from tokenmeter.tokenizers import TokenCount, TokenizerRegistry


def add_count_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    count = commands.add_parser(
        "count",
        help="count tokens with a model's own tokenizer",
        description="Count tokens as the model's server would; prints one JSON object.",
    )
    count.add_argument("--model", help="model name as sent to the API, e.g. qwen2.5-7b-instruct")
    source = count.add_mutually_exclusive_group()
    source.add_argument("--text", help="plain text to count")
    source.add_argument("--file", metavar="PATH", help="count the text of this UTF-8 file ('-' for stdin)")
    source.add_argument(
        "--messages-json",
        metavar="FILE",
        help='count chat input: a JSON array of messages or {"messages": [...]}; "-" reads stdin',
    )
    source.add_argument("--list-models", action="store_true", help="print the catalog entries as JSON lines")
    count.add_argument("--models", type=Path, metavar="PATH", help="model catalog YAML (overrides TOKENMETER_MODELS)")
    count.set_defaults(run=run_count)


def run_count(args: argparse.Namespace, stdout: TextIO, stdin: TextIO) -> int:
    models_path = args.models if args.models is not None else get_settings().models
    catalog = ModelCatalog.load(models_path)
    if args.list_models:
        for entry in catalog.entries:
            stdout.write(json.dumps(_entry_json(entry), ensure_ascii=False) + "\n")
        return EXIT_OK
    if not args.model:
        raise InputError("--model is required (or use --list-models)")
    registry = TokenizerRegistry(catalog, allow_download=get_settings().allow_download)
    count: TokenCount
    if args.text is not None:
        count = registry.count_text(args.model, args.text)
    elif args.file is not None:
        count = registry.count_text(args.model, _read_text(args.file, stdin))
    elif args.messages_json is not None:
        messages = _read_messages(args.messages_json, stdin)
        try:
            count = registry.count_messages(args.model, messages)
        except (TypeError, ValueError) as exc:
            raise InputError(f"bad chat messages: {exc}") from None
    else:
        raise InputError("give one of --text, --file or --messages-json")
    result = {
        "model": args.model,
        "tokens": count.tokens,
        "source": count.source,
        "tokenizer": count.tokenizer,
    }
    stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    return EXIT_OK


def _rates_json(rates: Price | PriceTier) -> dict[str, str]:
    """input and output, and the other rates where the price or tier has its own."""
    named = {name: getattr(rates, name) for name in RATE_FIELDS}
    return {name: str(rate) for name, rate in named.items() if rate is not None}


def _price_json(price: Price, source: PriceSource | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        **_rates_json(price),
        "per": "1K" if price.per == PER_1K else "1M",
        "currency": price.currency,
        "virtual": price.virtual,
    }
    if price.batch is not None:  # the share of every rate a Batch API call costs
        out["batch"] = str(price.batch)
    if price.tiers:
        out["tiers"] = [{"up_to": tier.up_to, **_rates_json(tier)} for tier in price.tiers]
    if price.effective_from is not None:
        out["from"] = price.effective_from.isoformat()
    if source is not None and source.source is not None:
        out["source"] = source.source
    if source is not None and source.checked is not None:
        out["checked"] = source.checked.isoformat()
    return out


def _prices_json(entry: ModelEntry) -> dict[str, Any]:
    """``price``: the price valid now; ``prices``: the whole schedule, oldest first, unless it is just that price."""
    schedule = entry.prices.prices if entry.prices is not None else ()
    sources = entry.price_sources or (None,) * len(schedule)
    listed = [_price_json(price, source) for price, source in zip(schedule, sources, strict=True)]
    now = entry.price
    current = next((shown for price, shown in zip(schedule, listed, strict=True) if price is now), None)
    return {"price": current} if listed in ([], [current]) else {"price": current, "prices": listed}


def _entry_json(entry: ModelEntry) -> dict[str, Any]:
    return {
        "match": entry.pattern,
        "provider": entry.provider,
        "tokenizer": entry.tokenizer.describe() if entry.tokenizer is not None else None,
        "chat_format": entry.chat_format,
        **_prices_json(entry),
        "note": entry.note,
        "origin": entry.origin,
    }


def _read_text(path: str, stdin: TextIO) -> str:
    if path == "-":
        return stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"cannot read {path}: {reason}") from None


def _read_messages(path: str, stdin: TextIO) -> list[Any]:
    source = "standard input" if path == "-" else path
    try:
        document = json.loads(_read_text(path, stdin))
    except json.JSONDecodeError as exc:
        raise InputError(f"{source} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
    if isinstance(document, dict) and isinstance(document.get("messages"), list):
        return document["messages"]
    if isinstance(document, list):
        return document
    raise InputError(f'{source} must hold a JSON array of chat messages or an object with a "messages" array')
