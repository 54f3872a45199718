# ruff: noqa: S608 - the SQL is built from this module's own constants; values arrive as macros
"""The wallets' standing, projection and top-up requests in SQL, for the Credits board and its alert rules.

The enforcer's balance is a replay of the ledger (:func:`tokenmeter.credits.burn_down.wallet_balance`:
priority, expiry, rollover, debt) that SQL does not reproduce in general. These queries show an
approximation, per account (``wallet/subject``):

- **credits** this year: what adds credits and is valid now (grants, top-ups, positive adjustments
  with ``at <= now < valid_until``), net of finance's negative adjustments this year;
- **used**: the ledger's charges this year (days already charged: not today's usage);
- **left**: credits - used.

That equals the exact balance while nothing has expired or rolled over within the year and no debt came
from last year. The year is the ledger's own: it ends where the grants and top-ups valid now end (each
ends at the next 1 January in the policy's time zone), so it starts a year before; an account with none
of them valid falls back to the UTC calendar year. Local days are cut on that start, 24 hours apart
(exact for time zones without daylight saving). ``GET /v1/credits/wallets`` is exact.

A request's state is folded from its events as :func:`tokenmeter.credits.approvals.fold` does, with what
the store shows: it is approved once the ledger has its top-up (``top_up:<request id>``), rejected or
cancelled by that event, expired once ``expires_at`` passed undecided, else pending. Only events that
counted are stored (:mod:`tokenmeter.store.credit_requests`), so no event needs judging again. Rows that
a retried write left twice are read once (per entry id, per event id).
"""

from __future__ import annotations

from typing import Final

from tokenmeter.store.credit_ledger import TABLE as LEDGER_TABLE
from tokenmeter.store.credit_requests import TABLE as REQUESTS_TABLE

PROJECTION_WINDOW_DAYS: Final = 30  # as tokenmeter.credits.projection.DEFAULT_WINDOW_DAYS
_ADDS: Final = "(kind IN ('grant', 'top_up') OR (kind = 'adjustment' AND amount > 0))"
_VALID_NOW: Final = f"{_ADDS} AND at <= now64(6) AND valid_until > now64(6)"
_THIS_YEAR: Final = "at >= year_start AND at <= now64(6)"
_TAKEN_THIS_YEAR: Final = f"(kind = 'charge' OR (kind = 'adjustment' AND amount < 0)) AND {_THIS_YEAR}"


def department_filter(subject: str = "subject") -> str:
    """The department variable: the accounts whose subject is one of the chosen departments."""
    return f"$__conditionalAll({subject} IN (${{department:singlequote}}), $department)"


def account_parts(account: str = "account") -> str:
    """``wallet`` and ``subject`` of a ledger account (wallet names have no ``/``; the organisation's has none)."""
    slash = f"position({account}, '/')"
    return (f"if({slash} > 0, substring({account}, 1, {slash} - 1), {account}) AS wallet, "
            f"if({slash} > 0, substring({account}, {slash} + 1), '') AS subject")  # fmt: skip


def ledger_rows() -> str:
    """The ledger, one row per (account, entry id), with the account's ``wallet`` and ``subject``."""
    return f"""
    SELECT account, {account_parts()}, entry_id, kind, amount, at, valid_until, actor, reason
    FROM (SELECT wallet AS account, entry_id, kind, amount, at, valid_until, actor, reason
          FROM {LEDGER_TABLE} LIMIT 1 BY wallet, entry_id)"""


def ledger_years() -> str:
    """Per account: ``year_start`` (the ledger's year, see the module), ``today_start`` (the local day's start)
    and ``local_today`` (its date)."""
    days_in = "intDiv(dateDiff('second', year_start, now64(6)), 86400)"
    valid_end = "maxIf(valid_until, kind IN ('grant', 'top_up') AND at <= now64(6) AND valid_until > now64(6))"
    return f"""
    SELECT account, year_start, year_start + toIntervalDay({days_in}) AS today_start,
           addDays(makeDate(toYear(year_start + INTERVAL 14 HOUR), 1, 1), {days_in}) AS local_today
    FROM (SELECT account, ifNull(addYears({valid_end}, -1), toDateTime64(toStartOfYear(now()), 6, 'UTC')) AS year_start
          FROM ({ledger_rows()}) GROUP BY account)"""


_RECENT: Final = f"kind = 'charge' AND at >= today_start - INTERVAL {PROJECTION_WINDOW_DAYS} DAY AND at < today_start"


def year_rows() -> str:
    """The entries that make this year's credits and use (what adds and is valid now, what took credits this
    year) and the charges of the projection's window; each with its account's year."""
    return f"""
    SELECT e.*, y.year_start, y.today_start, y.local_today
    FROM ({ledger_rows()}) AS e INNER JOIN ({ledger_years()}) AS y ON e.account = y.account
    WHERE ({_VALID_NOW}) OR ({_TAKEN_THIS_YEAR}) OR ({_RECENT})"""


def standing() -> str:
    """Per account: credits, used and left this year (the approximation), and the 30 days' charges before today
    (``recent_charged``, from ``recent_first``, the first such charge's day start) for the projection."""
    return f"""
    SELECT account, any(wallet) AS wallet, any(subject) AS subject,
           sumIf(amount, {_VALID_NOW}) + sumIf(amount, kind = 'adjustment' AND amount < 0 AND {_THIS_YEAR}) AS credits,
           sumIf(amount, kind = 'charge' AND {_THIS_YEAR}) AS used, credits - used AS left,
           sumIf(amount, {_RECENT}) AS recent_charged, countIf({_RECENT}) AS recent_charges,
           minIf(at, {_RECENT}) AS recent_first, today_start, local_today
    FROM ({year_rows()})
    GROUP BY account, today_start, local_today"""


def projection() -> str:
    """Per account, as :func:`tokenmeter.credits.projection.projection`: ``daily_rate`` (the average daily charge
    over the 30 days before today, or since the first charge in them), ``days_left`` and ``runs_out_on``
    (NULL without charges in the window; 0 and today when nothing is left)."""
    days = "toUInt32(round(dateDiff('second', recent_first, today_start) / 86400))"
    return f"""
    SELECT account, wallet, subject, credits, used, left,
           if(recent_charges = 0, toDecimal128(0, 9), recent_charged / {days}) AS daily_rate,
           multiIf(left <= 0, toNullable(toInt64(0)), recent_charges = 0, NULL,
                   toInt64(floor(left * {days} / recent_charged))) AS days_left,
           if(days_left IS NULL, NULL, addDays(local_today, assumeNotNull(days_left))) AS runs_out_on
    FROM ({standing()})"""


def requests() -> str:
    """Per top-up request: what was asked (``account``, ``wallet``, ``subject``, ``amount``, ``requester``,
    ``reason``, ``created_at``, ``expires_at``), ``levels_approved``, ``approved_by``, and ``state`` (pending,
    approved, rejected, cancelled, expired) with ``decided_at``, ``decided_by`` and its ``comment``."""
    ended = "kind IN ('rejected', 'cancelled')"
    return f"""
    SELECT r.*, multiIf(t.entry_id != '', 'approved', ended_how != '', ended_how,
                        expires_at <= now64(6), 'expired', 'pending') AS state,
           multiIf(state = 'approved', t.at, state IN ('rejected', 'cancelled'), ended_at, expires_at) AS decided_at,
           multiIf(state = 'approved', t.actor, ended_by) AS decided_by
    FROM (
      SELECT account, request_id, any(wallet) AS wallet, any(subject) AS subject, any(amount) AS amount,
             any(requester) AS requester, any(reason) AS reason, any(created_at) AS created_at,
             any(expires_at) AS expires_at, uniqExactIf(event_id, kind = 'approved') AS levels_approved,
             arrayStringConcat(arraySort(groupUniqArrayIf(actor, kind = 'approved')), ', ') AS approved_by,
             toString(anyIf(kind, {ended})) AS ended_how, anyIf(actor, {ended}) AS ended_by,
             anyIf(at, {ended}) AS ended_at, anyIf(comment, {ended}) AS comment
      FROM {REQUESTS_TABLE} GROUP BY account, request_id
    ) AS r
    LEFT JOIN (SELECT wallet AS account, entry_id, any(at) AS at, any(actor) AS actor FROM {LEDGER_TABLE}
               WHERE kind = 'top_up' GROUP BY account, entry_id) AS t
      ON t.account = r.account AND t.entry_id = concat('top_up:', r.request_id)"""
