"""Department credits: wallets of grants, an append-only ledger, and the balance derived from it.

The pure core, plain functions over plain data (no store, no clock): ``ledger`` (what is recorded,
and the rule that a replayed entry is recorded once), ``burn_down`` (the balance at a moment,
spending grants by priority then earliest expiry, with expiry and rollover), ``conversion`` (a
call's cost, real or virtual, in a wallet's unit). docs/credits.md describes the scheme.
"""
