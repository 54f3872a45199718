"""The answer cache's parts with real components: keys over normalised requests, AES-GCM sealing (the
`cryptography` package), the memory and directory stores on a real file system, and their TTL, bound and
thread safety."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tokenmeter.answer_cache.cache_keys import cacheable
from tokenmeter.answer_cache.configuration import open_answer_cache
from tokenmeter.answer_cache.entries import CachedAnswer
from tokenmeter.answer_cache.sealed_cache import AnswerCache
from tokenmeter.answer_cache.stores import DirectoryStore, EntryStore, MemoryStore
from tokenmeter.log_once import LogOnce
from tokenmeter.settings import Settings

HASH_KEY = b"answer-cache-test-key"
MODEL = "qwen2.5-7b-instruct"
CONTEXT = "已知信息：公司年假为每年15天，入职满一年后开始计算。"
QUESTION = "公司的年假有多少天？"
ANSWER_TEXT = "根据已知信息，公司的年假为每年 15 天。"
TTL = 600.0


class Clock:
    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def messages(question: str = QUESTION, context: str = CONTEXT) -> list[dict[str, Any]]:
    return [{"role": "system", "content": context}, {"role": "user", "content": question}]


def answer(text: str = ANSWER_TEXT, stored_at: float = 1_750_000_000.0) -> CachedAnswer:
    return CachedAnswer(text=text, model=MODEL, finish_reason="stop", input_tokens=812, output_tokens=23,
                        cost="0.0016702", currency="CNY", virtual=True, stored_at=stored_at)  # fmt: skip


def cache(store: EntryStore, clock: Callable[[], float], hash_key: bytes = HASH_KEY) -> AnswerCache:
    return AnswerCache.under_hash_key(hash_key, store, TTL, clock)


def key(kwargs: dict[str, Any] | None = None, model: str = MODEL, msgs: list[Any] | None = None) -> str:
    return cache(MemoryStore(TTL, 10), Clock()).key_for(model, messages() if msgs is None else msgs, kwargs or {})


# --- keys ----------------------------------------------------------------------------


def test_retyped_questions_share_a_key() -> None:
    """NFKC (full-width forms), whitespace runs and the ends of a text do not make another question."""
    retyped = messages(
        question="  公司的年假有多少天?\n", context="已知信息：公司年假为每年１５天，入职满一年后开始计算。 "
    )
    assert key(msgs=retyped) == key()
    assert key(msgs=messages(question="What  is\tthe\n\nleave policy? ")) == key(
        msgs=messages(question="What is the leave policy?")
    )
    assert key(msgs=[{"role": "user", "content": [{"type": "text", "text": " What  is  AI? "}]}]) == key(
        msgs=[{"role": "user", "content": [{"type": "text", "text": "What is AI?"}]}]
    )
    assert key(msgs=messages(question="What is the leave policy?")) != key(
        msgs=messages(question="Whatis the leave policy?")
    )


def test_sampling_stream_and_who_asked_are_not_in_the_key() -> None:
    import openai

    varied = {
        "temperature": 0.9, "top_p": 0.5, "seed": 7, "stream": True, "stream_options": {"include_usage": True},
        "user": "alice", "metadata": {"team": "hr"}, "n": 1, "frequency_penalty": 0.2, "max_tokens": None,
        "tools": openai.NOT_GIVEN, "extra_headers": {"X-Trace": "1"}, "timeout": 30,
    }  # fmt: skip
    assert key(varied) == key()


@pytest.mark.parametrize(
    ("change", "model", "msgs"),
    [
        ({}, MODEL, messages(context="已知信息：公司年假为每年20天。")),  # other retrieved passages
        ({}, MODEL, messages(question="公司的病假有多少天？")),
        ({}, "qwen2.5-72b-instruct", None),
        ({"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]}, MODEL, None),
        ({"tool_choice": "none"}, MODEL, None),
        ({"response_format": {"type": "json_object"}}, MODEL, None),
        ({"max_tokens": 64}, MODEL, None),
        ({"stop": ["。"]}, MODEL, None),
        ({"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}, MODEL, None),
        ({}, MODEL, [{"role": "user", "content": CONTEXT}, {"role": "user", "content": QUESTION}]),  # roles kept
        ({}, MODEL, list(reversed(messages()))),  # order kept
    ],
)
def test_what_shapes_the_answer_makes_another_key(change: dict[str, Any], model: str, msgs: Any) -> None:
    assert key(change, model=model, msgs=msgs) != key()


def test_keys_depend_on_the_hash_key_and_look_like_digests() -> None:
    one = cache(MemoryStore(TTL, 10), Clock()).key_for(MODEL, messages(), {})
    other = cache(MemoryStore(TTL, 10), Clock(), b"another-key").key_for(MODEL, messages(), {})
    assert one != other and len(one) == 64 and int(one, 16) >= 0


def test_only_single_choice_requests_without_logprobs_are_cacheable() -> None:
    assert cacheable({}) and cacheable({"n": 1})
    assert not cacheable({"n": 2}) and not cacheable({"logprobs": True}) and not cacheable({"top_logprobs": 3})


# --- sealing ---------------------------------------------------------------------------


def test_the_directory_holds_neither_the_answer_nor_the_question(tmp_path: Path) -> None:
    directory = tmp_path / "answers"
    answers = cache(DirectoryStore(directory, TTL, 100), Clock())
    digest = answers.key_for(MODEL, messages(), {})
    answers.put(digest, answer())
    assert answers.get(digest) == answer()
    files = list(directory.iterdir())
    assert [f.name for f in files] == [digest]
    data = files[0].read_bytes()
    for secret in (ANSWER_TEXT, QUESTION, CONTEXT, "年假", MODEL, "0.0016702"):
        assert secret.encode("utf-8") not in data
        assert secret.encode("utf-16-le") not in data
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600


def test_another_hash_key_cannot_read_the_entries(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path, TTL, 100)
    mine = cache(store, Clock())
    digest = mine.key_for(MODEL, messages(), {})
    mine.put(digest, answer())
    theirs = cache(store, Clock(), b"not-the-hash-key")
    assert theirs.get(digest) is None  # even told the file's name
    assert theirs.get(theirs.key_for(MODEL, messages(), {})) is None
    assert mine.get(digest) == answer()  # a foreign reader leaves the entry alone


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
def test_a_changed_entry_is_a_miss(tmp_path: Path, damage: str) -> None:
    answers = cache(DirectoryStore(tmp_path, TTL, 100), Clock())
    digest = answers.key_for(MODEL, messages(), {})
    answers.put(digest, answer())
    path = tmp_path / digest
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        data = data[:20]
    elif damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    assert answers.get(digest) is None


def test_an_entry_moved_under_another_key_is_a_miss(tmp_path: Path) -> None:
    answers = cache(DirectoryStore(tmp_path, TTL, 100), Clock())
    first = answers.key_for(MODEL, messages(), {})
    second = answers.key_for(MODEL, messages(question="公司的病假有多少天？"), {})
    answers.put(first, answer())
    os.replace(tmp_path / first, tmp_path / second)
    assert answers.get(second) is None


def test_each_entry_has_its_own_nonce(tmp_path: Path) -> None:
    answers = cache(MemoryStore(TTL, 10), Clock())
    answers.put("a" * 64, answer())
    first = answers.store.get("a" * 64)
    answers.put("a" * 64, answer())
    assert first != answers.store.get("a" * 64)


# --- TTL, bound, threads ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "directory"])
def test_entries_expire_after_the_ttl(tmp_path: Path, kind: str) -> None:
    clock = Clock()
    store: EntryStore = MemoryStore(TTL, 10, clock) if kind == "memory" else DirectoryStore(tmp_path, TTL, 10, clock)
    answers = cache(store, clock)
    answers.put("b" * 64, answer(stored_at=clock.now))
    clock.now += TTL - 1
    assert answers.get("b" * 64) is not None
    clock.now += 1
    assert answers.get("b" * 64) is None
    if kind == "directory":
        assert not (tmp_path / ("b" * 64)).exists()  # removed when read expired


def test_an_entry_older_than_the_ttl_inside_is_a_miss_whatever_its_file_says(tmp_path: Path) -> None:
    clock = Clock()
    answers = cache(DirectoryStore(tmp_path, TTL, 10, clock), clock)
    answers.put("c" * 64, answer(stored_at=clock.now - TTL))  # e.g. a file whose time was touched later
    assert answers.get("c" * 64) is None


def test_memory_keeps_the_most_recently_used_entries() -> None:
    store = MemoryStore(TTL, 3, Clock())
    for name in "abc":
        store.put(name * 64, name.encode())
    assert store.get("a" * 64) == b"a"
    store.put("d" * 64, b"d")
    assert [store.get(n * 64) for n in "abcd"] == [b"a", None, b"c", b"d"]
    assert len(store) == 3


def test_a_directory_past_its_bound_is_pruned_oldest_first(tmp_path: Path) -> None:
    clock = Clock()
    store = DirectoryStore(tmp_path, TTL, 5, clock)
    names = [f"{i:064x}" for i in range(8)]
    for name in names:
        clock.now += 1
        store.put(name, name.encode())
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) <= 5 and left == names[-len(left) :]
    (tmp_path / "notes.txt").write_text("not an entry")
    store.clear()
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_unknown_names_and_missing_directories_are_misses(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "never-made", TTL, 5)
    assert store.get("e" * 64) is None
    with pytest.raises(ValueError):
        store.get("../etc/passwd")


@pytest.mark.parametrize("kind", ["memory", "directory"])
def test_concurrent_puts_and_gets(tmp_path: Path, kind: str) -> None:
    store: EntryStore = MemoryStore(TTL, 1000) if kind == "memory" else DirectoryStore(tmp_path, TTL, 1000)
    answers = cache(store, time.time)
    questions = [f"问题 {i}" for i in range(20)]
    digests = [answers.key_for(MODEL, messages(question=q), {}) for q in questions]
    problems: list[str] = []

    def work(worker: int) -> None:
        for round_ in range(60):
            i = (worker * 7 + round_) % len(questions)
            answers.put(digests[i], answer(text=f"答案 {i}", stored_at=answers.now()))
            got = answers.get(digests[(i + 3) % len(questions)])
            if got is not None and got.text != f"答案 {(i + 3) % len(questions)}":
                problems.append(got.text)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert problems == []
    assert [answers.get(d).text for d in digests] == [f"答案 {i}" for i in range(20)]  # type: ignore[union-attr]


# --- settings ------------------------------------------------------------------------------


def test_off_by_default_and_read_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("TOKENMETER_ANSWER_CACHE", "TOKENMETER_ANSWER_CACHE_TTL", "TOKENMETER_ANSWER_CACHE_MAX_ENTRIES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TOKENMETER_HASH_KEY", "k")
    assert open_answer_cache(Settings()) is None
    monkeypatch.setenv("TOKENMETER_ANSWER_CACHE", f"dir:{tmp_path}")
    monkeypatch.setenv("TOKENMETER_ANSWER_CACHE_TTL", "120")
    monkeypatch.setenv("TOKENMETER_ANSWER_CACHE_MAX_ENTRIES", "50")
    opened = open_answer_cache(Settings())
    assert opened is not None and opened.ttl == 120
    assert isinstance(opened.store, DirectoryStore) and opened.store.directory == tmp_path
    monkeypatch.setenv("TOKENMETER_ANSWER_CACHE", str(tmp_path))
    assert isinstance(open_answer_cache(Settings()).store, DirectoryStore)  # type: ignore[union-attr]
    monkeypatch.setenv("TOKENMETER_ANSWER_CACHE", "memory")
    assert isinstance(open_answer_cache(Settings()).store, MemoryStore)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"answer_cache": "memory"}, "TOKENMETER_HASH_KEY"),
        ({"answer_cache": "answers/here", "hash_key": "k"}, "absolute directory"),
    ],
)
def test_what_is_missing_is_said_once_and_the_cache_stays_off(
    caplog: pytest.LogCaptureFixture, values: dict[str, Any], named: str
) -> None:
    warnings = LogOnce(logging.getLogger("tokenmeter"))
    with caplog.at_level(logging.DEBUG, logger="tokenmeter"):
        assert open_answer_cache(Settings(**values), warnings) is None
        assert open_answer_cache(Settings(**values), warnings) is None
    said = [r for r in caplog.records if named in r.getMessage()]
    assert [r.levelno for r in said] == [logging.WARNING, logging.DEBUG]


def test_without_cryptography_the_cache_stays_off(caplog: pytest.LogCaptureFixture, monkeypatch: Any) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "cryptography" else real_find_spec(n, *a)
    )
    with caplog.at_level(logging.WARNING, logger="tokenmeter"):
        assert (
            open_answer_cache(Settings(answer_cache="memory", hash_key="k"), LogOnce(logging.getLogger("tokenmeter")))
            is None
        )
    assert "tokenmeter-otel[answer-cache]" in caplog.text
