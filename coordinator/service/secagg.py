"""Secure aggregation: a fill's steps in from the wire, the engine's answers out.

A study whose spec turns ``secagg`` on builds its engine with a
``SecAggPolicy`` (:func:`fedward.coordinator.study_spec.build_engine`): every
merge is one fill, one SecAgg instance whose cohort the engine fixes at
dispatch. This module is the service's side of it:

* :meth:`SecAggCalls.secagg_receive` takes one decoded ``SecAggMessage`` frame
  from an authenticated member (the bridge verified its signature and route),
  rebuilds the privacy message (``fedward.privacy.secagg.wire.decode_message``
  for a body, ``MaskedInput`` from the ``words`` tensor and the fill's own
  session for a masked input), hands it to ``Engine.secagg_receive`` and returns
  what the engine sends back, already framed for each member's ``fill`` topic;
* :meth:`SecAggCalls.secagg_tick` runs ``Engine.secagg_tick`` (phase timers),
  called from the bridge's timer;
* a frame from a device that is not a member of that fill (or holds no such
  task), a wrong or late phase, a member already declared dropped, or a body
  that does not decode is refused: counted (``/metrics``'s
  ``fedward_wire_refused`` under a ``secagg_*`` reason) and audited under the
  sender's identity (``audit.wire_refused``), never answered with content.

Why nothing individual is kept: the service never logs, audits, counts or
stores a message's content; audit details carry ids, the phase and the refusal
reason only, and /metrics counts bytes, fills and dropouts. What the engine
keeps for a fill in flight (the SecAgg server state: masked inputs, encrypted
shares) is its own snapshot, which B's ``Engine.state_dict`` documents.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from functools import partial
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedward.coordinator.errors import CoordinatorError
from fedward.coordinator.store.enrolment_evidence import EnrolmentEvidence
from fedward.coordinator.store.runtime import StudyRuntime
from fedward.errors import FedwardError
from fedward.privacy.secagg import wire as secagg_wire
from fedward.privacy.secagg.errors import SecAggError
from fedward.privacy.secagg.messages import (
    KeyAdvertisement,
    MaskedInput,
    ShareBundle,
    UnmaskResponse,
)
from fedward.protocol.errors import ProtocolError
from fedward.protocol.messages import (
    SecAggMessage,
    SecAggParams,
    SecAggPhase,
    encode_frame,
    secagg_body,
    secagg_frame_tensors,
    secagg_words_data,
)

from .core import ServiceCore
from .errors import ServiceError
from .studies import finish_if_done

log = logging.getLogger(__name__)

UPLINK_TYPES: dict[SecAggPhase, type] = {
    SecAggPhase.ADVERTISE: KeyAdvertisement,
    SecAggPhase.SHARES: ShareBundle,
    SecAggPhase.MASKED_INPUT: MaskedInput,
    SecAggPhase.UNMASK_RESPONSE: UnmaskResponse,
}
"""The privacy message each uplink phase carries."""


class SecAggRefusal(CoordinatorError):
    """A secure-aggregation frame the service refuses; ``reason`` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class OutboundSecAgg:
    """One framed step for one member, to publish on its ``fill`` topic (then seal)."""

    device_id: str
    phase: SecAggPhase
    frame: bytes


@dataclass
class SecAggCounters:
    """What /metrics shows of a study's fills, since start (never any content)."""

    fills: Counter[str] = field(default_factory=Counter)  # opened / merged / aborted
    dropouts: Counter[str] = field(default_factory=Counter)  # by phase
    bytes_in: int = 0
    bytes_out: int = 0
    frames_in: Counter[str] = field(default_factory=Counter)  # by phase
    frames_out: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> dict[str, Any]:
        return {
            "fills": dict(self.fills),
            "dropouts": dict(self.dropouts),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "frames_in": dict(self.frames_in),
            "frames_out": dict(self.frames_out),
        }


_FILL_EVENTS = {
    "fill_opened": "opened",
    "fill_merged": "merged",
    "fill_aborted": "aborted",
}


RefusedHook = Callable[[StudyRuntime, Mapping[str, Any]], None]
"""(study, a FILL_REFUSED event's details): count and audit it under the sender."""


def watch_fills(
    counters_by_study: dict[str, SecAggCounters],
    watched: weakref.WeakSet[Any],
    study: StudyRuntime,
    on_refused: RefusedHook | None = None,
) -> SecAggCounters:
    """The study's counters, fed by its engine's FILL_* events (a listener attached once
    per engine: a reload after a failed call builds a new engine).

    Counts only numbers: fills by outcome and, per phase, the members a phase closed
    without (``missing`` of FILL_PHASE / FILL_ABORTED). A FILL_REFUSED event (late,
    out of phase, not a member, malformed) goes to ``on_refused``.
    """
    counters = counters_by_study.setdefault(study.id, SecAggCounters())
    engine = study.engine
    if engine in watched:
        return counters

    def on_event(event: Any) -> None:
        kind = str(getattr(event.kind, "value", event.kind))
        details = event.details if isinstance(event.details, Mapping) else {}
        if kind in _FILL_EVENTS:
            counters.fills[_FILL_EVENTS[kind]] += 1
        if kind in ("fill_phase", "fill_aborted"):
            missing = details.get("missing") or ()
            if missing:
                counters.dropouts[str(details.get("phase", "unknown"))] += len(missing)
        if kind == "fill_refused" and on_refused is not None:
            on_refused(study, details)

    engine.listeners.append(on_event)
    watched.add(engine)
    return counters


def task_secagg(study: StudyRuntime, order: Any) -> SecAggParams | None:
    """The ``Task.secagg`` of a task order (None outside a fill)."""
    if getattr(order, "fill_id", None) is None:
        return None
    pieces = study.engine.secagg_params(order)
    if isinstance(pieces, SecAggParams):
        return pieces
    if hasattr(pieces, "model_dump"):
        pieces = pieces.model_dump(mode="json")
    # through JSON: the engine's plain pieces hold lists where the wire model wants tuples
    return SecAggParams.model_validate_json(json.dumps(_plain(pieces)))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "to_plain"):
        return _plain(value.to_plain())
    if isinstance(value, bytes):
        return value.hex()
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    return value


class SecAggCalls(ServiceCore):
    # -- counters -------------------------------------------------------------------
    def secagg_stats(self, study_id: str) -> dict[str, Any]:
        """A study's fills opened/merged/aborted, dropouts by phase, bytes (since start)."""
        with self._lock:
            counters = self._secagg_counters.get(study_id)
            return counters.snapshot() if counters is not None else SecAggCounters().snapshot()

    def _watch_fills(self, study: StudyRuntime) -> SecAggCounters:
        """Count the study's fills, and make every fill it opens check each member's
        signed key advertisement against the key the member enrolled with."""
        book = getattr(study.engine, "fills", None)
        if book is not None and getattr(book, "identity_keys", None) is None:
            # Why: the wire signature proves who relayed a step; the advertisement's own
            # signature (the device signs it with its enrolment key) is what the roster
            # carries to the other members, so none can be swapped on the way.
            book.identity_keys = partial(self._enrolled_key, study.id)
        if book is not None and getattr(book, "identity_evidence", False) is None:
            # and each roster member comes with evidence from the signed audit log of
            # the key it enrolled with, so devices need not take the coordinator's word
            book.identity_evidence = self._enrolment_evidence(study.id)
        return watch_fills(self._secagg_counters, self._secagg_watched, study, self._fill_refused)

    def _enrolment_evidence(self, study_id: str) -> EnrolmentEvidence:
        """The study's evidence builder (one per study: it indexes the log once)."""
        evidence = self._secagg_evidence.get(study_id)
        if evidence is None:
            evidence = EnrolmentEvidence(
                # the trail's log: AuditTrail has no public accessor for it (yet)
                log=self._trail.log,
                study_id=study_id,
                public_key_of=partial(self._enrolled_raw_key, study_id),
                sign_tree_head=self._trail.sign_tree_head,  # durable first, then signed
            )
            self._secagg_evidence[study_id] = evidence
        return evidence

    def _enrolled_raw_key(self, study_id: str, device_id: str) -> bytes | None:
        try:
            return bytes(self.device_public_key(study_id, device_id))  # type: ignore[attr-defined]
        except ServiceError:
            return None

    def _enrolled_key(self, study_id: str, device_id: str) -> Ed25519PublicKey | None:
        try:
            raw = self.device_public_key(study_id, device_id)  # type: ignore[attr-defined]
        except ServiceError:
            return None
        return Ed25519PublicKey.from_public_bytes(raw)

    def _fill_refused(self, study: StudyRuntime, details: Mapping[str, Any]) -> None:
        """The engine refused a member's step: counted and audited under that member
        (the bridge authenticated it), inside the call's change."""
        device = str(details.get("device_id", "")) or None
        reason = str(details.get("reason", "refused"))[:40]
        note = f" (dropped in {details['dropped_in']})" if "dropped_in" in details else ""
        self.wire_refused(  # type: ignore[attr-defined]  # DeviceCalls, in the facade
            study.id,
            sender=device,
            reason=f"secagg_{reason}",
            detail=f"{details.get('phase')} fill {details.get('fill_id')} task "
            f"{details.get('task_id')}: {reason}{note} while {details.get('open_phase')} is open",
            claimed_device_id=device,
            topic_kind="secagg",
        )

    # -- uplink ---------------------------------------------------------------------
    def secagg_receive(
        self,
        study_id: str,
        message: SecAggMessage,
        tensors: Mapping[str, np.ndarray],
        *,
        sender: str | None,
        size: int = 0,
    ) -> list[OutboundSecAgg]:
        """Judge one uplink SecAgg step of ``sender``; what to publish in answer.

        Refusals (see the module doc) are counted and audited here and return
        ``[]``; nothing is raised for a device's bad input.
        """
        with self._lock:
            study = self._require(study_id)
            counters = self._watch_fills(study)
            counters.bytes_in += size
            counters.frames_in[message.phase.value] += 1
            try:
                privacy_message = self._decode_step(study, message, tensors, sender=sender)
                with self._change(study) as changes:
                    step = study.engine.secagg_receive(
                        device_id=message.device_id,
                        task_id=message.task_id,
                        phase=message.phase,
                        message=privacy_message,
                        now=changes.at,
                    )
                    out = self._step_out(study, step)
                    finish_if_done(self, study, changes)
            except SecAggRefusal as exc:
                self._refuse(study, message, sender, exc.reason, exc.detail)
                return []
            except (SecAggError, CoordinatorError, FedwardError, ValueError, KeyError) as exc:
                # The engine refused it (not a member, wrong or late phase, dropped,
                # inconsistent content); _change reloaded the study from the database.
                self._refuse(study, message, sender, _reason(exc), f"{type(exc).__name__}: {exc}")
                return []
            return out

    def _decode_step(
        self,
        study: StudyRuntime,
        message: SecAggMessage,
        tensors: Mapping[str, np.ndarray],
        *,
        sender: str | None,
    ) -> object:
        if not study.spec.secagg_on:
            raise SecAggRefusal("secagg_off", "the study does not run secure aggregation")
        if sender is not None and sender != message.device_id:
            raise SecAggRefusal("secagg_not_member", "frame names another device")
        expected = UPLINK_TYPES.get(message.phase)
        if expected is None:
            raise SecAggRefusal("secagg_wrong_phase", f"{message.phase.value} is not uplink")
        order = study.engine.tasks.get(message.task_id)
        if (
            order is None
            or order.device_id != message.device_id
            or getattr(order, "fill_id", None) != message.fill_id
        ):
            raise SecAggRefusal(
                "secagg_not_member",
                f"no task {message.task_id} of this device in fill {message.fill_id}",
            )
        if message.phase is SecAggPhase.MASKED_INPUT:
            return self._masked_input(study, order, message, tensors)
        try:
            return secagg_wire.decode_message(secagg_body(tensors), expected)
        except (SecAggError, ProtocolError) as exc:
            raise SecAggRefusal("secagg_malformed", f"{type(exc).__name__}: {exc}") from exc

    def _masked_input(
        self,
        study: StudyRuntime,
        order: Any,
        message: SecAggMessage,
        tensors: Mapping[str, np.ndarray],
    ) -> MaskedInput:
        # The session id and round come from the fill itself, not from the device: a
        # masked input can only ever be read as one of this fill's.
        params = task_secagg(study, order)
        if params is None:  # pragma: no cover - a fill's order always has params
            raise SecAggRefusal("secagg_not_member", "task is in no fill")
        bits = params.config.get("modulus_bits")
        if isinstance(bits, bool) or not isinstance(bits, int):  # pragma: no cover - own config
            raise SecAggRefusal("secagg_malformed", "the fill's config names no modulus_bits")
        try:  # the fill's b decides the tensor's dtype: <u4 / <u8 at 32 / 64, packed uint8 else
            data = secagg_words_data(tensors, modulus_bits=bits)
        except (ProtocolError, ValueError) as exc:
            raise SecAggRefusal("secagg_malformed", str(exc)) from None
        try:
            session_id = bytes.fromhex(str(params.session["session_id"]))
            round_index = int(params.session["round_index"])
        except (KeyError, ValueError, TypeError) as exc:  # pragma: no cover - engine's bug
            raise SecAggRefusal("secagg_malformed", "fill session unreadable") from exc
        return MaskedInput(
            session_id=session_id,
            round_index=round_index,
            device_id=message.device_id,
            data=data,
        )

    def _refuse(
        self,
        study: StudyRuntime,
        message: SecAggMessage,
        sender: str | None,
        reason: str,
        detail: str,
    ) -> None:
        log.info(
            "study %s: refused SecAgg %s from %s: %s (%s)",
            study.id,
            message.phase.value,
            sender or message.device_id,
            reason,
            detail[:200],
        )
        self.wire_refused(  # type: ignore[attr-defined]  # DeviceCalls, in the facade
            study.id,
            sender=sender,
            reason=reason,
            detail=f"{message.phase.value} fill {message.fill_id} task {message.task_id}: {detail}"[
                :500
            ],
            claimed_device_id=message.device_id,
            topic_kind="secagg",
        )

    # -- timers ---------------------------------------------------------------------
    def secagg_tick(self, study_id: str) -> list[OutboundSecAgg]:
        """Run the study's phase timers now (the bridge's timer); what to publish."""
        with self._lock:
            study = self._studies.get(study_id)
            if study is None or not study.spec.secagg_on:
                return []
            self._watch_fills(study)
            with self._change(study) as changes:
                step = study.engine.secagg_tick(now=changes.at)
                out = self._step_out(study, step)
                finish_if_done(self, study, changes)
            return out

    # -- downlink -------------------------------------------------------------------
    def _step_out(self, study: StudyRuntime, step: Any) -> list[OutboundSecAgg]:
        """Frame each of a FillStep's outbound messages for its member."""
        counters = self._secagg_counters.setdefault(study.id, SecAggCounters())
        out: list[OutboundSecAgg] = []
        for item in getattr(step, "outbound", ()):
            phase = SecAggPhase(item.phase)
            header = SecAggMessage(
                study_id=study.id,
                device_id=item.device_id,
                task_id=item.task_id,
                fill_id=item.fill_id,
                phase=phase,
            )
            body = None if item.message is None else secagg_wire.encode_message(item.message)
            tensors = secagg_frame_tensors(phase, body=body)
            frame = encode_frame(header, tensors or None, max_bytes=self._max_bytes)
            counters.bytes_out += len(frame)
            counters.frames_out[phase.value] += 1
            out.append(OutboundSecAgg(device_id=item.device_id, phase=phase, frame=frame))
        return out


def _reason(exc: Exception) -> str:
    """The metric label of an engine refusal (its own ``reason`` when it names one)."""
    reason = getattr(exc, "reason", None)
    text = str(getattr(reason, "value", reason) or "").lower()
    if text and text.replace("_", "").isalnum() and len(text) <= 40:
        return text if text.startswith("secagg_") else f"secagg_{text}"
    return "secagg_refused"


__all__ = [
    "OutboundSecAgg",
    "SecAggCalls",
    "SecAggCounters",
    "SecAggRefusal",
    "task_secagg",
    "watch_fills",
]
