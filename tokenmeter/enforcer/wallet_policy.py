"""Wallets in the policy file: who holds credits, how many a year, and who approves a top-up.

A wallet belongs to one subject of a scope (``subject: 研发部``), or, without ``subject``, to every
subject of the scope, each with a wallet of its own ("each department: 100,000 credits a year").
A budget draws on a wallet with ``wallet: <name>`` instead of ``limit:``; it takes the wallet's
scope and subject and counts per calendar year in the policy's time zone. docs/credits.md has the
format; the ledger these wallets keep is :mod:`tokenmeter.credits`.
"""

from __future__ import annotations

import functools
from decimal import Decimal
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tokenmeter.credits.conversion import CREDITS, WalletUnit
from tokenmeter.credits.ledger import wallet_account

Scope = Literal["organisation", "department", "user", "app"]
SUBJECT_PLACEHOLDER: Final = "{subject}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Approvals(_Strict):
    """Who approves a top-up of the wallet, by SSO group; ``{subject}`` stands for the wallet's subject
    (``dept-heads-{subject}`` is the head group of each department). Nobody approves their own request."""

    approvers: tuple[str, ...] = Field(min_length=1)
    # Requests above this amount (in the wallet's unit) need a second approval, from these groups.
    second_level_above: Decimal | None = Field(default=None, gt=0)
    second_level_approvers: tuple[str, ...] = ()
    expire_after_days: int = Field(default=7, gt=0, le=366)  # a request nobody acted on expires

    @model_validator(mode="after")
    def _levels(self) -> Approvals:
        if (self.second_level_above is None) != (not self.second_level_approvers):
            raise ValueError("second_level_above and second_level_approvers go together")
        return self

    def groups_for(self, subject: str, *, second_level: bool = False) -> tuple[str, ...]:
        """The SSO groups whose members may approve at this level, for the wallet of ``subject``."""
        groups = self.second_level_approvers if second_level else self.approvers
        return tuple(group.replace(SUBJECT_PLACEHOLDER, subject) for group in groups)

    def levels_for(self, amount: Decimal) -> int:
        """How many approvals (by different people) a request of ``amount`` needs: 1 or 2."""
        above = self.second_level_above
        return 2 if above is not None and amount > above else 1


class Wallet(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=64)
    scope: Scope
    subject: str | None = None  # omitted: every subject of the scope has a wallet of its own
    unit: str = Field(default=CREDITS, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")  # credits, or a currency: CNY
    rates: dict[str, Decimal] = Field(default_factory=dict)  # wallet units per unit of each currency
    charges_virtual: bool = True  # local models' virtual prices cost credits too
    yearly_grant: Decimal = Field(default=Decimal(0), ge=0)  # granted on Jan 1 (policy time zone); 0: top-ups only
    grant_overrides: dict[str, Decimal] = Field(default_factory=dict)  # per-subject yearly grants
    rolls_over: bool = False  # the unused rest of a year's grant stays usable one more year
    approvals: Approvals | None = None  # omitted: top-ups only by finance's adjustments

    @field_validator("rates", "grant_overrides")
    @classmethod
    def _non_negative(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for key, amount in value.items():
            if not amount.is_finite() or amount < 0:
                raise ValueError(f"{key}: an amount of credits is a finite number, 0 or more")
        return value

    @model_validator(mode="after")
    def _subject_rules(self) -> Wallet:
        if self.scope == "organisation" and (self.subject is not None or self.grant_overrides):
            raise ValueError("an organisation wallet has no subject and no grant_overrides")
        if self.subject is not None and self.grant_overrides:
            raise ValueError("grant_overrides are per-subject grants; a wallet for one subject sets yearly_grant")
        if self.unit == CREDITS and not self.rates:
            raise ValueError("a wallet counting in credits needs rates: how many credits one unit of each "
                             "currency costs, e.g. rates: {CNY: 10}")  # fmt: skip
        return self

    @functools.cached_property
    def wallet_unit(self) -> WalletUnit:
        return WalletUnit(self.unit, self.rates, self.charges_virtual)

    @functools.cached_property
    def cost_key(self) -> str:
        """The "currency" a budget on this wallet limits: the wallet's unit, named so that it never meets a
        real currency or another wallet's credits in one usage mapping."""
        return f"{self.unit} ({self.name})"

    def yearly_grant_for(self, subject: str) -> Decimal:
        return self.grant_overrides.get(subject, self.yearly_grant)

    def account(self, subject: str) -> str:
        """The ledger's name for ``subject``'s wallet."""
        return wallet_account(self.name, subject)
