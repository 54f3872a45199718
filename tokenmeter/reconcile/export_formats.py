"""The providers' exports tokenmeter reads, each a declared table (docs/reconcile.md says what was verified where).

A table names, for one kind of file of one provider: the column (CSV header, any of its spellings) or JSON key
of each field; how the day is derived and in which time zone the provider's days are; the model, workspace /
project and API key columns; the token columns (a *wide* file: one column per token type) or the column naming
each row's token type and the one with its count, in which units (a *long* file); the cost column and its
currency. Another provider's export is supported by writing one more table here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from tokenmeter.reconcile.token_types import AUDIO_INPUT, AUDIO_OUTPUT, CACHED_INPUT, INPUT, OUTPUT, REQUESTS


@dataclass(frozen=True)
class ExportFormat:
    """One export of one provider. Field names are this table's own; ``columns`` says where each is in the file."""

    provider: str
    name: str
    file_type: Literal["csv", "json"]
    zone: str  # the time zone of the provider's days
    columns: Mapping[str, tuple[str, ...]]  # field -> CSV headers (case-insensitive) or JSON keys (a.b: nested)
    required: tuple[str, ...]  # fields the file must have (a CSV's header, a JSON result's keys)
    day_kind: Literal["date", "unix_seconds"] = "date"  # field "day"; "end" (optional): a bucket's end
    model_rule: Literal["as_is", "before_comma"] = "as_is"  # field "model"
    model_hint: str = ""  # what to do when the model is empty
    api_key: tuple[str, ...] = ()  # fields tried in order for the API key; field "workspace": project/workspace
    api_key_pattern: str = ""  # a value that does not match is no key (the part holds something else)
    token_fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # wide: field -> token types
    type_values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # long: field "type" -> token types
    units: Mapping[str, int] = field(default_factory=dict)  # long: field "unit" text -> tokens per unit
    default_currency: str = ""  # field "cost" (money), field "currency"
    compound: tuple[str, str, tuple[str, ...]] | None = None  # (field, separator, the fields of its parts)
    json_object: str = ""  # JSON: the results' "object" this table reads


OPENAI_USAGE_KEYS: Final = {
    "day": ("start_time",),
    "end": ("end_time",),
    "model": ("model",),
    "workspace": ("project_id",),
    "key": ("api_key_id",),
}
OPENAI_MODEL_HINT: Final = "the result has no model: ask the API with group_by=model"

OPENAI_COMPLETIONS: Final = ExportFormat(
    provider="openai",
    name="Usage API, completions (GET /v1/organization/usage/completions)",
    file_type="json",
    zone="UTC",
    json_object="organization.usage.completions.result",
    day_kind="unix_seconds",
    columns={
        **OPENAI_USAGE_KEYS,
        REQUESTS: ("num_model_requests",),
        INPUT: ("input_tokens",),
        CACHED_INPUT: ("input_cached_tokens",),
        OUTPUT: ("output_tokens",),
        AUDIO_INPUT: ("input_audio_tokens",),
        AUDIO_OUTPUT: ("output_audio_tokens",),
    },
    required=("day", "model", REQUESTS, INPUT, OUTPUT),
    model_hint=OPENAI_MODEL_HINT,
    api_key=("key",),
    token_fields={name: (name,) for name in (REQUESTS, INPUT, CACHED_INPUT, OUTPUT, AUDIO_INPUT, AUDIO_OUTPUT)},
)
OPENAI_EMBEDDINGS: Final = ExportFormat(
    provider="openai",
    name="Usage API, embeddings (GET /v1/organization/usage/embeddings)",
    file_type="json",
    zone="UTC",
    json_object="organization.usage.embeddings.result",
    day_kind="unix_seconds",
    columns={**OPENAI_USAGE_KEYS, REQUESTS: ("num_model_requests",), INPUT: ("input_tokens",)},
    required=("day", "model", REQUESTS, INPUT),
    model_hint=OPENAI_MODEL_HINT,
    api_key=("key",),
    token_fields={REQUESTS: (REQUESTS,), INPUT: (INPUT,)},
)
OPENAI_COSTS: Final = ExportFormat(
    provider="openai",
    name="Costs API (GET /v1/organization/costs)",
    file_type="json",
    zone="UTC",
    json_object="organization.costs.result",
    day_kind="unix_seconds",
    model_rule="before_comma",
    columns={
        "day": ("start_time",),
        "end": ("end_time",),
        "model": ("line_item",),
        "workspace": ("project_id",),
        "key": ("api_key_id",),
        "cost": ("amount.value",),
        "currency": ("amount.currency",),
    },
    required=("day", "cost", "currency"),
    api_key=("key",),
    model_hint="the result has no line item: ask the API with group_by=line_item (its model is the line item's "
    "text before the comma)",
)

DEEPSEEK_USAGE: Final = ExportFormat(
    provider="deepseek",
    name="usage export, amount-YYYY-M.csv (platform: Usage, Export)",
    file_type="csv",
    zone="UTC",
    columns={
        "day": ("utc_date",),
        "model": ("model",),
        "workspace": ("user_id",),
        "key_name": ("api_key_name",),
        "key": ("api_key",),
        "type": ("type",),
        "quantity": ("amount",),
    },
    required=("day", "model", "type", "quantity"),
    api_key=("key_name", "key"),
    type_values={
        "request_count": (REQUESTS,),
        "input_cache_hit_tokens": (INPUT, CACHED_INPUT),
        "input_cache_miss_tokens": (INPUT,),
        "output_tokens": (OUTPUT,),
    },
)
DEEPSEEK_COST: Final = ExportFormat(
    provider="deepseek",
    name="usage export, cost-YYYY-M.csv (platform: Usage, Export)",
    file_type="csv",
    zone="UTC",
    columns={
        "day": ("utc_date",),
        "model": ("model",),
        "workspace": ("user_id",),
        "cost": ("cost",),
        "currency": ("currency",),
    },
    required=("day", "model", "cost", "currency"),
)

# Alibaba Cloud's bill details of Model Studio (Statistic Item: Billable Item, by day). The Instance ID holds
# "ApiKeyID (before 2025-12-16: the billing type);WorkspaceID;ModelName;Input/Output type;Channel".
DASHSCOPE_BILL: Final = ExportFormat(
    provider="dashscope",
    name="bill details CSV (Expenses and Costs: Bill Details, product Model Studio)",
    file_type="csv",
    zone="Asia/Shanghai",
    columns={
        "day": ("Billing Date", "账单日期", "Consumption Time", "消费时间"),
        "instance": ("Instance ID", "实例ID"),
        "quantity": ("Usage", "用量"),
        "unit": ("Usage Unit", "用量单位"),
        "cost": ("Pretax Amount", "应付金额", "Payable Amount", "Amount After Price Reduction", "优惠后金额"),
        "currency": ("Currency", "币种"),
    },
    required=("day", "instance", "quantity", "unit", "cost"),
    default_currency="CNY",
    compound=("instance", ";", ("key", "workspace", "model", "type", "channel")),
    api_key=("key",),
    api_key_pattern=r"^\d+$",
    type_values={"input_token": (INPUT,), "output_token": (OUTPUT,)},
    units={
        "token": 1,
        "tokens": 1,
        "个": 1,
        "千token": 1000,
        "千tokens": 1000,
        "ktoken": 1000,
        "ktokens": 1000,
        "thousandtokens": 1000,
        "百万token": 1_000_000,
        "百万tokens": 1_000_000,
        "milliontokens": 1_000_000,
    },
)

FORMATS: Final = (OPENAI_COMPLETIONS, OPENAI_EMBEDDINGS, OPENAI_COSTS, DEEPSEEK_USAGE, DEEPSEEK_COST, DASHSCOPE_BILL)
PROVIDERS: Final = tuple(dict.fromkeys(f.provider for f in FORMATS))


def formats_of(provider: str, file_type: str) -> tuple[ExportFormat, ...]:
    return tuple(f for f in FORMATS if f.provider == provider and f.file_type == file_type)


def zone_of(provider: str) -> str:
    """The time zone of a provider's days (every export of one provider has the same)."""
    zones = {f.zone for f in FORMATS if f.provider == provider}
    if len(zones) != 1:
        raise ValueError(f"provider {provider!r}: no export table, or tables in several time zones {sorted(zones)}")
    return zones.pop()


def unit_key(text: str) -> str:
    """A unit as the tables spell it: lower case, no spaces (``Thousand Tokens`` -> ``thousandtokens``)."""
    return "".join(text.split()).lower()
