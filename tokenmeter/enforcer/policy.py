"""The quota policy file (``TOKENMETER_POLICY``): budgets, model groups, downgrade routes, wallets, experiments,
routing.

Read strictly: every problem is a ``PolicyError`` whose message names the file, the line,
the field and what is wrong, e.g.::

    policy.yaml line 14, budgets[1].limit.tokens: Input should be greater than 0

and, when there are several, every one of them on its own line. A file with no ``budgets:``
(empty, only comments, or cut off before its budgets) is refused too: read while someone
rewrites it, it would otherwise switch every quota off. ``budgets: []`` says "none" on purpose.

See docs/quotas.md for the format (wallets: docs/credits.md; experiments: docs/experiments.md; routing:
docs/routing.md).
Loading is pure apart from reading the file.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from tokenmeter.enforcer.experiment_policy import Experiment, ExperimentIndex, experiment_problems
from tokenmeter.enforcer.wallet_policy import Scope, Wallet
from tokenmeter.errors import ConfigurationError
from tokenmeter.routing.intent_classifier import load_classifier_file
from tokenmeter.routing.routing_document import routing_document
from tokenmeter.routing.routing_policy import Routing, routing_problems
from tokenmeter.routing.rules import RoutingTable

Period = Literal["day", "week", "month", "year"]
Action = Literal["downgrade", "degrade", "deny"]
DEFAULT_TIMEZONE: Final = "Asia/Shanghai"
DEFAULT_WARN_AT: Final = (0.8,)
DEFAULT_MAX_OUTPUT_TOKENS: Final = 1024
_GROUP_MEMO_LIMIT: Final = 10_000


class PolicyError(ConfigurationError, ValueError):
    """A policy file that cannot be used; the message names file, line, field and problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limit(_Strict):
    """Tokens and/or cost per period; a budget is exceeded when either is reached."""

    tokens: int | None = Field(default=None, gt=0)
    cost: Decimal | None = Field(default=None, gt=0)
    currency: str | None = None  # required with cost: costs in other currencies do not count

    @model_validator(mode="after")
    def _one_of(self) -> Limit:
        if self.tokens is None and self.cost is None:
            raise ValueError("give tokens, cost (with currency), or both")
        if self.cost is not None and not self.currency:
            raise ValueError("cost needs a currency, e.g. currency: CNY")
        return self


class Budget(_Strict):
    name: str = Field(min_length=1)
    scope: Scope
    # One subject (e.g. a department's name); omitted: every subject of the scope gets
    # its own budget of this size ("each user: 1M tokens a month").
    subject: str | None = None
    period: Period = "month"
    limit: Limit | None = None  # or wallet:
    wallet: str | None = None  # draws on this wallet: takes its scope and subject, counts per year
    models: str | None = None  # a model group; omitted: every model
    warn_at: tuple[float, ...] | None = None  # ratios of the limit; default the policy's
    action: Action = "deny"
    fallback: Literal["degrade", "deny"] = "deny"  # when downgrade has no cheaper model left
    exempt: tuple[str, ...] = ()  # users this budget does not apply to
    overrides: dict[str, Limit] = Field(default_factory=dict)  # per-subject limits

    @field_validator("warn_at")
    @classmethod
    def _ratios(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is not None and any(not 0 < ratio < 1 for ratio in value):
            raise ValueError("warning thresholds are ratios of the limit, each above 0 and below 1")
        return tuple(sorted(set(value))) if value is not None else None

    @model_validator(mode="after")
    def _subject_rules(self) -> Budget:
        if (self.limit is None) == (self.wallet is None):
            raise ValueError("give a limit: or a wallet: (not both)")
        if self.wallet is not None and self.overrides:
            raise ValueError("a budget on a wallet has no overrides: the wallet's grants set each subject's credits")
        if self.scope == "organisation" and (self.subject is not None or self.overrides):
            raise ValueError("an organisation budget has no subject and no overrides")
        if self.subject is not None and self.overrides:
            raise ValueError("overrides are per-subject limits; a budget for one subject sets its limit directly")
        return self


class Defaults(_Strict):
    warn_at: tuple[float, ...] = DEFAULT_WARN_AT
    # The output a check reserves when the call gives no max_tokens: per model (glob
    # patterns, first match wins), else max_output_tokens.
    max_output_tokens: int = Field(default=DEFAULT_MAX_OUTPUT_TOKENS, gt=0)
    max_output_tokens_by_model: dict[str, int] = Field(default_factory=dict)

    @field_validator("max_output_tokens_by_model")
    @classmethod
    def _positive_outputs(cls, value: dict[str, int]) -> dict[str, int]:
        for pattern, tokens in value.items():
            if tokens <= 0:
                raise ValueError(f"{pattern}: an output estimate is a positive number of tokens")
        return value


class Policy(_Strict):
    version: Literal[1] = 1
    timezone: str = DEFAULT_TIMEZONE
    defaults: Defaults = Field(default_factory=Defaults)
    model_groups: dict[str, tuple[str, ...]] = Field(default_factory=dict)  # name -> glob patterns
    routes: dict[str, str] = Field(default_factory=dict)  # downgrade: model -> cheaper model
    wallets: tuple[Wallet, ...] = ()
    budgets: tuple[Budget, ...] = ()
    experiments: tuple[Experiment, ...] = ()  # a share of an app's users on a candidate model
    routing: Routing | None = None  # calls sent to a model tier by what they ask (docs/routing.md)
    # The trained intent classifier that routing.classifier names, read when the file was loaded.
    _routing_classifier: dict[str, Any] | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _wallet_budgets_take_the_wallets_scope(cls, data: Any) -> Any:
        """A budget with ``wallet:`` gets the wallet's scope and subject, and the year, unless it says them."""
        if not isinstance(data, dict) or not isinstance(data.get("budgets"), list):
            return data
        wallets = {w.get("name"): w for w in data.get("wallets") or () if isinstance(w, dict)}
        budgets = []
        for given in data["budgets"]:
            if not isinstance(given, dict) or given.get("wallet") is None:
                budgets.append(given)
                continue
            wallet = wallets.get(given["wallet"])
            if wallet is None:  # said by the reference check ("not defined"), not as a missing scope
                budgets.append({"scope": "organisation", "period": "year", **given})
                continue
            budget = {"scope": wallet.get("scope"), "period": "year", **given}
            if wallet.get("subject") is not None:
                budget.setdefault("subject", wallet["subject"])
            budgets.append(budget)
        return {**data, "budgets": budgets}

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Asia/Shanghai") from None
        return value

    @functools.cached_property
    def has_cost_limits(self) -> bool:
        return bool(self.wallets) or any(
            limit.cost is not None
            for budget in self.budgets
            for limit in (budget.limit, *budget.overrides.values())
            if limit is not None
        )

    @functools.cached_property
    def wallets_by_name(self) -> dict[str, Wallet]:
        return {wallet.name: wallet for wallet in self.wallets}

    @functools.cached_property
    def wallet_budgets(self) -> tuple[Budget, ...]:
        return tuple(budget for budget in self.budgets if budget.wallet is not None)

    def limit_for(self, budget: Budget, subject: str) -> Limit:
        """The budget's limit for ``subject`` as the policy file says it. A wallet budget's real limit is
        the subject's credits this year, read from the ledger (``UsageSnapshot.limits``); without it, the
        wallet's yearly grant."""
        if budget.limit is not None:
            return budget.overrides.get(subject, budget.limit) if budget.overrides else budget.limit
        wallet = self.wallets_by_name[budget.wallet]  # type: ignore[index]  # checked when loaded
        return wallet_limit(wallet, wallet.yearly_grant_for(subject))

    @functools.cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @functools.cached_property
    def experiment_index(self) -> ExperimentIndex:
        return ExperimentIndex(self.experiments, self.zone)

    @functools.cached_property
    def routing_table(self) -> RoutingTable | None:
        return RoutingTable(self.routing) if self.routing is not None and self.routing.rules else None

    @functools.cached_property
    def routing_document(self) -> dict[str, Any]:
        """What ``GET /v1/routing`` answers: the intents and the classifier, by version."""
        return routing_document(self.routing, self._routing_classifier)

    def warn_thresholds(self, budget: Budget) -> tuple[float, ...]:
        return budget.warn_at if budget.warn_at is not None else self.defaults.warn_at

    def output_estimate(self, model: str, max_output_tokens: int | None) -> int:
        """The output tokens a check reserves: the call's own limit, else the policy's default."""
        if max_output_tokens is not None:
            return max_output_tokens
        for pattern, tokens in self.defaults.max_output_tokens_by_model.items():
            if fnmatch.fnmatchcase(model, pattern):
                return tokens
        return self.defaults.max_output_tokens

    def in_group(self, model: str, group: str | None) -> bool:
        if group is None:
            return True
        memo = self._group_memo
        answer = memo.get((model, group))
        if answer is None:
            if len(memo) >= _GROUP_MEMO_LIMIT:  # model names come from requests: stay bounded
                memo.clear()
            answer = any(fnmatch.fnmatchcase(model, pattern) for pattern in self.model_groups.get(group, ()))
            memo[(model, group)] = answer
        return answer

    @functools.cached_property
    def _group_memo(self) -> dict[tuple[str, str], bool]:
        # Checked on every budget of every check; fnmatch per pattern costs more than the rest.
        return {}


def wallet_limit(wallet: Wallet, credits: Decimal) -> Limit:
    """A wallet budget's limit: ``credits`` in the wallet's unit (0 or less: no room at all)."""
    # Not validated: a wallet can have 0 credits left, which no limit: in a file may say.
    return Limit.model_construct(tokens=None, cost=credits, currency=wallet.cost_key)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; raises PolicyError naming the line and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy file: {exc.strerror}") from None
    return parse_policy(text, str(path), base_dir=path.parent)


def parse_policy(text: str, source: str = "<policy>", base_dir: Path | None = None) -> Policy:
    """``base_dir``: where a relative ``routing.classifier`` is (the policy file's directory; default the
    working directory)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise PolicyError(f"{source}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if document is None:
        raise PolicyError(
            f"{source} is empty (or only comments), and an empty policy would allow every call: write its "
            "budgets (docs/quotas.md), or `budgets: []` to allow every call on purpose. To run without quotas, "
            "leave out --policy / TOKENMETER_POLICY. When editing it in place, write a temporary file and "
            "rename it over this one"
        )
    if not isinstance(document, dict):
        raise PolicyError(f"{source}: the policy must be a mapping with budgets:, model_groups:, routes: ...")
    if "budgets" not in document:
        raise PolicyError(
            f"{source}: no budgets: list (a file cut off before its budgets would switch every quota off); "
            "write the budgets, or `budgets: []` to allow every call on purpose"
        )
    try:
        policy = Policy.model_validate(document)
    except ValidationError as exc:
        problems = [(error["loc"], error["msg"].removeprefix("Value error, ")) for error in exc.errors()]
        raise _located(source, root, problems) from None
    reference_problems = _reference_problems(policy) + _routing_problems(policy, base_dir or Path.cwd())
    if reference_problems:
        raise _located(source, root, reference_problems)
    return policy


def _located(source: str, root: Any, problems: Sequence[tuple[Sequence[int | str], str]]) -> PolicyError:
    """One problem: one line; several: a count, then each with its line and field, in file order."""
    unique = {(_line_of(root, location) or 0, _dotted(location) or "policy", message): None
              for location, message in problems}  # fmt: skip
    located = sorted(unique, key=lambda problem: problem[0])  # stable: the validator's order within a line
    lines = [f"{f'line {line}, ' if line else ''}{field}: {message}" for line, field, message in located]
    if len(lines) == 1:
        return PolicyError(f"{source} {lines[0]}" if located[0][0] else f"{source}, {lines[0]}")
    return PolicyError(f"{source}: {len(lines)} problems:\n" + "\n".join(f"  {line}" for line in lines))


def _reference_problems(policy: Policy) -> list[tuple[tuple[int | str, ...], str]]:
    """Every name that points nowhere or in a circle, with where it is."""
    problems: list[tuple[tuple[int | str, ...], str]] = []
    names = [budget.name for budget in policy.budgets]
    for index, name in enumerate(names):
        if name in names[:index]:
            problems.append((("budgets", index, "name"), f"budget names must be unique; {name!r} is used twice"))
    for index, budget in enumerate(policy.budgets):
        if budget.models is not None and budget.models not in policy.model_groups:
            defined = ", ".join(sorted(policy.model_groups)) or "none"
            message = f"model group {budget.models!r} is not defined in model_groups (defined: {defined})"
            problems.append((("budgets", index, "models"), message))
    problems += _wallet_problems(policy)
    problems += experiment_problems(policy.experiments)
    reported_loops: set[frozenset[str]] = set()
    for start in policy.routes:
        seen = [start]
        while seen[-1] in policy.routes:
            following = policy.routes[seen[-1]]
            if following in seen:
                loop = frozenset(seen[seen.index(following) :])
                if loop not in reported_loops:  # one loop, reported once, not once per model that enters it
                    reported_loops.add(loop)
                    problems.append((("routes", start), f"routes loop: {' -> '.join([*seen, following])}"))
                break
            seen.append(following)
    return problems


def _routing_problems(policy: Policy, base_dir: Path) -> list[tuple[tuple[int | str, ...], str]]:
    """Reads the routing section's classifier (kept on the policy) and checks the section's names."""
    routing = policy.routing
    if routing is None:
        return []
    labels: tuple[str, ...] = ()
    if routing.classifier is not None:
        try:
            classifier = load_classifier_file(base_dir / routing.classifier)
        except ValueError as exc:
            return [(("routing", "classifier"), str(exc))]
        policy._routing_classifier = classifier
        labels = tuple(classifier["labels"])
    return routing_problems(routing, {budget.name for budget in policy.budgets}, labels)


def _wallet_problems(policy: Policy) -> list[tuple[tuple[int | str, ...], str]]:
    problems: list[tuple[tuple[int | str, ...], str]] = []
    names = [wallet.name for wallet in policy.wallets]
    for index, name in enumerate(names):
        if name in names[:index]:
            problems.append((("wallets", index, "name"), f"wallet names must be unique; {name!r} is used twice"))
    for index, budget in enumerate(policy.budgets):
        if budget.wallet is None:
            continue
        wallet = policy.wallets_by_name.get(budget.wallet)
        if wallet is None:
            message = f"wallet {budget.wallet!r} is not defined in wallets (defined: {', '.join(names) or 'none'})"
            problems.append((("budgets", index, "wallet"), message))
        elif (budget.scope, budget.period) != (wallet.scope, "year") or budget.subject != wallet.subject:
            problems.append((("budgets", index, "wallet"), f"a budget on wallet {wallet.name!r} counts per year for "
                             "the wallet's scope and subject; leave out scope, subject and period"))  # fmt: skip
    return problems


def _dotted(location: Sequence[int | str]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _line_of(node: Any, location: Sequence[int | str]) -> int | None:
    """The 1-based line of the deepest YAML node on ``location`` that exists."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in location:
        if isinstance(node, yaml.MappingNode):
            child = next((value for key, value in node.value if key.value == part), None)
            if child is None:
                key_node = next((key for key, _ in node.value if key.value == part), None)
                return key_node.start_mark.line + 1 if key_node is not None else line
            node = child
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return line
        line = node.start_mark.line + 1
    return line
