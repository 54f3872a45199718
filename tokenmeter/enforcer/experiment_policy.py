"""Experiments in the policy file: a share of an app's users sent to a candidate model, sticky per user.

An experiment splits the calls one app makes to one model (the control): a user is in the candidate arm
when the first 8 bytes of ``sha256(name + "\\0" + user)``, read as a big-endian integer and divided by
2**64, are below ``share``. So a user keeps one arm for the whole experiment, and raising the share only
adds users to the candidate arm. Calls without a user id are in no experiment: they could not be kept
in one arm. At most one experiment applies to a call: the policy refuses two that could both match one
(same app and model, a department and a day in common). docs/experiments.md has the format.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokenmeter.semconv import ARM_CANDIDATE, ARM_CONTROL

_SCALE: Final = 2**64
_ARM_MEMO_LIMIT: Final = 100_000  # users remembered per experiment
ProblemList = list[tuple[tuple[int | str, ...], str]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Experiment(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=64)  # the label on the calls
    app: str = Field(min_length=1)  # whose calls are split
    model: str = Field(min_length=1)  # the control: calls that ask for this model
    candidate: str = Field(min_length=1)  # what the candidate arm runs instead
    share: float = Field(gt=0, le=1)  # of the users, in the candidate arm
    departments: tuple[str, ...] | None = Field(default=None, min_length=1)  # only these departments
    exclude_departments: tuple[str, ...] = ()  # or every department but these
    starts: date | None = None  # the first day it runs (policy time zone)
    ends: date | None = None  # the first day it no longer runs

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        if self.candidate == self.model:
            raise ValueError(f"the candidate must differ from the model it is compared with ({self.model!r})")
        if self.departments is not None and self.exclude_departments:
            raise ValueError("give departments: or exclude_departments:, not both")
        if self.starts is not None and self.ends is not None and self.ends <= self.starts:
            raise ValueError(f"ends ({self.ends}) must be after starts ({self.starts}): ends is the first day "
                             "without the experiment")  # fmt: skip
        return self

    def runs_on(self, day: date) -> bool:
        return (self.starts is None or self.starts <= day) and (self.ends is None or day < self.ends)

    def includes(self, department: str) -> bool:
        if self.departments is not None:
            return department in self.departments
        return department not in self.exclude_departments


def in_candidate_arm(experiment: str, user: str, share: float) -> bool:
    """Whether ``user`` is in the candidate arm of ``experiment`` at ``share`` (the same answer every time)."""
    digest = hashlib.sha256(f"{experiment}\0{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE < share


@dataclass(frozen=True)
class ExperimentArm:
    """One arm of an experiment, as a check's answer names it."""

    name: str  # the experiment's
    arm: str  # control | candidate
    requested_model: str  # what the app asked for (the experiment's model)
    model: str  # what this arm runs: the model asked for, or the candidate


class _Entry:
    """One experiment as the check path reads it: plain values, its two arms, and the arms already drawn."""

    __slots__ = ("arms", "candidate", "control", "departments", "ends", "excluded", "experiment", "starts")

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        self.control = ExperimentArm(experiment.name, ARM_CONTROL, experiment.model, experiment.model)
        self.candidate = ExperimentArm(experiment.name, ARM_CANDIDATE, experiment.model, experiment.candidate)
        self.departments = None if experiment.departments is None else frozenset(experiment.departments)
        self.excluded = frozenset(experiment.exclude_departments)
        self.starts, self.ends = experiment.starts, experiment.ends
        self.arms: dict[str, ExperimentArm] = {}  # user -> arm: the hash once per user and policy load

    def includes(self, department: str) -> bool:
        return department in self.departments if self.departments is not None else department not in self.excluded

    def arm_of(self, user: str) -> ExperimentArm:
        arm = self.arms.get(user)
        if arm is None:
            if len(self.arms) >= _ARM_MEMO_LIMIT:  # user ids come from requests: stay bounded
                self.arms.clear()
            experiment = self.experiment
            arm = self.candidate if in_candidate_arm(experiment.name, user, experiment.share) else self.control
            self.arms[user] = arm
        return arm


class ExperimentIndex:
    """The policy's experiments by (app, model), for the check path: a call in no experiment costs one lookup."""

    def __init__(self, experiments: Iterable[Experiment], zone: ZoneInfo) -> None:
        self._zone = zone
        self._by_call: dict[tuple[str, str], list[_Entry]] = {}
        for experiment in experiments:
            self._by_call.setdefault((experiment.app, experiment.model), []).append(_Entry(experiment))

    def arm_for(self, user: str, department: str, app: str, model: str, now: Callable[[], datetime]
                ) -> ExperimentArm | None:  # fmt: skip
        """The arm of the call, or None when it is in no experiment; ``now`` is asked only for a call of an
        experiment with days."""
        if not self._by_call or not user:
            return None
        entries = self._by_call.get((app, model))
        if entries is None:
            return None
        day: date | None = None
        for entry in entries:
            if not entry.includes(department):
                continue
            if entry.starts is not None or entry.ends is not None:
                day = day or now().astimezone(self._zone).date()
                if not entry.experiment.runs_on(day):
                    continue
            return entry.arm_of(user)
        return None


def experiment_problems(experiments: tuple[Experiment, ...]) -> ProblemList:
    """Names used twice, and experiments that could both apply to one call, with where they are."""
    problems: ProblemList = []
    for index, experiment in enumerate(experiments):
        earlier = experiments[:index]
        if any(other.name == experiment.name for other in earlier):
            problems.append((("experiments", index, "name"),
                             f"experiment names must be unique; {experiment.name!r} is used twice"))  # fmt: skip
            continue
        clash = next((other for other in earlier if _overlap(other, experiment)), None)
        if clash is not None:
            problems.append((("experiments", index, "model"), (
                f"experiments {clash.name!r} and {experiment.name!r} both split app {experiment.app!r}'s calls "
                f"to {experiment.model!r} for some department on some day; at most one experiment may apply to "
                "a call: give them different departments or days that do not overlap")))  # fmt: skip
    return problems


def _overlap(a: Experiment, b: Experiment) -> bool:
    if (a.app, a.model) != (b.app, b.model):
        return False
    days = (a.starts or date.min) < (b.ends or date.max) and (b.starts or date.min) < (a.ends or date.max)
    return days and _departments_overlap(a, b)


def _departments_overlap(a: Experiment, b: Experiment) -> bool:
    if a.departments is not None and b.departments is not None:
        return not set(a.departments).isdisjoint(b.departments)
    if a.departments is not None:
        return not set(a.departments) <= set(b.exclude_departments)
    if b.departments is not None:
        return not set(b.departments) <= set(a.exclude_departments)
    return True  # both take every department but a few: some department is in both
