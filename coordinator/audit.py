"""What every coordinator decision puts in the audit log: one place.

The engine and the privacy guard emit *facts* (``EngineEvent``,
``PrivacyEvent``), and the service makes its own decisions about requests
(a study created, a device enrolled or refused, an operator's lifecycle call,
a frame refused before the engine saw it). This module turns each into an
:class:`AuditRecord` (who, action, outcome, details); nothing else formats
audit content. The store's recorder and the service append the entries; the
simulator's listeners can call the same functions, so both produce the same
trail.

What goes in: ids, versions, reasons, SHA-256 hashes of update frames and
models, and the privacy mechanism (sigma, clip norm, sample rate, steps,
accountant, epsilon at delta, budget). Never tensor values, losses or
sample counts: ``fedward.compliance.check_details`` refuses what the log may not hold.

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
    FILL_OPENED / FILL_PHASE / FILL_MERGED / FILL_ABORTED / FILL_REFUSED
                     -> SECAGG_ROUND, ``step`` opened / phase / merged / aborted / refused
                        (fill id, cohort, threshold, phase, arrived / missing / survivors /
                        dropouts, reason; a refusal's actor is the device refused). Never a
                        share, a key, a masked word or any sum: the events carry none.

Privacy events: SPENT -> PRIVACY_SPENT, EXHAUSTED -> BUDGET_EXHAUSTED,
REJECTED -> UPDATE_REJECTED, REFUSED -> TASK_REFUSED (the device's act),
REVOKED -> DEVICE_REVOKED.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedward.compliance import ActorKind, AuditAction, Outcome, privacy_details
from fedward.compliance.events import MAX_LIST_LEN

from .engine import EngineEvent, EventKind
from .privacy.events import PrivacyEvent, PrivacyEventKind

__all__ = [
    "AuditRecord",
    "api_access_denied",
    "api_auth_failed",
    "device_enrolment",
    "device_revoked",
    "engine_entry",
    "evaluation_reported",
    "fill_entry",
    "model_downloaded",
    "privacy_entry",
    "study_created",
    "study_restore_failed",
    "study_transition",
    "task_not_its_own",
    "task_declined",
    "token_issued",
    "token_revoked",
    "transport_rejected",
    "update_refused_early",
]


@dataclass(frozen=True, kw_only=True)
class AuditRecord:
    """One audit record as the coordinator words it, before the log adds time, sequence,
    hash chain and signature (``fedward.compliance.events.AuditEntry`` is that logged
    form)."""

    action: AuditAction
    outcome: Outcome
    actor: ActorKind
    actor_id: str | None  # the acting device or operator; None for the coordinator
    # Checked by the log itself when appended (``fedward.compliance.check_details``),
    # which withholds a free-text detail it refuses rather than losing the entry.
    details: Mapping[str, Any]


def engine_entry(
    event: EngineEvent,
    *,
    update_sha256: str = "",
    merge_details: Mapping[str, Any] | None = None,
) -> AuditRecord | None:
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
    if kind in _FILL_STEPS:
        return fill_entry(event)
    return None  # enrolment is audited by the service; device states are saved by diff


_FILL_STEPS = {
    EventKind.FILL_OPENED: ("opened", Outcome.SUCCESS),
    EventKind.FILL_PHASE: ("phase", Outcome.SUCCESS),
    EventKind.FILL_MERGED: ("merged", Outcome.SUCCESS),
    EventKind.FILL_ABORTED: ("aborted", Outcome.FAILURE),
    EventKind.FILL_REFUSED: ("refused", Outcome.DENIED),
}
_FILL_ID_LISTS = ("cohort", "arrived", "missing", "survivors", "dropouts")
_FILL_FACTS = (
    "fill_id",
    "threshold",
    "cohort_size",
    "model_version",
    "subset_id",
    "phase",
    "next_phase",
    "open_phase",
    "live",
    "timed_out",
    "version",
    "parent",
    "base_version",
    "staleness",
    "reason",
    "detail",
    "device_id",
    "task_id",
    "dropped_in",
)


def fill_entry(event: EngineEvent) -> AuditRecord:
    """The SECAGG_ROUND entry of a fill event (who, which phase, who dropped, why).

    Lists of device ids longer than the log allows are cut to their first
    ``MAX_LIST_LEN`` with the full count beside them (``<list>_count``).
    """
    step, outcome = _FILL_STEPS[event.kind]
    d = event.details
    details: dict[str, Any] = {"step": step}
    details.update({k: d[k] for k in _FILL_FACTS if k in d})
    for key in _FILL_ID_LISTS:
        if key in d:
            ids = [str(i) for i in d[key]]
            details[key] = ids[:MAX_LIST_LEN]
            if len(ids) > MAX_LIST_LEN:
                details[f"{key}_count"] = len(ids)
    if "detail" in details:
        details["detail"] = str(details["detail"])[:200]
    if event.kind is EventKind.FILL_REFUSED and d.get("device_id"):
        return _device(AuditAction.SECAGG_ROUND, outcome, str(d["device_id"]), details)
    return _coordinator(AuditAction.SECAGG_ROUND, outcome, details)


def privacy_entry(event: PrivacyEvent) -> AuditRecord:
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
            charged_at="dispatch",  # the task's whole mechanism, before any update arrives
            unit=event.unit.value,  # what the epsilon protects: a 10-s window or a patient
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


# -- the service's own decisions -----------------------------------------------------


def study_created(
    *,
    by: str,
    spec_summary: Mapping[str, Any],
    spec_sha256: str,
    content_hash: str,
    record_hash: str,
    warm_start: bool,
) -> AuditRecord:
    """An operator created a study (``spec_summary``: name, strategy, sizes; no data)."""
    details = {
        **spec_summary,
        "spec_sha256": spec_sha256,
        "content_hash": content_hash,
        "warm_start": warm_start,
        "record_hash": record_hash,
    }
    return _operator(AuditAction.STUDY_CREATED, Outcome.SUCCESS, by, details)


def study_transition(action: AuditAction, *, by: str, previous: str, state: str) -> AuditRecord:
    """An operator started, paused, resumed or stopped a study."""
    return _operator(action, Outcome.SUCCESS, by, {"previous_state": previous, "state": state})


def study_finished(*, reason: str, previous: str, figures: Mapping[str, Any]) -> AuditRecord:
    """The coordinator ended a study by its stop rule (``reason``: which rule was met)."""
    return _coordinator(
        AuditAction.STUDY_STOPPED,
        Outcome.SUCCESS,
        {"reason": reason, "previous_state": previous, "state": "stopped", **figures},
    )


def device_enrolment(
    *,
    device_id: str,
    device_class: str,
    memory_bytes: int,
    key_sha256: str,
    refusal: str | None,
    impersonation: bool = False,
    by: str | None = None,
) -> AuditRecord:
    """A device enrolled, or was refused (``refusal``); ``impersonation``: the id is
    enrolled under another key (audited as an authentication failure). ``by``: the
    operator who enrolled it over REST (the actor then), None when the device itself
    asked over MQTT."""
    details: dict[str, Any] = {
        "device_id": device_id,
        "device_class": device_class,
        "memory_bytes": memory_bytes,
        "key_sha256": key_sha256,
    }

    def entry(action: AuditAction, outcome: Outcome, facts: Mapping[str, Any]) -> AuditRecord:
        if by is not None:
            return _operator(action, outcome, by, facts)
        return _device(action, outcome, device_id, facts)

    if refusal is None:
        return entry(AuditAction.DEVICE_ENROLLED, Outcome.SUCCESS, details)
    action = AuditAction.DEVICE_AUTH_FAILED if impersonation else AuditAction.DEVICE_ENROLLED
    return entry(action, Outcome.DENIED, {**details, "reason": refusal})


def device_revoked(device_id: str, *, by: str) -> AuditRecord:
    """An operator revoked a device for good."""
    return _operator(AuditAction.DEVICE_REVOKED, Outcome.SUCCESS, by, {"device_id": device_id})


def transport_rejected(
    *, device_id: str | None, reason: str, detail: str, authentication: bool
) -> AuditRecord:
    """A message the transport dropped before the service saw it (bridge reasons)."""
    action = AuditAction.DEVICE_AUTH_FAILED if authentication else AuditAction.UPDATE_REJECTED
    details: dict[str, Any] = {"transport_reason": reason[:64], "detail": detail[:200]}
    if device_id:
        details["device_id"] = device_id[:64]
        return _device(action, Outcome.DENIED, device_id, details)
    return _coordinator(action, Outcome.DENIED, details)


def task_not_its_own(device_id: str, task_id: str) -> AuditRecord:
    """A device tried to act on another device's task (no device can stop another)."""
    details = {"device_id": device_id, "task_id": task_id, "reason": "not its task"}
    return _device(AuditAction.DEVICE_AUTH_FAILED, Outcome.DENIED, device_id, details)


def task_declined(device_id: str, task_id: str, *, reason: str = "dp_required") -> AuditRecord:
    """A device declined the study's kind of task: a DP budget holder offered a task
    without DP-SGD (``dp_required``) or a device whose SecAgg floors refuse the
    study's fills (``secagg_refused``); the coordinator then stops scheduling it for
    the study (DECLINED)."""
    details = {"device_id": device_id, "task_id": task_id, "reason": reason}
    return _device(AuditAction.TASK_REFUSED, Outcome.DENIED, device_id, details)


def update_refused_early(
    *,
    reason: str,
    detail: str | None,
    update_sha256: str,
    task_id: str | None = None,
    device_id: str | None = None,
) -> AuditRecord:
    """An update frame refused before the engine judged it (malformed, unknown study)."""
    details: dict[str, Any] = {}
    if task_id is not None:
        details["task_id"] = task_id
    details.update(reason=reason)
    if detail is not None:
        details["detail"] = detail[:200]
    details["update_sha256"] = update_sha256
    if device_id:
        details["device_id"] = device_id
        return _device(AuditAction.UPDATE_REJECTED, Outcome.DENIED, device_id, details)
    return _coordinator(AuditAction.UPDATE_REJECTED, Outcome.DENIED, details)


def study_restore_failed(*, error: str, detail: str) -> AuditRecord:
    """A study could not be rebuilt at start (a missing or corrupted blob, a spec or
    snapshot it cannot read): it is not served, the others are."""
    details = {"error": error[:64], "detail": detail[:200]}
    return _coordinator(AuditAction.STUDY_RESTORE_FAILED, Outcome.FAILURE, details)


# -- the REST API's own records (fedward.coordinator.api) ---------------------------
# An operator's actor id is ``<role>:<token id>`` (fedward.coordinator.access.Principal).


def api_auth_failed(
    *, source: str, note: str, failures: int, since: float, claimed_token_id: str | None
) -> AuditRecord:
    """Failed bearer authentication from ``source`` (aggregated: first, lockout, summary)."""
    details: dict[str, Any] = {
        "source": source[:64],
        "note": note,
        "failures": failures,
        "interval_start": since,
    }
    if claimed_token_id is not None:
        details["claimed_token_id"] = claimed_token_id
    return _coordinator(AuditAction.API_AUTH_FAILED, Outcome.DENIED, details)


def api_access_denied(*, by: str, permission: str, method: str, route: str) -> AuditRecord:
    """A valid token called a route its role does not allow."""
    details = {"permission": permission, "method": method[:16], "route": route[:200]}
    return _operator(AuditAction.API_ACCESS_DENIED, Outcome.DENIED, by, details)


def model_downloaded(*, by: str, version: int, model_sha256: str) -> AuditRecord:
    """An operator downloaded a full model version."""
    details = {"model_version": version, "model_sha256": model_sha256}
    return _operator(AuditAction.MODEL_DOWNLOADED, Outcome.SUCCESS, by, details)


def evaluation_reported(*, by: str, version: int, accuracy: float) -> AuditRecord:
    """An evaluator reported a model version's accuracy (one aggregate number)."""
    details = {"model_version": version, "accuracy": accuracy}
    return _operator(AuditAction.EVALUATION_REPORTED, Outcome.SUCCESS, by, details)


def token_issued(*, by: str, token_id: str, role: str, name: str, expires_at: float) -> AuditRecord:
    """An admin issued an API token (its id and role; never the secret)."""
    details = {"token_id": token_id, "role": role, "name": name, "expires_at": expires_at}
    return _operator(AuditAction.TOKEN_ISSUED, Outcome.SUCCESS, by, details)


def token_revoked(*, by: str, token_id: str, role: str) -> AuditRecord:
    """An admin revoked an API token."""
    details = {"token_id": token_id, "role": role}
    return _operator(AuditAction.TOKEN_REVOKED, Outcome.SUCCESS, by, details)


# -- the wire's authentication decisions ------------------------------------------------

ANONYMOUS = "anonymous"


def wire_refused(
    *,
    sender: str | None,
    reason: str,
    detail: str,
    claimed_device_id: str | None,
    topic_kind: str | None,
    count: int = 1,
) -> AuditRecord:
    """A message refused on the wire: unsigned, forged, replayed, not enrolled, rate-limited,
    bad chunks. ``sender`` is the authenticated device, or None: then the actor is
    anonymous and the id the topic claimed is only a detail, never the actor (no
    entry in a victim's name). ``count`` > 1 summarises a burst (rate-limited audit)."""
    details: dict[str, Any] = {"wire_reason": reason[:64], "detail": detail[:200]}
    if topic_kind:
        details["topic_kind"] = topic_kind[:32]
    if claimed_device_id:
        details["claimed_device_id"] = claimed_device_id[:64]
    if count != 1:
        details["count"] = count
    if sender:
        return _device(AuditAction.DEVICE_AUTH_FAILED, Outcome.DENIED, sender, details)
    return _entry(
        AuditAction.DEVICE_AUTH_FAILED, Outcome.DENIED, ActorKind.ANONYMOUS, ANONYMOUS, details
    )


def enrolment_secret_issued(
    *, device_id: str, by: str, expires_at: int, secret_sha256: str
) -> AuditRecord:
    """An operator issued a one-time enrolment secret for ``device_id`` (its hash, not it)."""
    details = {"device_id": device_id, "expires_at": expires_at, "secret_sha256": secret_sha256}
    return _operator(
        AuditAction.DEVICE_ENROLLED, Outcome.SUCCESS, by, {**details, "step": "secret_issued"}
    )


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
) -> AuditRecord:
    """The coordinator decided; a privacy event's device is named first in the details."""
    named = {"device_id": event.device_id, **details} if event is not None else details
    return _entry(action, outcome, ActorKind.COORDINATOR, None, named)


def _operator(
    action: AuditAction, outcome: Outcome, operator: str, details: Mapping[str, Any]
) -> AuditRecord:
    return _entry(action, outcome, ActorKind.OPERATOR, operator, details)


def _device(
    action: AuditAction, outcome: Outcome, device_id: str, details: Mapping[str, Any]
) -> AuditRecord:
    return _entry(action, outcome, ActorKind.DEVICE, device_id, details)


def _entry(
    action: AuditAction,
    outcome: Outcome,
    actor: ActorKind,
    actor_id: str | None,
    details: Mapping[str, Any],
) -> AuditRecord:
    return AuditRecord(
        action=action, outcome=outcome, actor=actor, actor_id=actor_id, details=details
    )


def _needs(value: Any, what: str, kind: PrivacyEventKind) -> Any:
    if value is None:
        raise ValueError(f"a {kind.value} privacy event needs {what}")
    return value
