# ruff: noqa: S608 - the SQL is this module's own constants; values are bound parameters
"""What the waste report reads (docs/waste.md): its findings over ``llm_usage``, one query each.

The calls: ``llm_usage FINAL`` (a re-sent span counts once) in ``[start, end)``, operations ``chat`` and
``text_completion`` that ran (not refused by a quota), not served by the repeat-answer cache (those are counted
apart: what the cache really saved). Cost per price (currency, real or virtual); an unpriced call's cost is
unknown, never 0: it is counted in ``unpriced_calls``. Every value is a bound parameter; the SQL text is built
from this module's constants only. The panels of the web page's Waste board
(:mod:`tokenmeter.dashboards.waste_panels`) run the same SQL over the page's range.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from tokenmeter.quota_wire import RouteFeatures
from tokenmeter.store.usage_queries import CALL_RAN
from tokenmeter.waste.findings import (
    CacheHits,
    CacheReplay,
    ContextShare,
    HeavyUser,
    IncompleteStreams,
    RepeatedPrompt,
    Retries,
)
from tokenmeter.waste.routing_replay import ReplayPolicy, RoutedCalls, RoutingReplay, replay_routing
from tokenmeter.waste.spend import Spend, money_list
from tokenmeter.waste.waste_report import WasteFindings, WasteReport, build_waste_report

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from tokenmeter.waste.waste_query import WasteQuery

PERIOD: Final = "time >= {start:DateTime64(9, 'UTC')} AND time < {end:DateTime64(9, 'UTC')}"
OPERATIONS: Final = "operation IN ('chat', 'text_completion')"


def calls_table(time_condition: str = PERIOD, condition: str = "1") -> str:
    """The ``calls`` CTE (without WITH): the period's calls the findings read."""
    return f"""calls AS (
        SELECT time, user, department, app, app_route, operation, request_model, effective_model, input_tokens,
               output_tokens, cost, currency, virtual, unpriced OR cost IS NULL AS no_price, prompt_hash, stream,
               stream_incomplete, question_chars, prompt_chars, conversation_depth, retrieval_passages,
               retrieval_top_score, route_intent, experiment
        FROM llm_usage FINAL
        WHERE {time_condition} AND {OPERATIONS} AND {CALL_RAN} AND NOT cache_hit AND {condition}
    )"""


def spend_columns(condition: str = "1") -> str:
    """The spend of the rows where ``condition`` holds: calls, tokens, costs per price, unpriced calls."""
    return (f"countIf({condition}) AS calls, sumIf(input_tokens, {condition}) AS input_tokens, "
            f"sumIf(output_tokens, {condition}) AS output_tokens, "
            f"sumMapIf([(currency, virtual)], [assumeNotNull(cost)], {condition} AND NOT no_price) AS costs, "
            f"countIf({condition} AND no_price) AS unpriced_calls")  # fmt: skip


def repeated_prompts_sql(time_condition: str = PERIOD, condition: str = "1", top: str = "{top:UInt32}") -> str:
    """(a) Per prompt hash, app and requested model seen at least twice; ranked by calls x cost."""
    return f"""WITH {calls_table(time_condition, condition)}
    SELECT prompt_hash, app, request_model AS model, uniqExact(user) AS users, {spend_columns()},
           calls * sumIf(assumeNotNull(cost), NOT no_price) AS rank
    FROM calls WHERE prompt_hash != ''
    GROUP BY prompt_hash, app, request_model HAVING calls >= 2
    ORDER BY rank DESC, calls DESC, prompt_hash, app, model
    LIMIT {top}"""


HEAVY_USERS_SQL: Final = f"""WITH {calls_table()},
    per_user AS (SELECT user, department, count() AS user_calls, sum(input_tokens) AS user_input
                 FROM calls WHERE user != '' GROUP BY user, department),
    per_department AS (SELECT department, count() AS department_calls, sum(input_tokens) AS department_input
                       FROM calls GROUP BY department)
    SELECT user, department, user_calls, user_input, department_calls, department_input
    FROM per_user INNER JOIN per_department USING (department)
    WHERE user_calls >= {{min_calls:UInt64}} AND user_input > 0
      AND toFloat64(user_input) * department_calls >= {{factor:Float64}} * department_input * user_calls
    ORDER BY user, department"""

CONTEXT_SQL: Final = f"""WITH {calls_table()}
    SELECT app, app_route, count(), sum(prompt_chars), sum(question_chars), sum(input_tokens)
    FROM calls WHERE prompt_chars > 0 AND question_chars > 0
    GROUP BY app, app_route ORDER BY app, app_route"""

STREAMS_SQL: Final = f"""WITH {calls_table()}
    SELECT app, user, countIf(stream) AS streams, {spend_columns("stream_incomplete")}
    FROM calls GROUP BY app, user HAVING calls > 0 ORDER BY app, user"""

# (e) A retry: a call whose user's previous call with the same prompt hash was at most the window before it.
RETRIES_SQL: Final = f"""WITH {calls_table()},
    ordered AS (
        SELECT *, lagInFrame(toFloat64(time), 1, -1e300) OVER (PARTITION BY user, prompt_hash ORDER BY time
                                                               ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS previous
        FROM calls WHERE user != '' AND prompt_hash != ''
    )
    SELECT app, user, {spend_columns("toFloat64(time) - previous <= {window:Float64}")}
    FROM ordered GROUP BY app, user HAVING calls > 0 ORDER BY app, user"""


def cache_replay_sql(time_condition: str = PERIOD, condition: str = "1", ttl: str = "{ttl:Float64}") -> str:
    """(f) Per requested model: each prompt hash's calls in time order; the first is a miss and stores the answer
    for the TTL, a call while it lives is a hit, the first after it a miss that stores it again."""
    hit = "(acc, c) -> if(c.1 - acc.1 < " + ttl + ", (acc.1, arrayPushBack(acc.2, toUInt8(1))), "
    hit += "(c.1, arrayPushBack(acc.2, toUInt8(0))))"
    return f"""WITH {calls_table(time_condition, condition)},
    hashed AS (
        SELECT request_model,
               arraySort(c -> c.1, groupArray((toFloat64(time), input_tokens, output_tokens, currency, virtual,
                                               assumeNotNull(cost), no_price))) AS ordered
        FROM calls WHERE prompt_hash != '' GROUP BY request_model, prompt_hash
    ),
    replayed AS (
        SELECT request_model, one.2 AS input_tokens, one.3 AS output_tokens, one.4 AS currency, one.5 AS virtual,
               one.6 AS cost, one.7 AS no_price, flag = 1 AS hit
        FROM (SELECT request_model, ordered,
                     arrayFold({hit}, ordered, (toFloat64(-1e300), CAST([], 'Array(UInt8)'))).2 AS hits
              FROM hashed)
        ARRAY JOIN ordered AS one, hits AS flag
    )
    SELECT request_model AS model, count() AS with_hash, {spend_columns("hit")}
    FROM replayed GROUP BY request_model ORDER BY calls DESC, model"""


WITHOUT_HASH_SQL: Final = f"""WITH {calls_table()}
    SELECT request_model, count() FROM calls WHERE prompt_hash = '' GROUP BY request_model"""

CACHE_HITS_SQL: Final = f"""
    SELECT count(), sum(saved_input_tokens), sum(saved_output_tokens),
           sumMapIf([(currency, virtual)], [assumeNotNull(saved_cost)], saved_cost IS NOT NULL)
    FROM llm_usage FINAL
    WHERE {PERIOD} AND {OPERATIONS} AND {CALL_RAN} AND cache_hit"""

# (g) Chat calls as routing would see them: those with recorded features outside experiments, grouped by
# everything the rules read (costs are linear in tokens, so output tokens are summed).
ROUTED_CALLS_SQL: Final = f"""WITH {calls_table()}
    SELECT app, department, request_model, effective_model, input_tokens, route_intent, question_chars,
           conversation_depth, retrieval_passages, retrieval_top_score, app_route, count(), sum(output_tokens)
    FROM calls WHERE operation = 'chat' AND experiment = '' AND prompt_chars > 0
    GROUP BY app, department, request_model, effective_model, input_tokens, route_intent, question_chars,
             conversation_depth, retrieval_passages, retrieval_top_score, app_route"""
NOT_ROUTED_SQL: Final = f"""WITH {calls_table()}
    SELECT countIf(experiment = '' AND prompt_chars = 0), countIf(experiment != '')
    FROM calls WHERE operation = 'chat'"""


def _parameters(query: WasteQuery) -> dict[str, Any]:
    period = query.period
    return {"start": period.start.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
            "end": period.end.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
            "top": query.top, "min_calls": query.heavy_min_calls, "factor": query.heavy_factor,
            "window": float(query.retry_window), "ttl": float(query.cache_ttl)}  # fmt: skip


def spend(row: Sequence[Any]) -> Spend:
    """A :class:`Spend` from :func:`spend_columns`' five values."""
    calls, input_tokens, output_tokens, (prices, amounts), unpriced = row
    costs = money_list({(str(currency), bool(virtual)): Decimal(amount)
                        for (currency, virtual), amount in zip(prices, amounts, strict=True)})  # fmt: skip
    return Spend(int(calls), int(input_tokens), int(output_tokens), costs, int(unpriced))


def read_findings(client: Client, query: WasteQuery) -> WasteFindings:
    """Findings (a) to (f) of the query's period."""
    parameters = _parameters(query)

    def rows(sql: str) -> Sequence[Sequence[Any]]:
        return client.query(sql, parameters=parameters).result_rows

    without_hash = {str(model): int(count) for model, count in rows(WITHOUT_HASH_SQL)}
    cache = [CacheReplay(str(r[0]), int(r[1]), without_hash.pop(str(r[0]), 0), spend(r[2:7]))
             for r in rows(cache_replay_sql())]  # fmt: skip
    cache += [CacheReplay(model, 0, count, Spend()) for model, count in without_hash.items()]
    return WasteFindings(
        repeated_prompts=[RepeatedPrompt(str(r[0]), str(r[1]), str(r[2]), int(r[3]), spend(r[4:9]))
                          for r in rows(repeated_prompts_sql())],
        heavy_users=[HeavyUser(str(r[0]), str(r[1]), *(int(v) for v in r[2:6])) for r in rows(HEAVY_USERS_SQL)],
        context=[ContextShare(str(r[0]), str(r[1]), *(int(v) for v in r[2:6])) for r in rows(CONTEXT_SQL)],
        incomplete_streams=[IncompleteStreams(str(r[0]), str(r[1]), int(r[2]), spend(r[3:8]))
                            for r in rows(STREAMS_SQL)],
        retries=[Retries(str(r[0]), str(r[1]), spend(r[2:7])) for r in rows(RETRIES_SQL)],
        cache=cache,
        cache_hits=_cache_hits(rows(CACHE_HITS_SQL)[0]),
    )  # fmt: skip


def _cache_hits(row: Sequence[Any]) -> CacheHits:
    calls, saved_input, saved_output, (prices, amounts) = row
    costs = money_list({(str(c), bool(v)): Decimal(a) for (c, v), a in zip(prices, amounts, strict=True)})
    return CacheHits(int(calls), int(saved_input), int(saved_output), costs)


def read_routing_replay(client: Client, query: WasteQuery, policy: ReplayPolicy) -> RoutingReplay:
    """(g) The policy's routing rules replayed over the period's chat calls."""
    parameters = _parameters(query)
    without_features, in_experiments = client.query(NOT_ROUTED_SQL, parameters=parameters).result_rows[0]
    result = client.query(ROUTED_CALLS_SQL, parameters=parameters).result_rows
    return replay_routing(policy.routing, (_routed(row) for row in result), policy.price_for, policy=policy.label,
                          without_features=int(without_features), in_experiments=int(in_experiments))  # fmt: skip


def _routed(row: Sequence[Any]) -> RoutedCalls:
    app, department, model, effective, input_tokens, intent, question, depth, passages, score, route = row[:11]
    features = RouteFeatures(
        intent=str(intent) or None,
        question_chars=int(question),
        depth=int(depth),
        passages=None if passages is None else int(passages),
        top_score=None if score is None else float(score),
        app_route=str(route) or None,
    )
    return RoutedCalls(str(app), str(department), str(model), str(effective), int(input_tokens), features,
                       int(row[11]), int(row[12]))  # fmt: skip


def read_waste(client: Client, query: WasteQuery, policy: ReplayPolicy | None, routing_note: str = "") -> WasteReport:
    """The waste report of ``query``'s period; the routing replay when ``policy`` is given, else ``routing_note``
    says why there is none."""
    replay = read_routing_replay(client, query, policy) if policy is not None else None
    return build_waste_report(query, read_findings(client, query), replay, routing_note)
