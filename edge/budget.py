"""A device's own privacy budget: refuse, before training, a task it cannot afford.

The coordinator's ledger already refuses to schedule a device past the study's
budget, but the promise is made to the person wearing the device, so the
device enforces it too, from its own accountant state (the Opacus history
``train_subset_dp`` carries from task to task), against its own budget (which
may be tighter than the study's). It never trusts the coordinator to count.

One ``DeviceBudget`` per study the device takes part in. Use it in the agent::

    budget = DeviceBudget.load(path, policy=policy)    # or DeviceBudget(policy)
    try:
        outcome, report = run_dp_task(budget, task, model, base, x, y, ...)
    except TaskRefused as refusal:
        ...  # report refusal.error_message() (ErrorCode.BUDGET_EXHAUSTED); do not train
    budget.save(path)                                  # before the update leaves
    header = update_header(outcome, ..., privacy=report)

The state must be saved durably before the update is sent: a device that
forgets a spend after a restart would under-count (and the coordinator, whose
ledger remembers it, would reject its next claim as forged). For the same
reason a saved state that cannot be read is an error, never a fresh budget:
the file is a :mod:`fedward.saved_state` envelope whose payload carries a
SHA-256 of its canonical JSON, and a file saved before the envelope (format
version 1) is refused until :func:`upgrade_v1_file` converts it.
"""

from __future__ import annotations

import enum
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedward.errors import SavedStateError
from fedward.privacy.accounting import (
    EpsilonCalculator,
    MechanismStep,
    canonical_history,
    history_from_state,
    history_to_state,
)
from fedward.privacy.budget import BudgetPolicy
from fedward.privacy.errors import PolicyError, PrivacyError
from fedward.protocol.messages import DpParams, ErrorCode, ErrorMessage, PrivacyReport, Task
from fedward.saved_state import open_checked, seal_checked
from fedward.tinytrain.models import Params
from fedward.tinytrain.training import LocalTrainConfig, Model

from .dp_config import DPTrainConfig
from .local import LocalOutcome, LocalTask, run_local_task
from .updates import privacy_report

STATE_KIND = "fedward.edge.budget"
# 1: a flat {format, version, policy, accountant_state}; 2: the saved-state envelope
# around {policy, accountant_state, sha256}, the digest covering the payload's other keys.
STATE_VERSION = 2
_V1_KEYS = frozenset({"format", "version", "policy", "accountant_state"})
_CONTENT_KEYS = frozenset({"policy", "accountant_state"})  # the payload adds their sha256
_KEEP_IT = (
    "Do not delete the file: it holds the epsilon this device has already spent, and a "
    "fresh budget would let the device spend it again"
)


class BudgetStateError(PrivacyError, SavedStateError):
    """A saved device budget that cannot be loaded (kind, version, checksum, content).

    Never answered with a fresh budget: the device stops instead (see the module).
    """


class RefusalReason(enum.StrEnum):
    BUDGET_EXHAUSTED = "budget_exhausted"  # the task would take the device past its budget
    TERMS_DIFFER = "terms_differ"  # delta or accountant differ from the device's policy
    UNPLANNED = "unplanned"  # no fixed step count, or no noise: cost unknown or unbounded
    DP_REQUIRED = "dp_required"  # a task without DP on a device that has a DP budget


class TaskRefused(PrivacyError):
    """The device will not train this task. Nothing was spent."""

    def __init__(
        self,
        reason: RefusalReason,
        detail: str,
        *,
        spent: float = 0.0,
        requested: float | None = None,
    ) -> None:
        self.reason = reason
        self.detail = detail
        self.spent = spent
        self.requested = requested
        super().__init__(f"task refused ({reason.value}): {detail}")

    @property
    def code(self) -> ErrorCode:
        """The wire code: ``DP_REQUIRED`` for a task without DP, else ``BUDGET_EXHAUSTED``."""
        if self.reason is RefusalReason.DP_REQUIRED:
            return ErrorCode.DP_REQUIRED
        return ErrorCode.BUDGET_EXHAUSTED

    def error_message(self) -> ErrorMessage:
        """What the agent sends back (see ``code``)."""
        return ErrorMessage(code=self.code, detail=str(self)[:1000])


def check_plain_task(task: Task, *, has_budget: bool, allow_plain: bool) -> None:
    """Refuse a task without DP (``task.dp is None``) on a device that has a DP budget.

    A coordinator could otherwise bypass the device's own enforcement by simply
    leaving ``dp`` out: the device would train without noise and send an update
    no accountant covers. Only the device's owner can allow that
    (``AgentSettings.allow_plain_tasks``); the refusal says why on the wire
    (``ErrorCode.DP_REQUIRED``).
    """
    if task.dp is None and has_budget and not allow_plain:
        raise TaskRefused(
            RefusalReason.DP_REQUIRED,
            "this device has a DP budget and takes no task without DP "
            "(its owner has not allowed plain tasks)",
        )


class DeviceBudget:
    """One device's accountant state and budget for one study."""

    def __init__(
        self,
        policy: BudgetPolicy,
        *,
        accountant_state: Mapping[str, Any] | None = None,
        calculator: EpsilonCalculator | None = None,
    ) -> None:
        if not isinstance(policy, BudgetPolicy):
            raise TypeError("policy must be a BudgetPolicy")
        self.policy = policy
        # a simulator's many devices may share one (its caches make the RDP curve of a
        # mechanism a one-off: about 0.5 s each otherwise)
        self._calc = calculator if calculator is not None else EpsilonCalculator()
        self._history: tuple[MechanismStep, ...] = ()
        if accountant_state is not None:
            self._history = history_from_state(accountant_state, accountant=policy.accountant)

    # -- queries ------------------------------------------------------------------

    @property
    def accountant_state(self) -> dict[str, Any] | None:
        """The Opacus state to pass to the next task (``None`` before the first)."""
        if not self._history:
            return None
        return history_to_state(self._history, accountant=self.policy.accountant)

    def spent(self) -> float:
        """Cumulative epsilon at the policy's delta over every task trained so far."""
        return self._epsilon(self._history)

    def planned_step(self, dp: DpParams) -> MechanismStep:
        """The mechanism ``dp`` imposes; ``TaskRefused`` if its cost is not known up front."""
        if not isinstance(dp, DpParams):
            raise TypeError("dp must be fedward.protocol.messages.DpParams")
        if dp.delta != self.policy.delta or dp.accountant.value != self.policy.accountant.value:
            raise TaskRefused(
                RefusalReason.TERMS_DIFFER,
                f"task accounts at delta={dp.delta} with {dp.accountant.value}; this device's "
                f"budget is at delta={self.policy.delta} with {self.policy.accountant.value}",
                spent=self.spent(),
            )
        if dp.max_steps is None or dp.noise_multiplier <= 0:
            raise TaskRefused(
                RefusalReason.UNPLANNED,
                "a task must fix its step count and a positive noise multiplier",
                spent=self.spent(),
            )
        return MechanismStep(
            noise_multiplier=dp.noise_multiplier, sample_rate=dp.sample_rate, steps=dp.max_steps
        )

    def epsilon_after(self, dp: DpParams) -> float:
        return self._epsilon((*self._history, self.planned_step(dp)))

    def would_exceed(self, dp: DpParams) -> bool:
        """True if training ``dp`` would take this device past its budget."""
        return self.epsilon_after(dp) > self.policy.epsilon

    def check(self, dp: DpParams) -> MechanismStep:
        """Raise ``TaskRefused`` unless the device can afford ``dp``; return its step."""
        step = self.planned_step(dp)
        after = self._epsilon((*self._history, step))
        if after > self.policy.epsilon:
            raise TaskRefused(
                RefusalReason.BUDGET_EXHAUSTED,
                f"epsilon would rise from {self.spent():.4g} to {after:.4g}, past this "
                f"device's budget {self.policy.epsilon:.4g} at delta={self.policy.delta:g}",
                spent=self.spent(),
                requested=after,
            )
        return step

    # -- training -------------------------------------------------------------------

    def train_config(
        self,
        dp: DpParams,
        *,
        lr: float,
        momentum: float,
        max_physical_batch_size: int,
    ) -> DPTrainConfig:
        """The DP-SGD settings of a task: the task's mechanism, the device's memory cap."""
        step = self.planned_step(dp)
        return DPTrainConfig(
            noise_multiplier=step.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            sample_rate=step.sample_rate,
            steps=step.steps,
            lr=lr,
            momentum=momentum,
            max_physical_batch_size=max_physical_batch_size,
            accountant=self.policy.accountant,
        )

    def record(self, outcome: LocalOutcome) -> PrivacyReport:
        """Adopt the task's new accountant state; return the report for the update.

        The new state must be the old history plus exactly this task's step
        (anything else means the state was not carried) and must fit the budget.
        """
        if outcome.dp is None:
            raise PolicyError("the outcome was not trained with DP")
        new = history_from_state(outcome.dp.accountant_state, accountant=self.policy.accountant)
        step = MechanismStep(
            noise_multiplier=outcome.dp.noise_multiplier,
            sample_rate=outcome.dp.sample_rate,
            steps=outcome.dp.steps,
        )
        if canonical_history(new) != canonical_history((*self._history, step)):
            raise PolicyError("the task's accountant state does not extend this device's history")
        epsilon = self._epsilon(new)
        if epsilon > self.policy.epsilon:
            raise PolicyError(f"trained past the budget: epsilon {epsilon:.6g}")
        self._history = tuple(new)
        return privacy_report(
            outcome,
            accountant=self.policy.accountant,
            epsilon=epsilon,
            delta=self.policy.delta,
        )

    # -- persistence ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The saved form: an envelope whose payload is policy, history and their SHA-256."""
        content = {
            "policy": self.policy.to_dict(),
            "accountant_state": history_to_state(self._history, accountant=self.policy.accountant),
        }
        return seal_checked(STATE_KIND, STATE_VERSION, content)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], *, policy: BudgetPolicy) -> DeviceBudget:
        """Restore; ``policy`` (the device's configured budget) must match the stored one.

        ``BudgetStateError`` for another kind, format version (a pre-envelope
        state included), a checksum mismatch or content this class never
        writes; ``PolicyError`` if the state was saved under another policy.
        """
        content = open_checked(
            state,
            kind=STATE_KIND,
            format_version=STATE_VERSION,
            keys=_CONTENT_KEYS,
            error=BudgetStateError,
            before_envelope=f"{_KEEP_IT}: convert it once with "
            "fedward.edge.budget.upgrade_v1_file(path)",
        )
        try:
            stored = BudgetPolicy.from_dict(content["policy"])
        except (PolicyError, TypeError, KeyError) as exc:
            raise BudgetStateError(f"bad policy in device budget: {exc}") from exc
        policy.ensure_same(stored)
        try:
            return cls(policy, accountant_state=content["accountant_state"])
        except (PolicyError, TypeError, ValueError) as exc:
            raise BudgetStateError(f"bad accountant state in device budget: {exc}") from exc

    def save(self, path: Path) -> None:
        """Write the state atomically and durably (temp file, fsync, rename)."""
        _write_json(Path(path), self.state_dict())

    @classmethod
    def load(cls, path: Path, *, policy: BudgetPolicy) -> DeviceBudget:
        """The saved budget at ``path``, or a fresh one if the device never trained.

        Only a missing file means "never trained"; a file that cannot be read
        raises ``BudgetStateError`` naming it.
        """
        path = Path(path)
        if not path.exists():
            return cls(policy)
        try:
            return cls.from_state_dict(_read_json(path), policy=policy)
        except BudgetStateError as exc:
            raise BudgetStateError(f"{path}: {exc}") from exc

    def _epsilon(self, history: tuple[MechanismStep, ...] | list[MechanismStep]) -> float:
        return self._calc.epsilon(
            history, delta=self.policy.delta, accountant=self.policy.accountant
        )


def upgrade_v1_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """The envelope form of a device budget saved by format version 1 (same content).

    The result is checked like any saved state when it is loaded (policy,
    history); a v1 state had no checksum, so none is verified here.
    """
    if not isinstance(state, Mapping) or set(state) != _V1_KEYS:
        raise BudgetStateError(f"a v1 device budget has exactly the keys {sorted(_V1_KEYS)}")
    if state["format"] != STATE_KIND or state["version"] != 1:
        raise BudgetStateError(
            f"not a v1 device budget: format {state['format']!r} version {state['version']!r}"
        )
    content = {"policy": state["policy"], "accountant_state": state["accountant_state"]}
    try:
        return seal_checked(STATE_KIND, STATE_VERSION, content)
    except (TypeError, ValueError) as exc:
        raise BudgetStateError(f"v1 device budget is not canonical JSON: {exc}") from exc


def upgrade_v1_file(path: Path) -> None:
    """Rewrite the v1 device budget at ``path`` in the envelope form, atomically, in place."""
    path = Path(path)
    try:
        upgraded = upgrade_v1_state(_read_json(path))
    except BudgetStateError as exc:
        raise BudgetStateError(f"{path}: {exc}") from exc
    _write_json(path, upgraded)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BudgetStateError(f"not a JSON device budget ({exc}). {_KEEP_IT}") from exc


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` atomically and durably (temp file, fsync, rename), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_dp_task(
    budget: DeviceBudget,
    task: Task,
    model: Model,
    base: Params,
    x: np.ndarray,
    y: np.ndarray,
    *,
    momentum: float,
    max_physical_batch_size: int,
    seed: int | None,
) -> tuple[LocalOutcome, PrivacyReport]:
    """Check the budget, train ``task`` with DP-SGD, record the spend.

    Raises ``TaskRefused`` (nothing trained, nothing spent) if the device cannot
    afford the task. ``seed=None`` draws the noise from OS entropy (production).
    """
    if task.dp is None:
        raise PolicyError("run_dp_task needs a task with dp parameters")
    budget.check(task.dp)
    config = budget.train_config(
        task.dp,
        lr=task.lr,
        momentum=momentum,
        max_physical_batch_size=max_physical_batch_size,
    )
    local = LocalTask(
        task_id=task.task_id,
        model_version=task.model_version,
        subset_names=task.subset_names,
        train=LocalTrainConfig(
            epochs=task.local_epochs, batch_size=task.batch_size, lr=task.lr, momentum=momentum
        ),
        dp=config,
        seed=seed,
    )
    outcome = run_local_task(model, base, x, y, local, accountant_state=budget.accountant_state)
    return outcome, budget.record(outcome)
