"""What every engine and privacy decision puts in the audit log: one place.

The engine and the privacy guard emit *facts* (``EngineEvent``,
``PrivacyEvent``); this module turns each into an :class:`AuditEntry` (who,
action, outcome, details) and nothing else formats their audit content. The
store's recorder appends the entries (and writes rows); the simulator's
listeners can call the same functions, so both produce the same trail.

What goes in: ids, versions, reasons, SHA-256 hashes of update frames and
models, and the privacy mechanism (sigma, clip norm, sample rate, steps,
accountant, epsilon at delta, budget). Never tensor values, losses or
sample counts: ``compliance.check_details`` refuses what the log may not hold.

Who is the actor: the device for what it did (an update it sent, a task it
refused), the coordinator for what it decided (dispatch, failure, merge, a
charge, a budget it stopped, a revocation), with the device named in the
details.

Engine events and their actions::

    TASK_DISPATCHED  -> TASK_DISPATCHED
    TASK_FAILED      -> TASK_FAILED (outcome FAILURE, with the reason)
    UPDATE_ACCEPTED  -> UPDATE_ACCEPTED (with the update frame's SHA-256)
    UPDATE_REJECTED  -> UPDATE_REJECTED (reason, detail, SHA-256)
    MODEL_MERGED     -> MODEL_MERGED (the lineage record's details)

Privacy events: SPENT -> PRIVACY_SPENT, EXHAUSTED -> BUDGET_EXHAUSTED,
REJECTED -> UPDATE_REJECTED, REFUSED -> TASK_REFUSED (the device's act),
REVOKED -> DEVICE_REVOKED.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedward.compliance import ActorKind, AuditAction, Outcome, check_details, privacy_details
from fedward.compliance.events import DetailValue

from .engine import EngineEvent, EventKind
from .privacy.events import PrivacyEvent, PrivacyEventKind

__all__ = ["AuditEntry", "engine_entry", "privacy_entry"]


@dataclass(frozen=True, kw_only=True)
class AuditEntry:
    """One audit record, before the log signs and chains it."""

    action: AuditAction
    outcome: Outcome
    actor: ActorKind
    device_id: str | None  # the acting device (actor DEVICE), else None
    details: Mapping[str, DetailValue]


def engine_entry(
    event: EngineEvent,
    *,
    update_sha256: str = "",
    merge_details: Mapping[str, Any] | None = None,
) -> AuditEntry | None:
    """The audit entry of an engine event (None: the event is not audited itself).

    ``update_sha256`` is the hash of the frame being judged (accept, reject);
    ``merge_details`` the lineage record's details of a merge.
    """
    d = event.details
    kind = event.kind
    if kind is EventKind.TASK_DISPATCHED:
        keys: tuple[str, ...] = ("task_id", "device_id", "model_version", "subset_id", "tier")
        return _coordinator(AuditAction.TASK_DISPATCHED, Outcome.SUCCESS, _pick(d, keys))
    if kind is EventKind.TASK_FAILED:
        keys = ("task_id", "device_id", "reason")
        return _coordinator(AuditAction.TASK_FAILED, Outcome.FAILURE, _pick(d, keys))
    if kind is EventKind.UPDATE_ACCEPTED:
        details = {**_pick(d, ("task_id", "device_id", "base_version", "staleness"))}
        details["update_sha256"] = update_sha256
        return _device(AuditAction.UPDATE_ACCEPTED, Outcome.SUCCESS, d["device_id"], details)
    if kind is EventKind.UPDATE_REJECTED:
        details = {**_pick(d, ("task_id", "device_id", "reason", "detail"))}
        details["update_sha256"] = update_sha256
        return _device(AuditAction.UPDATE_REJECTED, Outcome.DENIED, d["device_id"], details)
    if kind is EventKind.MODEL_MERGED:
        details = {**(merge_details or {}), "staleness_max": d["staleness_max"]}
        return _coordinator(AuditAction.MODEL_MERGED, Outcome.SUCCESS, details)
    return None  # enrolment is audited by the service; device states are saved by diff


def privacy_entry(event: PrivacyEvent) -> AuditEntry:
    """The audit entry of a privacy guard's decision."""
    kind = event.kind
    if kind is PrivacyEventKind.SPENT:
        record = _needs(event.record, "a spend record", kind)
        details = _mechanism(event, step=record.step, epsilon=record.epsilon_after)
        details.update(
            device_id=record.device,
            task_id=record.task_id,
            epsilon_before=record.epsilon_before,
            clip_norm=record.max_grad_norm,
        )
        return _coordinator(AuditAction.PRIVACY_SPENT, Outcome.SUCCESS, details, event=event)
    if kind is PrivacyEventKind.EXHAUSTED:
        details = _mechanism(event, step=event.step, epsilon=_needs(event.spent, "spent", kind))
        details.update(
            device_id=event.device_id,
            epsilon_remaining=event.remaining,
            epsilon_next_task=event.next_task_epsilon,
        )
        return _coordinator(AuditAction.BUDGET_EXHAUSTED, Outcome.SUCCESS, details, event=event)
    if kind is PrivacyEventKind.REJECTED:
        details = {"device_id": event.device_id, "task_id": event.task_id}
        report = event.report
        if report is not None:
            details.update(
                noise_multiplier=report.noise_multiplier,
                clip_norm=report.max_grad_norm,
                sample_rate=report.sample_rate,
                steps=report.steps,
                accountant=report.accountant.value,
                claimed_epsilon=report.claimed_epsilon,
                delta=report.delta,
            )
        if event.recomputed_epsilon is not None:
            details.update(
                claimed_epsilon=event.claimed_epsilon, recomputed_epsilon=event.recomputed_epsilon
            )
        reason = _needs(event.reason, "a rejection reason", kind)
        details.update(reason=reason.value, detail=event.detail[:200])
        return _coordinator(AuditAction.UPDATE_REJECTED, Outcome.DENIED, details, event=event)
    if kind is PrivacyEventKind.REFUSED:
        details = {"task_id": event.task_id, "reason": event.detail}
        return _device(
            AuditAction.TASK_REFUSED,
            Outcome.DENIED,
            event.device_id,
            {"device_id": event.device_id, **details},
        )
    details = {"task_id": event.task_id, "reason": event.detail}
    return _coordinator(AuditAction.DEVICE_REVOKED, Outcome.SUCCESS, details, event=event)


# -- helpers -------------------------------------------------------------------------


def _mechanism(event: PrivacyEvent, *, step: Any, epsilon: float) -> dict[str, Any]:
    """The privacy mechanism an auditor wants beside every spend and exhaustion."""
    policy = event.policy
    return dict(
        privacy_details(
            noise_multiplier=step.noise_multiplier,
            clip_norm=event.clip_norm,
            sample_rate=step.sample_rate,
            steps=step.steps,
            accountant=policy.accountant,
            epsilon=epsilon,
            delta=policy.delta,
            epsilon_budget=policy.epsilon,
        )
    )


def _pick(details: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: details[k] for k in keys}


def _coordinator(
    action: AuditAction,
    outcome: Outcome,
    details: Mapping[str, Any],
    *,
    event: PrivacyEvent | None = None,
) -> AuditEntry:
    named = {"device_id": event.device_id, **details} if event is not None else details
    return AuditEntry(
        action=action,
        outcome=outcome,
        actor=ActorKind.COORDINATOR,
        device_id=None,
        details=check_details(named),
    )


def _device(
    action: AuditAction, outcome: Outcome, device_id: str, details: Mapping[str, Any]
) -> AuditEntry:
    return AuditEntry(
        action=action,
        outcome=outcome,
        actor=ActorKind.DEVICE,
        device_id=device_id,
        details=check_details(details),
    )


def _needs(value: Any, what: str, kind: PrivacyEventKind) -> Any:
    if value is None:
        raise ValueError(f"a {kind.value} privacy event needs {what}")
    return value
