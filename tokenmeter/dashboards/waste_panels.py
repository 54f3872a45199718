# ruff: noqa: S608 - panel SQL is built from this module's own constants; values arrive as macros
"""The web page's Waste board (docs/waste.md): the top repeated prompts and what a cache would have saved.

Both panels run the SQL of `tokenmeter report --waste` (:mod:`tokenmeter.store.waste_queries`) over the page's
range and variables, one line per row and price (currency, real or virtual; ``unpriced``: the calls without a
price, cost unknown, never 0). The routing replay needs the policy and the catalog, not only SQL: it is in
`tokenmeter report --waste` and ``GET /v1/waste``. Not a Grafana dashboard (yet).
"""

from __future__ import annotations

from typing import Final

from tokenmeter.dashboards.panels import Board, Panel, filters
from tokenmeter.store.waste_queries import cache_replay_sql, repeated_prompts_sql
from tokenmeter.waste.waste_query import CACHE_TTL_SECONDS, TOP

RANGE: Final = "$__timeFilter(time)"
VARIABLES: Final = filters("request_model")
UNPRICED: Final = "unpriced"
# Per row of a finding with a spend (costs: a map of (currency, virtual) -> amount): one line per price, one
# "unpriced" line for its unpriced calls, and one line without a price for a row that spent nothing.
PRICE_LINES: Final = f"""
    ARRAY JOIN arrayConcat(
        arrayMap((key, amount) -> (concat(key.1, if(key.2, ' (virtual)', '')), toNullable(amount)), costs.1, costs.2),
        if(unpriced_calls > 0, [('{UNPRICED}', CAST(NULL, 'Nullable(Decimal128(12))'))], []),
        if(unpriced_calls = 0 AND empty(costs.1), [('', CAST(NULL, 'Nullable(Decimal128(12))'))], [])
    ) AS price"""

REPEATED: Final = f"""
    SELECT substring(prompt_hash, 1, 16) AS prompt_hash, app, model, calls, users, input_tokens, output_tokens,
           price.1 AS currency_kind, price.2 AS cost, unpriced_calls
    FROM ({repeated_prompts_sql(RANGE, VARIABLES, str(TOP))}) AS repeated
    {PRICE_LINES}
    ORDER BY rank DESC, calls DESC, prompt_hash, app, model, currency_kind"""

CACHE: Final = f"""
    SELECT model, with_hash AS calls_with_hash, calls AS hits, round(hits / calls_with_hash, 4) AS hit_rate,
           input_tokens AS saved_input_tokens, output_tokens AS saved_output_tokens,
           price.1 AS currency_kind, price.2 AS saved_cost, unpriced_calls AS unpriced_hits
    FROM ({cache_replay_sql(RANGE, VARIABLES, str(CACHE_TTL_SECONDS))}) AS replay
    {PRICE_LINES}
    ORDER BY hits DESC, model, currency_kind"""

REPEATED_DESCRIPTION: Final = (
    f"The {TOP} prompt hashes (the same messages: the text is never stored) seen at least twice per app and "
    "requested model in the range, ranked by calls x cost: calls, distinct users, tokens, cost per price "
    "((virtual): a local model's internal price; unpriced: calls without a price, cost unknown). Chat and "
    "completion calls that ran, not those the answer cache served. `tokenmeter report --waste` has the month."
)
CACHE_DESCRIPTION: Final = (
    f"A replay of a cache by prompt hash and requested model with a TTL of {CACHE_TTL_SECONDS} s: per hash, the "
    "first call stores the answer, a call while it lives would have been a hit, the first after it stores it "
    "again. calls_with_hash: the calls with a prompt hash; hits and what they spent (saved). The routing replay "
    "needs the policy: `tokenmeter report --waste --policy FILE`."
)
WASTE_IDS: Final = (1, 2)


def waste_board() -> Board:
    return Board(
        uid="tokenmeter-waste", title="tokenmeter / Waste", file_name="tokenmeter-waste.json",
        panels=(
            Panel(WASTE_IDS[0], "Repeated prompts", "table", REPEATED, grid=(0, 0, 24, 9),
                  columns=(("cost", "cost"), ("input_tokens", "tokens"), ("output_tokens", "tokens")),
                  description=REPEATED_DESCRIPTION),
            Panel(WASTE_IDS[1], "Cache replay: what a cache would have saved", "table", CACHE, grid=(0, 9, 24, 7),
                  columns=(("saved_cost", "cost"), ("hit_rate", "percentunit"), ("saved_input_tokens", "tokens"),
                           ("saved_output_tokens", "tokens")), description=CACHE_DESCRIPTION),
        ),
    )  # fmt: skip
