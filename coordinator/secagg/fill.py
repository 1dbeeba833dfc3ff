"""One buffer fill = one secure-aggregation instance, driven phase by phase.

A :class:`Fill` wraps a ``SecAggServer`` with what the coordinator decides
around it: the cohort and each member's task, who is still live, who answered
the current phase, the phase's deadline, and who was declared dropped (a
member heard from after that is refused, counted and named in an event). A
phase closes when every live member answered or its timer fires; members
still silent are dropped (their tasks fail); fewer than the threshold aborts
the whole fill (every task fails, nothing is released or merged).

The masked-input phase may also close early (``straggler_grace``): once the
threshold's inputs are in, it waits ``grace x`` the time they took for members
still training, then drops them. Why: a cohort is fixed at dispatch, so
without it a fill waits for its slowest member, and the fast members it holds
sit idle until then (measured: 5.2x ``ftte``'s time to target on the full
benchmark). Dropping a member after its peers' inputs are in is the dropout
SecAgg is built for: its pairwise masks are removed from survivors' shares,
and an input it sends later is refused as a declared dropout's.

Phases (``SecAggPhase``; uplink what devices send, downlink what the server sends)::

    ADVERTISE -> ROSTER, SHARES -> DELIVERY, MASKED_INPUT -> UNMASK_REQUEST,
    UNMASK_RESPONSE -> finalize (the fill's sums, merged once)     ABORT: to a dropped
                                                                      member or all of them

What the fill keeps of a masked input: only the running modular SUM of the
masked vectors received in the phase (and each sender's SHA-256, to tell an
at-least-once re-delivery from a second, different input). The individual
vectors are never stored, and the sum is not saved at all: a fill restored in
the MASKED_INPUT phase re-sends each live member its share delivery, and a
device answers the same delivery with the same bytes (its one-shot journal),
so neither memory nor a snapshot ever holds one device's masked vector. (A
database leak together with t colluding devices' held shares would otherwise
unmask that device.) The server sees the sum as one member's input and zeros
for the others, which unmasks to the same total.

Pure: no I/O, no clock (``now`` is passed in), randomness only through the
book's injected ``random_bytes``.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from fedward.privacy.secagg import (
    AggregateResult,
    KeyAdvertisement,
    KeyRoster,
    MaskedInput,
    SecAggConfig,
    SecAggServer,
    SecAggSession,
    ServerStage,
    ShareBundle,
    UnmaskResponse,
)
from fedward.privacy.secagg.errors import ProtocolViolation, SecAggError
from fedward.privacy.secagg.layout import VectorLayout
from fedward.privacy.secagg.quantize import mod_add, words_from_bytes, words_to_bytes
from fedward.protocol.messages import SecAggPhase
from fedward.tinytrain.subsets import SubsetSpec

from ..errors import StateLoadError
from . import plain
from .policy import SecAggPolicy

__all__ = [
    "Fill",
    "IdentityEvidence",
    "FillEffects",
    "FillEvent",
    "FillOutbound",
    "FillStep",
    "FillWeighting",
    "FinishedFill",
]

IdentityKeys = Callable[[str], Any]
"""device id -> its Ed25519 public key (signed advertisements become mandatory)."""

IdentityEvidence = Callable[[str], bytes | None]
"""device id -> opaque evidence of its identity key (``b""``: none to give; None: no
source of evidence configured, the roster goes without), attached to each
roster member (``KeyRoster.evidence``) so devices check peers' keys without trusting
the coordinator alone (``fedward.coordinator.store.enrolment_evidence`` builds it from
the signed audit log; ``fedward.edge.peer_evidence`` checks it)."""


class FillEvent(enum.StrEnum):
    """What a fill reports (the engine emits each as the EventKind of the same value)."""

    OPENED = "fill_opened"
    PHASE = "fill_phase"
    MERGED = "fill_merged"
    ABORTED = "fill_aborted"
    REFUSED = "fill_refused"  # a message refused: late (declared dropped), out of phase, malformed


_UPLINK_OF_STAGE = {
    ServerStage.COLLECTING_ADVERTISEMENTS: SecAggPhase.ADVERTISE,
    ServerStage.COLLECTING_SHARES: SecAggPhase.SHARES,
    ServerStage.COLLECTING_MASKED_INPUTS: SecAggPhase.MASKED_INPUT,
    ServerStage.COLLECTING_UNMASK_RESPONSES: SecAggPhase.UNMASK_RESPONSE,
}
_UPLINK_ORDER = list(_UPLINK_OF_STAGE.values())
_MESSAGE_TYPE: dict[SecAggPhase, type] = {
    SecAggPhase.ADVERTISE: KeyAdvertisement,
    SecAggPhase.SHARES: ShareBundle,
    SecAggPhase.MASKED_INPUT: MaskedInput,
    SecAggPhase.UNMASK_RESPONSE: UnmaskResponse,
}


def _sender(message: object) -> object:
    return getattr(message, "sender", None) or getattr(message, "device_id", None)


@dataclass(frozen=True)
class FillOutbound:
    """One message for one member: ``message`` is a privacy.secagg dataclass (None for ABORT)."""

    device_id: str
    task_id: str
    fill_id: str
    phase: SecAggPhase
    message: Any


@dataclass(frozen=True)
class FillStep:
    """What one ``Engine.secagg_receive`` / ``secagg_tick`` call produced.

    ``outbound``: messages to send (in order); ``merge``: the last merge of the
    step (``merges``: all of them, in completion order; a tick can finish two
    fills); ``aborted``: ids of the fills that aborted in the step; ``invited``:
    the task orders (now naming their fill) of the members of fills opened in the
    step from ready devices (``CohortBinding.ARRIVAL``): each device is sent its
    task again, with the fill's ``SecAggParams`` in it.
    """

    outbound: tuple[FillOutbound, ...] = ()
    merge: Any = None  # MergeResult | None
    aborted: tuple[str, ...] = ()
    merges: tuple[Any, ...] = ()
    invited: tuple[Any, ...] = ()  # TaskOrder


@dataclass(frozen=True, kw_only=True)
class FillWeighting:
    """The public numbers each member computes its own weight from (fixed per fill)."""

    energy_reference: float | None
    energy_tolerance: float
    energy_beta: float
    norm_bound: float | None

    def to_plain(self) -> dict[str, Any]:
        return {
            "energy_reference": self.energy_reference,
            "energy_tolerance": self.energy_tolerance,
            "energy_beta": self.energy_beta,
            "norm_bound": self.norm_bound,
        }

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> FillWeighting:
        ref, bound = data["energy_reference"], data["norm_bound"]
        return cls(
            energy_reference=None if ref is None else float(ref),
            energy_tolerance=float(data["energy_tolerance"]),
            energy_beta=float(data["energy_beta"]),
            norm_bound=None if bound is None else float(bound),
        )


@dataclass(frozen=True)
class FinishedFill:
    fill: Fill
    result: AggregateResult


@dataclass
class FillEffects:
    """What the engine must carry out after a fill step, in this order: emit the
    events, fail the tasks, merge the finished fills. Outbound goes to the caller."""

    outbound: list[FillOutbound] = field(default_factory=list)
    events: list[tuple[FillEvent, dict[str, Any]]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (task id, reason)
    # (device id, seconds from the fill's opening to its masked input, lower bound):
    # how long members took; lower bound True for a member dropped still training
    timed: list[tuple[str, float, bool]] = field(default_factory=list)
    finished: list[FinishedFill] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)


class Fill:
    """One fill: a SecAggServer, its cohort's tasks, the live set and the phase timer."""

    def __init__(
        self,
        *,
        fill_id: str,
        config: SecAggConfig,
        session: SecAggSession,
        layout: VectorLayout,
        subset: SubsetSpec,
        members: Mapping[str, str],
        base_version: int,
        weighting: FillWeighting,
        opened_at: float,
        deadline: float,
        timeout_for: Callable[[str], float],
        identity_keys: Mapping[str, Any] | None = None,
        identity_evidence: IdentityEvidence | None = None,
        identity_keys_source: Callable[[], IdentityKeys | None] | None = None,
        straggler_grace: float | None = None,
        staleness_weights: Mapping[str, float] | None = None,
    ) -> None:
        if set(members) != set(session.cohort):
            raise ValueError("a fill's members are exactly its session's cohort")
        weights = dict(staleness_weights or {})
        if not set(weights) <= set(members) or not all(
            isinstance(w, float) and 0.0 < w <= 1.0 for w in weights.values()
        ):
            raise ValueError("staleness weights are floats in (0, 1] for cohort members")
        self.fill_id = fill_id
        self.config = config
        self.session = session
        self.layout = layout
        self.subset = subset
        self.members = dict(members)  # device id -> task id, fixed at dispatch
        self.base_version = base_version
        self.weighting = weighting
        # a member's public (1 + tau_i)^-a when cohorts form at arrival (its base version
        # against the fill's); a member not named here has weight 1
        self.staleness_weights = weights
        self.opened_at = opened_at
        self.deadline = deadline
        self.timeout_for = timeout_for  # uplink phase value -> seconds it waits
        # Once the threshold's masked inputs are in, the phase waits this fraction of
        # the time they took for the members still training, then closes without
        # them (None: it waits for every live member or its deadline). Not saved: a
        # restored fill asks its members again and sets it when they have answered.
        self.straggler_grace = straggler_grace
        self.early_deadline: float | None = None
        self.server = SecAggServer(config=config, session=session, identity_keys=identity_keys)
        self.identity_evidence = identity_evidence
        # Where identity keys come from when none were bound at construction (a fill
        # restored before the service attached its enrolled-key lookup): bound at the
        # first advertisement or timer after they appear, see _bind_late_keys.
        self._keys_source = identity_keys_source
        self._evidence: dict[str, bytes] = {}  # member -> its roster evidence (not saved)
        self.live: set[str] = set(members)
        self.dropped: dict[str, SecAggPhase] = {}  # device -> the phase it was dropped in
        self.answered: set[str] = set()
        self.refused = 0  # messages refused (late, out of phase, malformed)
        self.resend = False  # after a restore: re-send the open phase's request
        self.closed = False
        self._masked_sum: np.ndarray | None = None
        self._masked_digests: dict[str, bytes] = {}

    # -- facts -------------------------------------------------------------------------
    @property
    def threshold(self) -> int:
        return self.config.threshold

    @property
    def phase(self) -> SecAggPhase:
        """The uplink phase the fill is collecting."""
        return _UPLINK_OF_STAGE[self.server.stage]

    @property
    def training(self) -> int:
        """Live members still to send their masked input (members train until they
        mask, so these are the fill's devices at work; the others wait for unmask)."""
        if self.closed:
            return 0
        reached = _UPLINK_ORDER.index(self.phase) - _UPLINK_ORDER.index(SecAggPhase.MASKED_INPUT)
        if reached > 0:
            return 0
        if reached == 0:
            return len(self.live - self.answered)
        return len(self.live)

    def task_ids(self) -> tuple[str, ...]:
        return tuple(self.members[d] for d in self.session.cohort)

    def _counted(self) -> set[str]:
        """Members who still count towards the threshold in this phase. In the unmask
        phase a survivor's input is in the sum even if it falls silent, and an answer
        given before its task failed still counts."""
        if self.phase is SecAggPhase.UNMASK_RESPONSE:
            return self.live | self.answered
        return self.live

    def _details(self, **more: Any) -> dict[str, Any]:
        return {"fill_id": self.fill_id, "threshold": self.threshold, **more}

    # -- messages in -------------------------------------------------------------------
    def receive(
        self, *, device_id: str, phase: SecAggPhase | str, message: object, now: float
    ) -> FillEffects:
        effects = FillEffects()
        phase = SecAggPhase(phase)  # a plain str of a phase's value is accepted too
        if device_id in self.dropped:
            self._refuse(effects, device_id, phase, "declared_dropped", now=now)
            return effects
        if device_id not in self.live:
            self._refuse(effects, device_id, phase, "not_a_member", now=now)
            return effects
        current = self.phase
        if phase is not current:
            if phase in _UPLINK_ORDER and _UPLINK_ORDER.index(phase) < _UPLINK_ORDER.index(current):
                return effects  # an at-least-once re-delivery of an answer already counted
            self._refuse(effects, device_id, phase, "wrong_phase", now=now)
            return effects
        if not isinstance(message, _MESSAGE_TYPE[phase]) or _sender(message) != device_id:
            self._refuse(effects, device_id, phase, "malformed", now=now)
            return effects
        if not self._bind_late_keys(effects):
            return effects
        try:
            if phase is SecAggPhase.MASKED_INPUT:
                if not self._add_masked(device_id, cast(MaskedInput, message)):
                    return effects  # the same input again
            elif phase is SecAggPhase.ADVERTISE:
                self.server.receive_advertisement(cast(KeyAdvertisement, message))
            elif phase is SecAggPhase.SHARES:
                self.server.receive_share_bundle(cast(ShareBundle, message))
            else:
                self.server.receive_unmask_response(cast(UnmaskResponse, message))
        except SecAggError as exc:  # the server is unchanged; the member may still answer well
            self._refuse(effects, device_id, phase, "protocol_violation", now=now, detail=str(exc))
            return effects
        self.answered.add(device_id)
        if phase is SecAggPhase.MASKED_INPUT:
            effects.timed.append((device_id, max(0.0, now - self.opened_at), False))
            self._maybe_close_early(now)
        if self._counted() <= self.answered:
            self._close(effects, now=now, timed_out=False)
        return effects

    def _maybe_close_early(self, now: float) -> None:
        """Set the early deadline when the threshold's masked inputs are in."""
        grace = self.straggler_grace
        if grace is None or self.early_deadline is not None:
            return
        if len(self.answered & self._counted()) >= self.threshold:
            took = max(0.0, now - self.opened_at)
            self.early_deadline = min(self.deadline, now + grace * took)

    def next_deadline(self) -> float:
        """When this fill's timer next needs a tick (its early deadline or the phase's)."""
        if self.early_deadline is not None:
            return min(self.deadline, self.early_deadline)
        return self.deadline

    def _add_masked(self, device_id: str, msg: MaskedInput) -> bool:
        """Add ``msg`` to the running masked sum (checked as the server would); False
        for a re-delivery of the same input; ProtocolViolation for a different one."""
        ses, cfg = self.session, self.config
        if msg.session_id != ses.session_id or msg.round_index != ses.round_index:
            raise ProtocolViolation("masked input for another session")
        digest = hashlib.sha256(msg.data if isinstance(msg.data, bytes) else b"").digest()
        if device_id in self._masked_digests:
            if self._masked_digests[device_id] != digest:
                raise ProtocolViolation(f"{device_id!r} sent two different masked inputs")
            return False
        words = words_from_bytes(
            msg.data, modulus_bits=cfg.modulus_bits, n_words=ses.total_words(cfg)
        )
        self._masked_sum = (
            words
            if self._masked_sum is None
            else mod_add(self._masked_sum, words, modulus_bits=cfg.modulus_bits)
        )
        self._masked_digests[device_id] = digest
        return True

    def _refuse(
        self,
        effects: FillEffects,
        device_id: str,
        phase: SecAggPhase,
        reason: str,
        *,
        now: float,
        detail: str = "",
    ) -> None:
        del now
        self.refused += 1
        details = self._details(
            device_id=device_id,
            task_id=self.members.get(device_id, ""),
            phase=phase.value,
            open_phase=self.phase.value if not self.closed else "closed",
            reason=reason,
        )
        if device_id in self.dropped:
            details["dropped_in"] = self.dropped[device_id].value
        if detail:
            details["detail"] = detail[:200]
        effects.events.append((FillEvent.REFUSED, details))

    # -- the timer and outside failures ----------------------------------------------
    def tick(self, *, now: float) -> FillEffects:
        effects = FillEffects()
        if self.closed:
            return effects
        if now >= self.deadline:  # a restored fill past its deadline closes, asks nobody again
            self.resend = False
            self._close(effects, now=now, timed_out=True)
            return effects
        if not self._bind_late_keys(effects):
            return effects
        if self.resend:
            self.resend = False
            self._resend(effects)
        early = self.early_deadline
        if self._counted() <= self.answered or (early is not None and now >= early):
            self._close(effects, now=now, timed_out=False)
        return effects

    def _bind_late_keys(self, effects: FillEffects) -> bool:
        """Bind identity keys that appeared after this fill was built (False: it aborted).

        A fill restored before the service attached its enrolled-key lookup was
        built without keys; it must not accept, or close over, an advertisement
        it has not checked. Keys are bound while advertisements are collected,
        after checking every one already held; one that fails aborts the fill.
        """
        source = self._keys_source
        if source is None or self.server.checks_identities:
            return True
        if self.server.stage is not ServerStage.COLLECTING_ADVERTISEMENTS:
            return True  # past advertising: every advertisement was checked before saving
        hook = source()
        if hook is None:
            return True
        try:
            keys = _keys_for(self.session.cohort, hook)
            if keys is not None:
                self.server.bind_identity_keys(keys)
        except (SecAggError, ValueError) as exc:
            self._abort(effects, reason="unchecked_advertisement", detail=str(exc))
            return False
        return True

    def member_failed(self, device_id: str, *, reason: str) -> FillEffects:
        """The member's task failed outside the fill (deadline, refusal, revocation)."""
        effects = FillEffects()
        if self.closed or device_id not in self.live:
            return effects
        self.live.discard(device_id)
        self.dropped[device_id] = self.phase
        effects.outbound.append(self._abort_message(device_id))
        if len(self._counted()) < self.threshold:
            self._abort(effects, reason=f"member_failed:{reason}"[:64])
        return effects

    # -- phase transitions ---------------------------------------------------------
    def _close(self, effects: FillEffects, *, now: float, timed_out: bool) -> None:
        phase = self.phase
        arrived = sorted(self.answered & self._counted())
        missing = sorted(self.live - self.answered)
        if phase is not SecAggPhase.UNMASK_RESPONSE:
            for device in missing:  # silent through the phase: out of the fill
                self._drop(effects, device, phase)
                if phase is SecAggPhase.MASKED_INPUT:  # still training: at least this slow
                    effects.timed.append((device, max(0.0, now - self.opened_at), True))
        if len(arrived) < self.threshold:
            self._abort(
                effects,
                reason=f"too_few_{phase.value}",
                arrived=arrived,
                missing=missing,
                timed_out=timed_out,
            )
            return
        try:
            outbound, finished = self._advance(phase)
        except SecAggError as exc:  # fewer than t, a range check, a bad reconstruction
            self._abort(effects, reason=f"{type(exc).__name__}:{phase.value}", detail=str(exc))
            return
        effects.events.append(
            (
                FillEvent.PHASE,
                self._details(
                    phase=phase.value,
                    next_phase=("finalized" if finished is not None else self.phase.value),
                    arrived=arrived,
                    missing=missing,
                    live=len(self.live),
                    timed_out=timed_out,
                ),
            )
        )
        effects.outbound.extend(outbound)
        self.answered = set()
        self.early_deadline = None
        if finished is None:
            self.deadline = now + self.timeout_for(self.phase.value)
        else:
            self.closed = True
            effects.finished.append(FinishedFill(fill=self, result=finished))

    def _advance(self, phase: SecAggPhase) -> tuple[list[FillOutbound], AggregateResult | None]:
        """Close ``phase`` on the server; the next phase's messages (or the sums)."""
        if phase is SecAggPhase.ADVERTISE:
            roster = self._with_evidence(self.server.close_advertisements())
            return [self._out(d, SecAggPhase.ROSTER, roster) for d in self._ordered()], None
        if phase is SecAggPhase.SHARES:
            deliveries = self.server.close_shares()
            return [
                self._out(d, SecAggPhase.DELIVERY, deliveries[d]) for d in self._ordered()
            ], None
        if phase is SecAggPhase.MASKED_INPUT:
            self._hand_sum_to_server()
            request = self.server.close_masked_inputs()
            return [
                self._out(d, SecAggPhase.UNMASK_REQUEST, request) for d in request.survivors
            ], None
        return [], self.server.finalize()

    def _with_evidence(self, roster: KeyRoster) -> KeyRoster:
        """``roster`` with each advertiser's identity evidence (as is without a hook).

        Built once per member and kept for re-sends; a restored fill builds it
        again (the device ignores evidence when it re-sends an answer it gave)."""
        hook = self.identity_evidence
        if hook is None:
            return roster
        evidence = []
        for adv in roster.advertisements:
            if adv.device_id not in self._evidence:
                item = hook(adv.device_id)
                if item is None:  # no evidence source (yet): the roster goes without
                    return roster
                self._evidence[adv.device_id] = bytes(item)
            evidence.append(self._evidence[adv.device_id])
        return dataclasses.replace(roster, evidence=tuple(evidence))

    def _hand_sum_to_server(self) -> None:
        """The running sum as the first sender's input, zeros as the others': the
        server's total is the same and it never holds one device's vector."""
        senders = sorted(self.answered)
        if not senders or self._masked_sum is None:
            return
        ses, cfg = self.session, self.config
        zeros = words_to_bytes(
            np.zeros(ses.total_words(cfg), dtype=cfg.dtype), modulus_bits=cfg.modulus_bits
        )
        total = words_to_bytes(self._masked_sum, modulus_bits=cfg.modulus_bits)
        for index, device in enumerate(senders):
            self.server.receive_masked_input(
                MaskedInput(
                    session_id=ses.session_id,
                    round_index=ses.round_index,
                    device_id=device,
                    data=total if index == 0 else zeros,
                )
            )
        self._masked_sum, self._masked_digests = None, {}

    def _resend(self, effects: FillEffects) -> None:
        """Re-send the open phase's request to every live member that has not answered."""
        phase = self.phase
        waiting = [d for d in self._ordered() if d not in self.answered]
        if phase is SecAggPhase.SHARES:
            roster = self._with_evidence(self.server.roster())
            effects.outbound.extend(self._out(d, SecAggPhase.ROSTER, roster) for d in waiting)
        elif phase is SecAggPhase.MASKED_INPUT:
            deliveries = self.server.deliveries()
            effects.outbound.extend(
                self._out(d, SecAggPhase.DELIVERY, deliveries[d])
                for d in waiting
                if d in deliveries
            )
        elif phase is SecAggPhase.UNMASK_RESPONSE:
            request = self.server.unmask_request()
            effects.outbound.extend(
                self._out(d, SecAggPhase.UNMASK_REQUEST, request)
                for d in waiting
                if d in request.survivors
            )

    def _drop(self, effects: FillEffects, device: str, phase: SecAggPhase) -> None:
        self.live.discard(device)
        self.dropped[device] = phase
        effects.failed.append((self.members[device], f"secagg_dropped:{phase.value}"))
        effects.outbound.append(self._abort_message(device))

    def abort(self, *, reason: str) -> FillEffects:
        effects = FillEffects()
        if not self.closed:
            self._abort(effects, reason=reason)
        return effects

    def _abort(
        self,
        effects: FillEffects,
        *,
        reason: str,
        arrived: Sequence[str] = (),
        missing: Sequence[str] = (),
        timed_out: bool = False,
        detail: str = "",
    ) -> None:
        phase = self.phase
        self.server.abort()
        self._masked_sum, self._masked_digests = None, {}
        survivors = sorted(self.live)
        for device in survivors:
            effects.failed.append((self.members[device], f"secagg_aborted:{reason}"[:200]))
            effects.outbound.append(self._abort_message(device))
        details = self._details(
            phase=phase.value,
            reason=reason,
            arrived=list(arrived),
            missing=list(missing),
            survivors=survivors,
            dropouts=sorted(self.dropped),
            timed_out=timed_out,
        )
        if detail:
            details["detail"] = detail[:200]
        effects.events.append((FillEvent.ABORTED, details))
        effects.aborted.append(self.fill_id)
        self.live = set()
        self.closed = True

    def _ordered(self) -> list[str]:
        return [d for d in self.session.cohort if d in self.live]

    def _out(self, device: str, phase: SecAggPhase, message: object) -> FillOutbound:
        return FillOutbound(device, self.members[device], self.fill_id, phase, message)

    def _abort_message(self, device: str) -> FillOutbound:
        return self._out(device, SecAggPhase.ABORT, None)

    # -- saved state ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-ready; in the MASKED_INPUT phase who answered is not saved (nor any
        masked word): a restored fill asks its live members again."""
        masked_phase = self.phase is SecAggPhase.MASKED_INPUT
        return {
            "fill_id": self.fill_id,
            "threshold": self.threshold,
            "session": self.session.to_plain(),
            "subset_names": list(self.subset.names),
            "subset_tier": self.subset.tier,
            "ladder_version": self.subset.ladder_version,
            "members": dict(self.members),
            "base_version": self.base_version,
            "weighting": self.weighting.to_plain(),
            "staleness_weights": dict(sorted(self.staleness_weights.items())),
            "opened_at": self.opened_at,
            "deadline": self.deadline,
            "live": sorted(self.live),
            "dropped": {d: p.value for d, p in sorted(self.dropped.items())},
            "answered": [] if masked_phase else sorted(self.answered),
            "refused": self.refused,
            "server": plain.to_json(self.server.state_dict()),
        }

    @classmethod
    def from_state(
        cls,
        saved: Mapping[str, Any],
        *,
        policy: SecAggPolicy,
        model_shapes: Mapping[str, tuple[int, ...]],
        identity_keys: IdentityKeys | None,
        identity_evidence: IdentityEvidence | None = None,
        identity_keys_source: Callable[[], IdentityKeys | None] | None = None,
    ) -> Fill:
        """A fill restored from :meth:`state_dict` (StateLoadError for anything else)."""
        try:
            session = SecAggSession.from_plain(saved["session"])
            subset = SubsetSpec(
                names=tuple(str(n) for n in saved["subset_names"]),
                tier=int(saved["subset_tier"]),
                ladder_version=int(saved["ladder_version"]),
            )
            layout = VectorLayout.for_subset(model_shapes, subset.names)
            members = {str(d): str(t) for d, t in saved["members"].items()}
            fill = cls(
                fill_id=str(saved["fill_id"]),
                config=policy.config(threshold=int(saved["threshold"])),
                session=session,
                layout=layout,
                subset=subset,
                members=members,
                base_version=int(saved["base_version"]),
                weighting=FillWeighting.from_plain(saved["weighting"]),
                opened_at=float(saved["opened_at"]),
                deadline=float(saved["deadline"]),
                timeout_for=policy.timeout_for,
                identity_keys=_keys_for(session.cohort, identity_keys),
                identity_evidence=identity_evidence,
                identity_keys_source=identity_keys_source,
                straggler_grace=policy.fill_straggler_grace,
                staleness_weights={
                    str(d): float(w) for d, w in saved.get("staleness_weights", {}).items()
                },
            )
            fill.server.load_state_dict(plain.from_json(saved["server"]))
            live = {str(d) for d in saved["live"]}
            dropped = {str(d): SecAggPhase(p) for d, p in saved["dropped"].items()}
            answered = {str(d) for d in saved["answered"]}
        except StateLoadError:
            raise
        except (SecAggError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateLoadError(f"a saved fill is malformed: {exc!r}") from exc
        if fill.server.stage not in _UPLINK_OF_STAGE:
            raise StateLoadError(f"fill {fill.fill_id} was saved {fill.server.stage.name}")
        if live & set(dropped) or not live | set(dropped) <= set(members):
            raise StateLoadError(f"fill {fill.fill_id}: live and dropped members disagree")
        if not answered <= set(members):
            raise StateLoadError(f"fill {fill.fill_id}: an answer from outside the cohort")
        if layout.digest != session.index_set_digest:
            raise StateLoadError(f"fill {fill.fill_id}: the index set is not its subset's")
        fill.live, fill.dropped, fill.answered = live, dropped, answered
        fill.refused = int(saved["refused"])
        fill.resend = True
        return fill


def _keys_for(cohort: Sequence[str], identity_keys: IdentityKeys | None) -> dict[str, Any] | None:
    if identity_keys is None:
        return None
    keys = {d: identity_keys(d) for d in cohort}
    if missing := [d for d, k in keys.items() if k is None]:
        raise ValueError(f"no identity key for cohort members {missing[:5]}")
    return keys
