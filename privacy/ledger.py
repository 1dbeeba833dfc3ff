"""The budget ledger: each device's cumulative epsilon over a whole study.

Peers report a per-round epsilon and never compose it. Here every update a
device sends carries its mechanism parameters (noise multiplier, sample rate,
steps, clip norm); the ledger appends them to the device's history and
*recomputes* the cumulative epsilon with the study's accountant. A claimed
epsilon is only checked against that recomputation, never believed.

Rules:
- a charge that would take a device past the policy's epsilon raises
  ``BudgetExceeded`` and records nothing (the caller discards the update);
- a claim that disagrees with the recomputation raises ``ForgedClaim`` and
  records nothing;
- a (device, task) pair is charged at most once (``DuplicateCharge``).

Charge what was dispatched, reconcile by task id. The coordinator charges a
task when it *dispatches* it (``reserve``), with the task's own mechanism, not
when (or whether) its update arrives: a device that reports fewer steps than it
was sent is still charged the full task, and a task whose update is lost, or
arrives after its deadline, stays charged (the device may well have trained
it). When an update does arrive its record is ``confirm``-ed, and the device's
claimed epsilon is reconciled by task id: an honest device trained every
confirmed task and no task that was never dispatched to it, so its claim lies
between the epsilon of the confirmed records and that of all records. Outside
that range (``ForgedClaim``) its accountant cannot be trusted; inside it a
device whose updates were lost is not punished for the loss.

The ledger is pure: no clock (the caller passes ``at``), no files. The
coordinator persists ``state_dict()`` (JSON-serialisable, in the
:mod:`fedward.saved_state` envelope) and restores it with ``from_state_dict``
after a restart. The payload carries a SHA-256 of its canonical JSON, which
detects corruption and naive edits; it is not a signature (anyone can
recompute it), so authenticity comes from the signed audit log the state is
recorded in. A state saved before the envelope (format version 1) is refused;
:func:`upgrade_v1_state` converts one, checksum first.

The same class serves a device: a ledger holding only itself tells it whether
to refuse a task (``can_afford``) before it trains.

Distributed DP (secure-aggregation fills with Skellam noise,
:mod:`fedward.privacy.secagg.ddp`): a task's mechanism may be a
:class:`~fedward.privacy.skellam.SkellamStep` (one release of the device's
whole clipped update, client level, no sampling amplification, as the
patient-level Gaussian step). The coordinator ``reserve``-s it for every cohort
member when it dispatches the fill and calls :meth:`PrivacyLedger.settle_fill`
once the fill's sum is released: survivors (whose input is in the sum) are
confirmed, the others' reservations released (their input was never in any
sum). Skellam records need the RDP accountant (``PolicyError`` otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fedward.saved_state import content_sha256, open_checked, seal_checked

from .accounting import EpsilonCalculator, MechanismStep, Step, merge_step
from .budget import BudgetPolicy
from .errors import (
    BudgetExceeded,
    DuplicateCharge,
    ForgedClaim,
    LedgerStateError,
    PolicyError,
    PrivacyError,
)
from .skellam import SkellamStep

STATE_KIND = "fedward.privacy.ledger"
# 1: a flat {format, version, policy, devices, sha256}; 2: the saved-state envelope
# around {policy, devices, sha256}, the digest covering the payload's other keys.
STATE_VERSION = 2
_V1_KEYS = frozenset({"format", "version", "policy", "devices", "sha256"})
_CONTENT_KEYS = frozenset({"policy", "devices"})  # the payload adds their sha256


@dataclass(frozen=True, kw_only=True)
class SpendRecord:
    """One charged task: what the device reported and what the ledger computed."""

    device: str
    task_id: str
    at: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    epsilon_before: float
    epsilon_after: float
    claimed_epsilon: float | None = None
    # False from dispatch (``reserve``) until the task's update arrives (``confirm``);
    # records saved before reservations existed were charged on arrival: True.
    confirmed: bool = True
    # A Skellam (distributed-DP) release: its sensitivities and variance (integer units).
    # None for Gaussian records; then noise_multiplier/sample_rate describe it, otherwise
    # they hold the Skellam step's Gaussian-equivalent figures (for reports).
    l1_sensitivity: float | None = None
    l2_sensitivity: float | None = None
    skellam_variance: float | None = None

    def __post_init__(self) -> None:
        _check_name("device", self.device)
        if not isinstance(self.confirmed, bool):
            raise ValueError(f"confirmed must be a bool, got {self.confirmed!r}")
        _check_name("task_id", self.task_id)
        _finite("at", self.at)
        _positive_finite("max_grad_norm", self.max_grad_norm)
        for name in ("epsilon_before", "epsilon_after"):
            if _finite(name, getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.epsilon_after < self.epsilon_before:
            raise ValueError("epsilon_after must be >= epsilon_before")
        if self.claimed_epsilon is not None:
            _finite("claimed_epsilon", self.claimed_epsilon)
        skellam = (self.l1_sensitivity, self.l2_sensitivity, self.skellam_variance)
        if any(v is not None for v in skellam) and any(v is None for v in skellam):
            raise ValueError("a Skellam record needs l1/l2 sensitivity and variance, all three")
        self.step  # noqa: B018 - validates the mechanism fields

    @property
    def step(self) -> Step:
        if (
            self.l1_sensitivity is not None
            and self.l2_sensitivity is not None
            and self.skellam_variance is not None
        ):
            return SkellamStep(
                l1_sensitivity=self.l1_sensitivity,
                l2_sensitivity=self.l2_sensitivity,
                variance=self.skellam_variance,
                steps=self.steps,
            )
        return MechanismStep(
            noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=self.steps
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpendRecord:
        if not isinstance(data, Mapping):
            raise TypeError("a spend record must be a mapping")
        return cls(**data)


@dataclass
class _Account:
    records: list[SpendRecord] = field(default_factory=list)
    task_ids: set[str] = field(default_factory=set)
    # canonical history, maintained incrementally: step key -> merged step
    merged: dict[Hashable, Step] = field(default_factory=dict)
    epsilon: float = 0.0

    def record_of(self, task_id: str) -> tuple[int, SpendRecord] | None:
        for index, record in enumerate(self.records):
            if record.task_id == task_id:
                return index, record
        return None

    def confirmed_history(self) -> list[Step]:
        return [r.step for r in self.records if r.confirmed]

    def history_with(self, step: Step | None) -> list[Step]:
        merged = dict(self.merged)
        if step is not None:
            merge_step(merged, step)
        return list(merged.values())


def _check_name(kind: str, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{kind} must be a non-empty string, got {value!r}")


def _finite(kind: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{kind} must be a finite number, got {value!r}")
    return float(value)


def _positive_finite(kind: str, value: float) -> float:
    if _finite(kind, value) <= 0:
        raise ValueError(f"{kind} must be positive, got {value!r}")
    return float(value)


class PrivacyLedger:
    """Per-device mechanism histories and cumulative epsilons under one policy."""

    def __init__(self, policy: BudgetPolicy, *, claim_tolerance: float = 1e-6) -> None:
        if not isinstance(policy, BudgetPolicy):
            raise PolicyError(f"policy must be a BudgetPolicy, got {policy!r}")
        if not (math.isfinite(claim_tolerance) and claim_tolerance >= 0):
            raise ValueError("claim_tolerance must be a finite number >= 0")
        self._policy = policy
        self._claim_tolerance = float(claim_tolerance)
        self._calc = EpsilonCalculator()
        self._accounts: dict[str, _Account] = {}

    # -- queries ---------------------------------------------------------------

    @property
    def policy(self) -> BudgetPolicy:
        return self._policy

    def devices(self) -> list[str]:
        return sorted(self._accounts)

    def history(self, device: str) -> list[Step]:
        return [r.step for r in self._records(device)]

    def records(self, device: str) -> list[SpendRecord]:
        return list(self._records(device))

    def spent(self, device: str) -> float:
        """Cached cumulative epsilon (updated on each charge)."""
        account = self._accounts.get(device)
        return account.epsilon if account else 0.0

    def remaining(self, device: str) -> float:
        return max(0.0, self._policy.epsilon - self.spent(device))

    def exhausted(self, device: str) -> bool:
        """True once the device has spent its whole budget.

        A device with budget left may still be unable to afford a given task;
        ``can_afford`` answers that for a specific mechanism step.
        """
        return self.spent(device) >= self._policy.epsilon

    def recompute(self, device: str) -> float:
        """Cumulative epsilon recomputed from the device's recorded history."""
        return self._epsilon(self.history(device))

    def epsilon_with(self, device: str, step: Step) -> float:
        """Cumulative epsilon the device would reach after ``step``."""
        if not isinstance(step, MechanismStep | SkellamStep):
            raise TypeError("step must be a MechanismStep or a SkellamStep")
        account = self._accounts.get(device, _Account())
        return self._epsilon(account.history_with(step))

    def can_afford(self, device: str, step: Step) -> bool:
        return self.epsilon_with(device, step) <= self._policy.epsilon

    def check_claim(self, device: str, claimed_epsilon: float, *, tolerance: float) -> float:
        """Compare a claimed cumulative epsilon with the recomputation.

        Returns the recomputed value; raises ``ForgedClaim`` if they differ by
        more than ``tolerance`` (absolute, in epsilon units) in either
        direction: any disagreement means the histories differ.
        """
        return self._verify_claim(device, claimed_epsilon, self.recompute(device), tolerance)

    def __iter__(self) -> Iterator[str]:
        return iter(self.devices())

    # -- charging ----------------------------------------------------------------

    def charge(
        self,
        device: str,
        task_id: str,
        step: Step,
        *,
        at: float,
        max_grad_norm: float,
        claimed_epsilon: float | None = None,
    ) -> SpendRecord:
        """Record a task's mechanism for ``device`` if the budget allows it.

        ``claimed_epsilon`` is the device's own cumulative epsilon after the
        task; it is checked against the recomputation (``ForgedClaim``). Over
        budget raises ``BudgetExceeded``. On any error nothing is recorded.
        """
        return self._record_spend(
            device,
            task_id,
            step,
            at=at,
            max_grad_norm=max_grad_norm,
            claimed_epsilon=claimed_epsilon,
            confirmed=True,
        )

    def reserve(
        self,
        device: str,
        task_id: str,
        step: Step,
        *,
        at: float,
        max_grad_norm: float,
    ) -> SpendRecord:
        """Charge a task when it is dispatched: the whole mechanism the task imposes.

        The record stays unconfirmed until the task's update arrives
        (``confirm``); a task whose update never arrives stays charged.
        ``BudgetExceeded`` (nothing recorded) if the budget cannot afford it.
        """
        return self._record_spend(
            device,
            task_id,
            step,
            at=at,
            max_grad_norm=max_grad_norm,
            claimed_epsilon=None,
            confirmed=False,
        )

    def _record_spend(
        self,
        device: str,
        task_id: str,
        step: Step,
        *,
        at: float,
        max_grad_norm: float,
        claimed_epsilon: float | None,
        confirmed: bool,
    ) -> SpendRecord:
        """Validate, check the claim and the budget, then record: ``charge`` and ``reserve``.

        Every check runs before ``_append``, so on any error nothing is recorded.
        """
        _check_name("device", device)
        _check_name("task_id", task_id)
        if not isinstance(step, MechanismStep | SkellamStep):
            raise TypeError("step must be a MechanismStep or a SkellamStep")
        _finite("at", at)
        clip = _positive_finite("max_grad_norm", max_grad_norm)
        account = self._accounts.get(device, _Account())
        if task_id in account.task_ids:
            raise DuplicateCharge(f"task {task_id!r} was already charged to device {device!r}")
        before = account.epsilon
        after = self._epsilon(account.history_with(step))
        if claimed_epsilon is not None:
            self._verify_claim(device, claimed_epsilon, after, self._claim_tolerance)
        if after > self._policy.epsilon:
            raise BudgetExceeded(
                device=device, spent=before, requested=after, budget=self._policy.epsilon
            )
        record = SpendRecord(
            device=device,
            task_id=task_id,
            at=float(at),
            noise_multiplier=step.noise_multiplier,
            sample_rate=step.sample_rate,
            steps=step.steps,
            max_grad_norm=clip,
            epsilon_before=before,
            epsilon_after=after,
            claimed_epsilon=None if claimed_epsilon is None else float(claimed_epsilon),
            confirmed=confirmed,
            **_skellam_fields(step),
        )
        self._append(device, account, record)
        return record

    def settle_fill(
        self, tasks: Mapping[str, str], *, survivors: Collection[str]
    ) -> FillSettlement:
        """Settle one released SecAgg fill: the call the coordinator makes per fill.

        ``tasks`` maps every cohort member to its task id in the fill (each
        reserved at dispatch, with the fill's :class:`SkellamStep` or any other
        step); ``survivors`` are the devices whose input is in the released sum
        (``AggregateResult.survivors``). Survivors' reservations are confirmed;
        the others' released (their input is in no sum). All or nothing: a
        survivor outside ``tasks``, or a member without a pending reservation,
        raises ``PrivacyError`` and changes nothing.
        """
        if not isinstance(tasks, Mapping):
            raise TypeError("tasks must map device ids to task ids")
        kept = set(survivors)
        if not kept <= set(tasks):
            raise PrivacyError("a survivor of the fill is not one of its cohort's tasks")
        for device, task_id in tasks.items():
            if not self.is_reserved(device, task_id):
                raise PrivacyError(
                    f"task {task_id!r} of {device!r} holds no pending reservation: reserve every "
                    "member when the fill is dispatched, settle the fill once"
                )
        confirmed = {d: self.confirm(d, t) for d, t in tasks.items() if d in kept}
        released = {d: self.release(d, t) for d, t in tasks.items() if d not in kept}
        return FillSettlement(confirmed=confirmed, released=released)

    def is_reserved(self, device: str, task_id: str) -> bool:
        """True if ``task_id`` was charged to ``device`` and its update has not arrived."""
        account = self._accounts.get(device)
        found = account.record_of(task_id) if account else None
        return found is not None and not found[1].confirmed

    def confirm(
        self, device: str, task_id: str, *, claimed_epsilon: float | None = None
    ) -> SpendRecord:
        """The update of a reserved task arrived: reconcile the device's claim by task id.

        ``claimed_epsilon`` (the device's own cumulative epsilon after the task)
        must lie between the epsilon of the confirmed records (this one
        included: the device trained all of them) and the epsilon of every
        record (all the device could have trained), within the tolerance;
        otherwise ``ForgedClaim`` and nothing changes (the charge stays).
        ``DuplicateCharge`` if the task was confirmed already; ``PrivacyError``
        if it was never reserved.
        """
        account = self._accounts.get(device)
        found = account.record_of(task_id) if account else None
        if account is None or found is None:
            raise PrivacyError(f"task {task_id!r} was never charged to device {device!r}")
        index, record = found
        if record.confirmed:
            raise DuplicateCharge(f"task {task_id!r} of device {device!r} was already confirmed")
        confirmed = replace(record, confirmed=True)
        if claimed_epsilon is not None:
            lowest = self._epsilon([*account.confirmed_history(), record.step])
            highest = account.epsilon
            self._verify_range(device, claimed_epsilon, lowest, highest, self._claim_tolerance)
            confirmed = replace(confirmed, claimed_epsilon=float(claimed_epsilon))
        account.records[index] = confirmed
        return confirmed

    def release(self, device: str, task_id: str) -> SpendRecord:
        """Drop the reservation of a task the device declined before training it.

        Only an unconfirmed record can go (``PrivacyError`` otherwise); the
        records after it are re-chained (their epsilons recomputed).
        """
        account = self._accounts.get(device)
        found = account.record_of(task_id) if account else None
        if account is None or found is None or found[1].confirmed:
            raise PrivacyError(f"task {task_id!r} of {device!r} holds no reservation to release")
        index, record = found
        rebuilt = _Account()
        for kept in account.records[:index] + account.records[index + 1 :]:
            before = rebuilt.epsilon
            after = self._epsilon(rebuilt.history_with(kept.step))
            self._append(device, rebuilt, replace(kept, epsilon_before=before, epsilon_after=after))
        if not rebuilt.records:  # it had only this reservation: as if never charged
            self._accounts.pop(device, None)
        return record

    def unconfirmed(self, device: str) -> list[str]:
        """Task ids charged to ``device`` whose update never arrived (or not yet)."""
        return [r.task_id for r in self._records(device) if not r.confirmed]

    # -- persistence ---------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The saved form: an envelope whose payload is policy, devices and their SHA-256.

        Plain JSON-ready data: the coordinator embeds it, unopened, in its own state.
        """
        return seal_checked(STATE_KIND, STATE_VERSION, self._content())

    def state_sha256(self) -> str:
        """The checksum :meth:`state_dict` carries (reports cite the state they were built from)."""
        return content_sha256(self._content())

    def _content(self) -> dict[str, Any]:
        return {
            "policy": self._policy.to_dict(),
            "devices": {
                device: [r.to_dict() for r in self._accounts[device].records]
                for device in self.devices()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace this ledger's content with ``state`` (all or nothing).

        Raises ``LedgerStateError`` for another kind, format version or a
        pre-envelope state, a checksum mismatch or records whose epsilons do
        not match a recomputation, and ``PolicyError`` if the state was
        written under another policy.
        """
        content = _verified_content(state)
        try:
            policy = BudgetPolicy.from_dict(content["policy"])
        except (PolicyError, TypeError, KeyError) as exc:
            raise LedgerStateError(f"bad policy in ledger state: {exc}") from exc
        self._policy.ensure_same(policy)
        accounts: dict[str, _Account] = {}
        devices = content["devices"]
        if not isinstance(devices, Mapping):
            raise LedgerStateError("'devices' must be a mapping")
        for device, raw_records in devices.items():
            if not isinstance(raw_records, list):
                raise LedgerStateError(f"the records of {device!r} must be a list")
            account = _Account()
            for raw in raw_records:
                try:
                    record = SpendRecord.from_dict(raw)
                except (TypeError, ValueError) as exc:
                    raise LedgerStateError(f"bad record for {device!r}: {exc}") from exc
                if record.device != device or record.task_id in account.task_ids:
                    raise LedgerStateError(f"inconsistent record for {device!r}: {record}")
                if record.epsilon_before != account.epsilon:
                    raise LedgerStateError(
                        f"broken epsilon chain for {device!r} at {record.task_id!r}"
                    )
                account.records.append(record)
                account.task_ids.add(record.task_id)
                merge_step(account.merged, record.step)
                account.epsilon = record.epsilon_after
            recomputed = self._epsilon(account.history_with(None))
            if not math.isclose(recomputed, account.epsilon, rel_tol=1e-9, abs_tol=1e-12):
                raise LedgerStateError(
                    f"device {device!r}: recorded epsilon {account.epsilon!r} != "
                    f"recomputed {recomputed!r}"
                )
            account.epsilon = recomputed
            accounts[device] = account
        self._accounts = accounts

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Any], *, claim_tolerance: float = 1e-6
    ) -> PrivacyLedger:
        """Restore a ledger (e.g. after a coordinator restart) under its stored policy."""
        content = _verified_content(state)
        try:
            policy = BudgetPolicy.from_dict(content["policy"])
        except (PolicyError, TypeError, KeyError) as exc:
            raise LedgerStateError(f"bad policy in ledger state: {exc}") from exc
        ledger = cls(policy, claim_tolerance=claim_tolerance)
        ledger.load_state_dict(state)
        return ledger

    # -- internals -------------------------------------------------------------------

    def _records(self, device: str) -> list[SpendRecord]:
        account = self._accounts.get(device)
        return account.records if account else []

    def _epsilon(self, history: list[Step]) -> float:
        return self._calc.epsilon(
            history, delta=self._policy.delta, accountant=self._policy.accountant
        )

    def _append(self, device: str, account: _Account, record: SpendRecord) -> None:
        account.records.append(record)
        account.task_ids.add(record.task_id)
        merge_step(account.merged, record.step)
        account.epsilon = record.epsilon_after
        self._accounts[device] = account

    @staticmethod
    def _verify_range(
        device: str, claimed: float, lowest: float, highest: float, tolerance: float
    ) -> None:
        if (
            isinstance(claimed, bool)
            or not isinstance(claimed, int | float)
            or not math.isfinite(claimed)
            or claimed < lowest - tolerance
            or claimed > highest + tolerance
        ):
            raise ForgedClaim(
                device=device,
                claimed=claimed,
                recomputed=lowest if claimed < lowest else highest,
                bounds=(lowest, highest),
            )

    @staticmethod
    def _verify_claim(device: str, claimed: float, recomputed: float, tolerance: float) -> float:
        if not (isinstance(tolerance, int | float) and math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError("tolerance must be a finite number >= 0")
        if (
            isinstance(claimed, bool)
            or not isinstance(claimed, int | float)
            or not math.isfinite(claimed)
            or abs(claimed - recomputed) > tolerance
        ):
            raise ForgedClaim(device=device, claimed=claimed, recomputed=recomputed)
        return recomputed


@dataclass(frozen=True, kw_only=True)
class FillSettlement:
    """What :meth:`PrivacyLedger.settle_fill` did: records confirmed and released, by device."""

    confirmed: dict[str, SpendRecord]
    released: dict[str, SpendRecord]


def _skellam_fields(step: Step) -> dict[str, float | None]:
    if isinstance(step, SkellamStep):
        return {
            "l1_sensitivity": step.l1_sensitivity,
            "l2_sensitivity": step.l2_sensitivity,
            "skellam_variance": step.variance,
        }
    return {}


def _verified_content(state: object) -> dict[str, Any]:
    """Policy and devices of a saved ledger state whose envelope and checksum hold."""
    return open_checked(
        state,
        kind=STATE_KIND,
        format_version=STATE_VERSION,
        keys=_CONTENT_KEYS,
        error=LedgerStateError,
        before_envelope="Do not replace it with an empty ledger (every device would get its "
        "budget back): convert it once with fedward.privacy.ledger.upgrade_v1_state and "
        "store the result",
    )


def upgrade_v1_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """The envelope form of a ledger state saved by format version 1.

    Only an intact v1 state converts: its own checksum (which covered the
    format and version too) must hold, so a corrupted or edited state is not
    laundered by a fresh digest. The records are checked when the result is
    loaded, as any state's are.
    """
    if not isinstance(state, Mapping) or set(state) != _V1_KEYS:
        raise LedgerStateError(f"a v1 ledger state has exactly the keys {sorted(_V1_KEYS)}")
    if state["format"] != STATE_KIND or state["version"] != 1:
        raise LedgerStateError(
            f"not a v1 ledger state: format {state['format']!r} version {state['version']!r}"
        )
    old = {k: v for k, v in state.items() if k != "sha256"}
    try:
        intact = content_sha256(old) == state["sha256"]
    except (TypeError, ValueError) as exc:
        raise LedgerStateError(f"v1 ledger state is not canonical JSON: {exc}") from exc
    if not intact:
        raise LedgerStateError("v1 ledger state checksum mismatch: corrupted or edited")
    return seal_checked(
        STATE_KIND, STATE_VERSION, {"policy": state["policy"], "devices": state["devices"]}
    )
