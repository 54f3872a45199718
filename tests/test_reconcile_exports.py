"""The providers' exports read through their declared tables (docs/reconcile.md): OpenAI's Usage and Costs API
responses as saved, DeepSeek's monthly usage download (amount and cost CSVs, or the ZIP), Alibaba Cloud's bill
details of Model Studio; bad input names the file, line and column; the model key rule in Python and in SQL."""

from __future__ import annotations

import json
import zipfile
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tokenmeter.reconcile.export_rows import ExportError, ImportedExport
from tokenmeter.reconcile.model_names import export_model_key, model_key, model_key_sql, parse_aliases
from tokenmeter.reconcile.reading import read_export

NOV_1_UTC = 1793491200  # 2026-11-01T00:00:00Z
DAY = 86_400

DEEPSEEK_AMOUNT = """user_id,utc_date,model,api_key_name,api_key,type,price,amount
u-1,2026-11-03,deepseek-chat,kb,sk-ab****yz,request_count,,2
u-1,2026-11-03,deepseek-chat,kb,sk-ab****yz,input_cache_hit_tokens,0.2,600
u-1,2026-11-03,deepseek-chat,kb,sk-ab****yz,input_cache_miss_tokens,2,900
u-1,2026-11-03,deepseek-chat,kb,sk-ab****yz,output_tokens,3,300
u-1,2026-11-03,deepseek-chat,,sk-cd****wx,request_count,,1
u-1,2026-11-03,deepseek-chat,,sk-cd****wx,image_tokens,,7
"""
DEEPSEEK_COST = """user_id,utc_date,model,wallet_type,cost,currency
u-1,2026-11-03,deepseek-chat,Paid,0.0160,CNY
u-1,2026-11-03,deepseek-chat,Granted,0.0008,CNY
"""
DASHSCOPE_BILL = """账期,账单日期,产品,实例ID,计费项,用量,用量单位,应付金额,币种
2026-11,2026-11-03,大模型服务平台百炼,12345;llm-ws1;qwen-max;input_token;api,模型推理,1.5,千Token,0.0036,CNY
2026-11,2026-11-03,大模型服务平台百炼,12345;llm-ws1;qwen-max;output_token;app,模型推理,200,Token,0.00192,CNY
2026-11,2026-11-03,大模型服务平台百炼,text_token;llm-ws1;qwen-max;output_token;app,模型推理,100,tokens,0.00096,CNY
2026-11,2026-11-03,大模型服务平台百炼,kb-index-1,知识库,3,GB,0.5,CNY
"""


def _page(*buckets: dict[str, Any]) -> dict[str, Any]:
    return {"object": "page", "data": list(buckets), "has_more": False, "next_page": None}


def _bucket(day: int, *results: dict[str, Any]) -> dict[str, Any]:
    start = NOV_1_UTC + (day - 1) * DAY
    return {"object": "bucket", "start_time": start, "end_time": start + DAY, "results": list(results)}


def _completions(model: str | None, requests: int, tokens: tuple[int, int, int], **more: Any) -> dict[str, Any]:
    return {
        "object": "organization.usage.completions.result",
        "num_model_requests": requests,
        "input_tokens": tokens[0],
        "input_cached_tokens": tokens[1],
        "output_tokens": tokens[2],
        "input_audio_tokens": 0,
        "output_audio_tokens": 0,
        "project_id": None,
        "user_id": None,
        "api_key_id": None,
        "model": model,
        "batch": None,
        **more,
    }


def _cost(line_item: str | None, value: str, **more: Any) -> str:
    """A costs result with the amount as the API writes it: a bare JSON number (kept as text)."""
    item = json.dumps(line_item)
    return (
        f'{{"object": "organization.costs.result", "amount": {{"value": {value}, "currency": "usd"}}, '
        f'"line_item": {item}, "project_id": {json.dumps(more.get("project_id"))}}}'
    )


def _values(export: ImportedExport) -> dict[tuple[Any, ...], tuple[Decimal, str]]:
    """(day, model key, workspace, API key, token type) -> (quantity, currency); one model's names added up."""
    found: dict[tuple[Any, ...], tuple[Decimal, str]] = {}
    for row in export.rows:
        key = (row.key.day, row.model_key, row.key.workspace, row.key.api_key, row.key.token_type)
        found[key] = (found.get(key, (Decimal(0), ""))[0] + row.quantity, row.currency)
    return found


def _write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_openai_usage_and_costs_api_responses(tmp_path: Path) -> None:
    usage = _page(
        _bucket(
            3,
            _completions("gpt-4o-2024-08-06", 5, (1000, 800, 500), api_key_id="key_1", project_id="proj_a"),
            _completions("gpt-4o-2024-08-06", 1, (10, 0, 5), api_key_id="key_1", project_id="proj_a", user_id="u2"),
            {
                "object": "organization.usage.embeddings.result",
                "input_tokens": 42,
                "num_model_requests": 2,
                "model": "text-embedding-3-small",
            },
            {"object": "organization.usage.images.result", "images": 1, "num_model_requests": 1},
        ),
    )
    # The costs as pages of a JSON array; amounts as a bare number and as a string, never through a float.
    costs = (
        "["
        + json.dumps(_page(_bucket(3))).replace(
            '"results": []',
            '"results": ['
            + ", ".join(
                [
                    _cost("gpt-4o-2024-08-06, input", "0.00325"),
                    _cost("gpt-4o-2024-08-06, output", '"0.0050"'),
                    _cost("GPT-4o-2024-08-06, cached input", "0.1000000000000000055"),
                ]
            )
            + "]",
        )
        + "]"
    )
    export = read_export(
        "openai", [_write(tmp_path, "usage.json", json.dumps(usage)), _write(tmp_path, "costs.json", costs)]
    )
    nov3 = date(2026, 11, 3)
    assert _values(export) == {
        (nov3, "gpt-4o", "proj_a", "key_1", "requests"): (Decimal(6), ""),
        (nov3, "gpt-4o", "proj_a", "key_1", "input"): (Decimal(1010), ""),
        (nov3, "gpt-4o", "proj_a", "key_1", "cached_input"): (Decimal(800), ""),
        (nov3, "gpt-4o", "proj_a", "key_1", "output"): (Decimal(505), ""),
        (nov3, "gpt-4o", "proj_a", "key_1", "audio_input"): (Decimal(0), ""),
        (nov3, "gpt-4o", "proj_a", "key_1", "audio_output"): (Decimal(0), ""),
        (nov3, "text-embedding-3-small", "", "", "requests"): (Decimal(2), ""),
        (nov3, "text-embedding-3-small", "", "", "input"): (Decimal(42), ""),
        # 0.00325 + 0.0050 + 0.1 (the float artefact beyond 12 places rounded half-even)
        (nov3, "gpt-4o", "", "", "cost"): (Decimal("0.10825"), "USD"),
    }
    assert export.zone == "UTC" and export.days == (nov3, nov3)
    assert export.skipped == {
        f"{tmp_path / 'usage.json'}: results of object 'organization.usage.images.result' (not in the tables)": 1
    }


def test_openai_pages_as_json_lines_and_hourly_buckets(tmp_path: Path) -> None:
    hours = [
        {**_bucket(3, _completions("gpt-4o-mini", 1, (100, 0, 10))), "end_time": NOV_1_UTC + 2 * DAY + 3600 * h}
        for h in (1, 2)
    ]
    for index, bucket in enumerate(hours):
        bucket["start_time"] = bucket["end_time"] - 3600
        hours[index] = bucket
    lines = "\n".join(json.dumps(_page(bucket)) for bucket in hours)
    export = read_export("openai", [_write(tmp_path, "usage.jsonl", lines)])
    assert _values(export)[(date(2026, 11, 3), "gpt-4o-mini", "", "", "input")] == (Decimal(200), "")


def test_deepseek_usage_download(tmp_path: Path) -> None:
    """The amount CSV is long (one row per token type), the cost CSV per day and model; or both in the ZIP."""
    archive = tmp_path / "usage_data_2026_11.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("usage_data_2026_11/amount-2026-11.csv", DEEPSEEK_AMOUNT)
        zipped.writestr("usage_data_2026_11/cost-2026-11.csv", DEEPSEEK_COST)
    export = read_export("deepseek", [archive])
    nov3 = date(2026, 11, 3)
    assert _values(export) == {
        (nov3, "deepseek-chat", "u-1", "kb", "requests"): (Decimal(2), ""),
        (nov3, "deepseek-chat", "u-1", "kb", "input"): (Decimal(1500), ""),  # hit + miss
        (nov3, "deepseek-chat", "u-1", "kb", "cached_input"): (Decimal(600), ""),
        (nov3, "deepseek-chat", "u-1", "kb", "output"): (Decimal(300), ""),
        (nov3, "deepseek-chat", "u-1", "sk-cd****wx", "requests"): (Decimal(1), ""),  # no key name: the masked key
        (nov3, "deepseek-chat", "u-1", "", "cost"): (Decimal("0.0168"), "CNY"),  # paid and granted
    }
    assert export.skipped == {
        f"{archive}:usage_data_2026_11/amount-2026-11.csv: type 'image_tokens' (not in the table)": 1
    }


def test_dashscope_bill_details_in_chinese_and_gb18030(tmp_path: Path) -> None:
    export = read_export("dashscope", [_write(tmp_path, "bill.csv", DASHSCOPE_BILL, "gb18030")])
    nov3 = date(2026, 11, 3)
    assert _values(export) == {
        (nov3, "qwen-max", "llm-ws1", "12345", "input"): (Decimal(1500), ""),  # 1.5 thousand tokens
        (nov3, "qwen-max", "llm-ws1", "12345", "output"): (Decimal(200), ""),
        (nov3, "qwen-max", "llm-ws1", "12345", "cost"): (Decimal("0.00552"), "CNY"),
        (nov3, "qwen-max", "llm-ws1", "", "output"): (Decimal(100), ""),  # before 2025-12-16: no key in the id
        (nov3, "qwen-max", "llm-ws1", "", "cost"): (Decimal("0.00096"), "CNY"),
    }
    assert export.zone == "Asia/Shanghai"
    assert export.skipped == {f"{tmp_path / 'bill.csv'}: 实例ID not of 5 parts separated by ';'": 1}


def test_dashscope_bill_details_in_english(tmp_path: Path) -> None:
    bill = (
        "Billing Date,Instance ID,Usage,Usage Unit,Pretax Amount,Currency\n"
        "2026-11-03,9;llm-ws1;qwen-plus-2025-01-25;input_token;api,2,Million Tokens,1.6,CNY\n"
    )
    export = read_export("dashscope", [_write(tmp_path, "bill.csv", bill)])
    assert _values(export)[(date(2026, 11, 3), "qwen-plus", "llm-ws1", "9", "input")] == (Decimal(2_000_000), "")


@pytest.mark.parametrize(
    ("provider", "name", "text", "message"),
    [
        (
            "deepseek",
            "amount.csv",
            DEEPSEEK_AMOUNT.replace(",600\n", ",6x0\n"),
            "line 3, column 'amount': '6x0' is not a number",
        ),
        (
            "deepseek",
            "amount.csv",
            DEEPSEEK_AMOUNT.replace(
                "2026-11-03,deepseek-chat,kb,sk-ab****yz,output", "2026-13-03,deepseek-chat,kb,sk-ab****yz,output"
            ),
            "line 5, column 'utc_date': '2026-13-03' is not a date (YYYY-MM-DD)",
        ),
        (
            "deepseek",
            "cost.csv",
            DEEPSEEK_COST.replace(",-0.0008,", ",-0.0008,").replace("0.0008", "-0.0008"),
            "line 3, column 'cost': '-0.0008' is not a finite, non-negative number",
        ),
        (
            "deepseek",
            "cost.csv",
            DEEPSEEK_COST.replace("0.0160,CNY", "0,0160,CNY"),
            "line 2, column 'currency': '0160' is not a currency code (ISO 4217, e.g. CNY)",
        ),
        (
            "deepseek",
            "other.csv",
            "date,tokens\n2026-11-03,5\n",
            "line 1: the header 'date, tokens' is none of the exports known",
        ),
        (
            "dashscope",
            "bill.csv",
            DASHSCOPE_BILL.replace("千Token", "桶"),
            "line 2, column '用量单位': unknown unit '桶'",
        ),
        (
            "openai",
            "usage.json",
            json.dumps(_page(_bucket(3, _completions(None, 1, (1, 0, 1))))),
            "page 1, data[0].results[0], column 'model': the result has no model: ask the API with group_by=model",
        ),
        (
            "openai",
            "usage.json",
            json.dumps(
                _page(
                    _bucket(
                        3,
                        {
                            "object": "organization.usage.completions.result",
                            "model": "m",
                            "input_tokens": 1,
                            "output_tokens": 1,
                        },
                    )
                )
            ),
            "page 1, data[0].results[0], column 'num_model_requests': missing",
        ),
        (
            "openai",
            "usage.json",
            '{"object": "page", "data": [\n  {"start_time": 1,}\n]}',
            "line 2, column 20: not JSON",
        ),
        (
            "openai",
            "usage.json",
            json.dumps(_page({**_bucket(3, _completions("m", 1, (1, 0, 1))), "end_time": NOV_1_UTC + 40 * DAY})),
            "column 'end_time': a bucket longer than a day cannot be put on one day: ask with bucket_width=1d",
        ),
    ],
)
def test_bad_input_names_the_file_line_and_column(
    tmp_path: Path, provider: str, name: str, text: str, message: str
) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(ExportError) as raised:
        read_export(provider, [path])
    assert str(raised.value).startswith(f"{path}, ") and message in str(raised.value), str(raised.value)


def test_model_keys_and_aliases() -> None:
    assert [
        model_key(name)
        for name in (
            "gpt-4o-2024-08-06",
            "GPT-4o",
            "gpt-4-0613",
            "qwen-plus-20250125",
            "deepseek-ai/DeepSeek-V3",
            "GPT-5 nano",
            "model-2048",
            "o1-mini-2024-09-12",
        )
    ] == ["gpt-4o", "gpt-4o", "gpt-4", "qwen-plus", "deepseek-v3", "gpt-5-nano", "model-2048", "o1-mini"]
    aliases = parse_aliases(["DeepSeek-V3.2=deepseek-chat"])
    assert export_model_key("deepseek-v3.2", aliases) == "deepseek-chat"
    assert export_model_key("deepseek-reasoner", aliases) == "deepseek-reasoner"
    with pytest.raises(ValueError, match="is not EXPORT_NAME=TOKENMETER_NAME"):
        parse_aliases(["deepseek-chat"])


def test_the_sql_model_key_is_the_python_one(migrated_store: Any) -> None:
    names = [
        "gpt-4o-2024-08-06",
        "GPT-4o",
        " gpt-4-0613 ",
        "qwen-plus-20250125",
        "deepseek-ai/DeepSeek-V3",
        "GPT-5 nano",
        "model-2048",
        "o1-mini-2024-09-12",
        "qwen-max-1301",
        "Qwen/Qwen2.5-7B-Instruct",
        "通义千问-Max",
    ]
    rows = migrated_store.query(
        f"SELECT name, {model_key_sql('name')} FROM (SELECT arrayJoin({{names:Array(String)}}) AS name)",
        parameters={"names": names},
    ).result_rows
    assert dict(rows) == {name: model_key(name) for name in names}
