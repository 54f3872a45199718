"""The demo's simulated users: three departments asking RAG-style questions, in Chinese and English.

Every call is what a knowledge-base assistant sends: a system prompt, retrieved passages
and a question; some stream, some embed passages first. The plan is fixed by a seed, so
every run makes the same calls. One service account (``batch-bot``) hammers a paid model
until its daily budget stops it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

SYSTEM_PROMPT: Final = (
    "你是企业知识库助手。只根据下面给出的资料回答；资料中没有的内容，请回答“知识库中没有相关信息”。"
    "Answer in the language of the question."
)
PASSAGES: Final = (
    "《费用报销制度》第三条：员工因公发生的差旅、招待费用，应在费用发生后三十日内通过报销系统提交，"
    "附发票原件及部门负责人审批单；逾期提交须说明原因并经财务总监批准。",
    "IT notice 2026-11: the VPN client 4.2 is required from 1 December. Older clients stop working after the "
    "certificate rotation. Install it from the software portal; on macOS allow the system extension.",
    "《员工休假管理办法》：员工累计工作满一年不满十年的，年休假五天；满十年不满二十年的，年休假十天；"
    "满二十年的，年休假十五天。当年未休完的年假可顺延至次年第一季度。",
    "Q3 business review: revenue grew 12% year on year to 48.6 million CNY. East China contributed 41% of the "
    "growth; churn in the SMB segment rose to 3.1% and is the focus for Q4.",
    "《客户服务规范》：客户投诉须在二十四小时内首次响应，四十八小时内给出处理方案；重大投诉同步上报"
    "客服部经理，并在工单系统中完整记录处理过程与客户反馈。",
    "Security policy: production database credentials are issued per person through the vault, valid for "
    "eight hours. Sharing credentials or storing them in code repositories is a dismissible offence.",
)
QUESTIONS: Final = (
    "出差回来多久之内必须提交报销？需要哪些材料？",
    "When do I have to update the VPN client, and where do I get it?",
    "我入职十二年了，今年有几天年假？没休完怎么办？",
    "Which region drove the revenue growth last quarter?",
    "客户投诉多久要给出处理方案？",
    "How long are production database credentials valid?",
    "报销逾期了还能提交吗？",
    "Summarise the Q3 business review in two sentences.",
)


@dataclass(frozen=True)
class Person:
    user: str
    department: str
    app: str
    model: str  # the model their assistant asks for
    calls: int
    stream_share: float  # how many of their calls stream
    max_tokens: int


# Chosen with the demo policy (policy.yaml) so that the run shows every decision:
# 研发部's premium use is downgraded, some users pass 80 % of their daily budget (warn),
# and batch-bot is denied once its budget is spent.
PEOPLE: Final = (
    Person("zhang.wei", "研发部", "kb-assistant", "qwen-max", 26, 0.3, 160),
    Person("li.na", "研发部", "kb-assistant", "qwen-max", 22, 0.3, 160),
    Person("wang.fang", "研发部", "code-review", "qwen-max", 18, 0.0, 200),
    Person("chen.jie", "销售部", "kb-assistant", "deepseek-chat", 24, 0.5, 128),
    Person("liu.yang", "销售部", "kb-assistant", "deepseek-chat", 18, 0.5, 128),
    Person("wu.hao", "销售部", "analyst", "deepseek-reasoner", 8, 0.3, 256),  # thinks first: reasoning tokens
    Person("zhao.lei", "客服部", "service-desk", "qwen2.5-7b-instruct", 30, 0.7, 128),
    Person("sun.li", "客服部", "service-desk", "qwen2.5-7b-instruct", 26, 0.7, 128),
    Person("zhou.min", "客服部", "service-desk", "qwen2.5-14b-instruct", 14, 0.0, 128),
    Person("batch-bot", "研发部", "nightly-summariser", "qwen-plus", 40, 0.0, 200),
)
EMBEDDING_MODEL: Final = "text-embedding-3-small"
# The service desk's questions are the same few every day: its retrieval finds the same passages for the
# same question, so the repeat-answer cache answers them again (the other apps' passages vary per call).
FAQ_APPS: Final = frozenset({"service-desk"})


@dataclass(frozen=True)
class Call:
    person: Person
    messages: list[dict[str, str]]
    stream: bool
    embed_first: bool  # embed the question (retrieval) before asking
    top_score: float = 0.0  # the best retrieved passage's score, reported with tokenmeter.retrieval()


def plan(seed: int = 20261128, scale: float = 1.0) -> list[Call]:
    """Every person's calls, interleaved in a fixed random order. ``scale`` shrinks the run (tests)."""
    rng = random.Random(seed)  # noqa: S311 - a simulation, not a secret
    calls = []
    for person in PEOPLE:
        for _ in range(max(1, round(person.calls * scale))):
            passages = rng.sample(PASSAGES, 3)
            question = rng.choice(QUESTIONS)
            if person.app in FAQ_APPS:  # retrieval finds the same passages for the same question
                passages = random.Random(question).sample(PASSAGES, 3)  # noqa: S311 - a simulation
            context = "\n\n".join(f"[资料{i + 1}] {passage}" for i, passage in enumerate(passages))
            messages = [
                {"role": "system", "content": f"{SYSTEM_PROMPT}\n\n{context}"},
                {"role": "user", "content": question},
            ]
            top_score = round(random.Random(f"score {question}").uniform(0.45, 0.95), 2)  # noqa: S311
            calls.append(Call(person, messages, rng.random() < person.stream_share, rng.random() < 0.3, top_score))
    rng.shuffle(calls)
    return calls
