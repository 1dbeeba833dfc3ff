"""Secure aggregation in the simulator: real SecAgg clients, the engine's fills, virtual time.

Rows ``ftte+secagg`` and ``ftte+secagg+ddp`` run every buffer fill as one real
SecAgg instance: the coordinator's ``Engine`` (with a ``SecAggPolicy``)
dispatches a cohort, each member is a real ``fedward.privacy.secagg.SecAggClient``
(one ``SessionJournal`` per device, shared by its sessions), every phase message
is encoded as the real frame that would travel (``SecAggMessage`` header, the
``fedward.privacy.secagg.wire`` body, the masked words as binary, b bits each) and decoded
again before the engine sees it. Only time is simulated:

- each message costs its one-way link time: half the class's round trip plus
  its bytes over the uplink (device to coordinator) or downlink (coordinator
  to device), scaled by the device's straggler slowdown. The task itself is
  downloaded as in the plaintext rows (``SimDevice.download_s``);
- masking costs the device its PRG work: ``(peers + 1) * words`` mask words
  plus one rounding uniform per coordinate, at this machine's ChaCha20 rate
  measured once per run (:class:`PrgCalibration`), scaled by how much slower the
  device class computes than this machine (its FLOP/s against this machine's
  measured single-thread FLOP/s) and by its straggler slowdown. Key agreement,
  Shamir and AEAD work is not charged (microseconds per peer here);
- a device that drops out goes silent at a time drawn as in the plaintext rows
  and sends nothing from then on: it drops at the phase it was in. The engine's
  per-phase timers (``Engine.secagg_tick``) declare it dropped; a straggler that
  misses a phase's timer is refused when it arrives late, as live.

The device derives its own weight from the public numbers in its task (FTTE's
energy damping against ``weighting.energy_reference``, L2 clipping to
``weighting.norm_bound``) and reports its log-energy only as a masked one-hot
histogram over ``energy_bins``; under distributed DP it clips, rotates and adds
its Skellam share (``fedward.privacy.secagg.ddp``) with weight 1.
"""

from __future__ import annotations

import enum
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from fedward.edge.secagg import SecAggParticipant, SecAggRefused
from fedward.edge.secagg_store import SecAggStore
from fedward.privacy.secagg import (
    KeyRoster,
    MaskedInput,
    SecAggConfig,
    SecAggError,
    SecAggSession,
    SessionJournal,
    ShareDelivery,
    UnmaskRequest,
)
from fedward.privacy.secagg.prg import chacha20_stream, keystream_word_bytes
from fedward.privacy.secagg.wire import decode_message, encode_message
from fedward.protocol.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    SecAggMessage,
    SecAggPhase,
    Task,
    decode_frame,
    encode_frame,
    frame_size,
    secagg_body,
    secagg_frame_tensors,
    secagg_words_data,
    secagg_words_tensor,
)
from fedward.tinytrain.costs import measure_machine_flops

from .profiles import SimDevice

#: What the device answers to each downlink phase.
_ANSWERS = {
    SecAggPhase.ROSTER: SecAggPhase.SHARES,
    SecAggPhase.DELIVERY: SecAggPhase.MASKED_INPUT,
    SecAggPhase.UNMASK_REQUEST: SecAggPhase.UNMASK_RESPONSE,
}


# -- ablations (simulator only: bounds, not settings a deployment could choose) ------


class SpeedPrior(enum.StrEnum):
    """What the coordinator knows of a device's speed before its first task.

    ``MEASURED`` (every row of the benchmark): nothing; it learns a device's task time
    from the tasks it finishes (``Device.task_seconds``), so first tasks are grouped by
    class only. ``ORACLE`` is an ablation: every device's modelled plain-task time (its
    subset's float32 bytes down and up, its training FLOPs, its straggler slowdown) is
    its ``task_seconds`` before it starts, as an exact speed hint at enrolment would be.
    It bounds what better speed prediction could buy the cohorts; not a setting.
    """

    MEASURED = "measured"
    ORACLE = "oracle"


class PhaseCost(enum.StrEnum):
    """What the protocol's own messages and masking cost in virtual time.

    ``MODELLED`` (every row of the benchmark): each phase frame its link time, masking
    its PRG work. ``FREE`` is an ablation that bounds what any protocol speed-up could
    buy while the cohort rules stay (fixed at dispatch, a threshold, a grace, one fill
    per device): keys are exchanged at dispatch (as if carried by the task and its
    acknowledgement), masking and every phase frame but the masked input take no time,
    and the masked input costs half a round trip plus its bytes, less than a plain
    upload's full round trip. It simulates no deployable setting.
    """

    MODELLED = "modelled"
    FREE = "free"


# -- what masking costs a device -------------------------------------------------


NOMINAL_FLOPS_PER_S = 5e10  # the server of a fixed calibration (this machine: 3.5-6.7e10)


@dataclass(frozen=True, kw_only=True)
class PrgCalibration:
    """This machine's ChaCha20 keystream rate and single-thread FLOP/s, measured once.

    A device's PRG time is this machine's time for the same keystream, times
    ``machine_flops_per_s / class flops_per_s`` (the class computes that much
    slower than this machine), times its straggler slowdown.
    """

    chacha_bytes_per_s: float
    machine_flops_per_s: float

    @classmethod
    def measure(cls, *, seconds: float = 0.2) -> PrgCalibration:
        key, nonce = os.urandom(32), bytes(12)
        words, spent, done = 1 << 18, 0.0, 0
        while spent < seconds:
            started = time.perf_counter()
            chacha20_stream(key, nonce, words, modulus_bits=32)
            spent += time.perf_counter() - started
            done += 4 * words
        return cls(
            chacha_bytes_per_s=done / spent,
            machine_flops_per_s=measure_machine_flops(seconds=seconds),
        )

    @classmethod
    def fixed(cls, *, bytes_per_flop: float) -> PrgCalibration:
        """A calibration from a fixed keystream cost (bytes of ChaCha20 per FLOP of
        compute), so a seed gives the same study on every run and machine: a measured
        one varies by about 10% with load, and a different masking time reorders the
        simulator's events (measured: the same seed's ``ftte+secagg`` row ended 0.907
        to 0.930 across runs). The server's time uses a nominal machine of
        ``NOMINAL_FLOPS_PER_S``."""
        if not math.isfinite(bytes_per_flop) or bytes_per_flop <= 0:
            raise ValueError(f"bytes_per_flop must be a finite number > 0, got {bytes_per_flop!r}")
        return cls(
            chacha_bytes_per_s=bytes_per_flop * NOMINAL_FLOPS_PER_S,
            machine_flops_per_s=NOMINAL_FLOPS_PER_S,
        )

    def device_s(self, device: SimDevice, prg_bytes: int) -> float:
        here = prg_bytes / self.chacha_bytes_per_s
        return here * (self.machine_flops_per_s / device.profile.flops_per_s) * device.slowdown

    def server_s(self, prg_bytes: int) -> float:
        """The coordinator runs on a machine like this one."""
        return prg_bytes / self.chacha_bytes_per_s

    def as_dict(self) -> dict[str, float]:
        return {
            "chacha_bytes_per_s": self.chacha_bytes_per_s,
            "machine_flops_per_s": self.machine_flops_per_s,
        }


def masking_prg_bytes(*, peers: int, total_words: int, vector_length: int, word_bytes: int) -> int:
    """Keystream a device draws to mask: its self mask, one stream per peer, rounding uniforms.

    ``word_bytes``: keystream bytes per masked word (``prg.keystream_word_bytes``: 4
    for b <= 32, 8 above; a b-bit word is the low b bits of one keystream word, so
    the PRG work does not shrink with b, only the bytes on the wire do).
    """
    return (peers + 1) * total_words * word_bytes + 4 * vector_length


def unmasking_prg_bytes(*, survivors: int, dropped: int, total_words: int, word_bytes: int) -> int:
    """Keystream the server draws: each survivor's self mask, each dropped device's pair masks
    (``word_bytes`` as in :func:`masking_prg_bytes`)."""
    return (survivors + dropped * survivors) * total_words * word_bytes


def one_way_up_s(device: SimDevice, nbytes: int) -> float:
    return device.profile.rtt_s / 2 + nbytes * device.slowdown / device.profile.uplink_bps


def one_way_down_s(device: SimDevice, nbytes: int) -> float:
    return device.profile.rtt_s / 2 + nbytes * device.slowdown / device.profile.downlink_bps


# -- frames on the wire -------------------------------------------------------------


def phase_frame(
    *,
    study_id: str,
    device_id: str,
    task_id: str,
    fill_id: str,
    phase: SecAggPhase,
    message: object | None,
    modulus_bits: int = 32,
) -> bytes:
    """The frame one phase message travels in (what its bytes are counted from)."""
    header = SecAggMessage(
        study_id=study_id, device_id=device_id, task_id=task_id, fill_id=fill_id, phase=phase
    )
    if phase is SecAggPhase.MASKED_INPUT:
        if not isinstance(message, MaskedInput):
            raise TypeError("a MASKED_INPUT frame carries a MaskedInput")
        words = secagg_words_tensor(message.data, modulus_bits=modulus_bits)
        tensors = secagg_frame_tensors(phase, words=words)
    elif phase is SecAggPhase.ABORT:
        tensors = {}
    else:
        tensors = secagg_frame_tensors(phase, body=encode_message(message))
    return encode_frame(header, tensors or None, max_bytes=DEFAULT_MAX_MESSAGE_BYTES)


_BODY_TYPES: dict[SecAggPhase, type] = {}


def _body_types() -> dict[SecAggPhase, type]:
    if not _BODY_TYPES:
        from fedward.privacy.secagg import (
            KeyAdvertisement,
            ShareBundle,
            UnmaskResponse,
        )

        _BODY_TYPES.update(
            {
                SecAggPhase.ADVERTISE: KeyAdvertisement,
                SecAggPhase.ROSTER: KeyRoster,
                SecAggPhase.SHARES: ShareBundle,
                SecAggPhase.DELIVERY: ShareDelivery,
                SecAggPhase.UNMASK_REQUEST: UnmaskRequest,
                SecAggPhase.UNMASK_RESPONSE: UnmaskResponse,
            }
        )
    return _BODY_TYPES


def read_frame(
    frame: bytes, *, session: SecAggSession, modulus_bits: int = 32
) -> tuple[SecAggMessage, object | None]:
    """Decode a phase frame back into its header and privacy message (as the receiver does:
    the masked words read at the fill's ``modulus_bits``)."""
    header, tensors = decode_frame(frame, max_bytes=DEFAULT_MAX_MESSAGE_BYTES)
    if not isinstance(header, SecAggMessage):
        raise TypeError("not a SecAggMessage frame")
    if header.phase is SecAggPhase.ABORT:
        return header, None
    if header.phase is SecAggPhase.MASKED_INPUT:
        return header, MaskedInput(
            session_id=session.session_id,
            round_index=session.round_index,
            device_id=header.device_id,
            data=secagg_words_data(tensors, modulus_bits=modulus_bits),
        )
    return header, decode_message(secagg_body(tensors), _body_types()[header.phase])


# -- the device side -----------------------------------------------------------------


class MemoryStore:
    """A device's SecAgg store kept in memory: the simulator simulates no device crash.

    Duck-types ``fedward.edge.secagg_store.SecAggStore`` for ``SecAggParticipant``
    (its ``journal``, ``save_state``, ``load_state``): the journal rules (a session
    id used once, one-shot steps) hold as on a device; only the fsync is skipped.
    """

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.journal = SessionJournal(device_id=device_id)
        self._states: dict[bytes, Mapping[str, Any]] = {}

    def save_state(self, session_id: bytes, state: Mapping[str, Any], *, stage: str) -> None:
        del stage
        self._states[session_id] = state

    def load_state(self, session_id: bytes) -> dict[str, Any] | None:
        state = self._states.get(session_id)
        return dict(state) if state is not None else None

    def discard(self, session_id: bytes) -> None:
        """Drop a finished session's saved state (the journal keeps the session id)."""
        self._states.pop(session_id, None)


@dataclass
class Member:
    """One device's part in one fill, in the simulator (its real ``SecAggParticipant``)."""

    task_id: str
    device: SimDevice
    fill_id: str
    participant: SecAggParticipant
    silent_at: float | None  # goes silent from then on (None: stays)
    trained: bool = False
    delivered: bool = False
    masked: bool = False
    done: bool = False
    peers: int = 0  # members whose shares the delivery carried (its pairwise masks)
    sent_bytes: int = 0
    received_bytes: int = 0
    dropped_at: SecAggPhase | None = None
    # virtual times: its task left the coordinator / its training ended / its masked
    # input reached the coordinator (where a member's slot goes: FillCosts.slot_times)
    dispatched_at: float = 0.0
    trained_at: float | None = None
    delivered_at: float | None = None  # its share delivery (it masks only once it has both)
    input_at: float | None = None

    @property
    def session(self) -> SecAggSession:
        return self.participant.session

    @property
    def config(self) -> SecAggConfig:
        return self.participant.config

    def silent(self, at: float) -> bool:
        return self.silent_at is not None and at >= self.silent_at


def new_member(
    *,
    task: Task,
    device: SimDevice,
    shapes: Mapping[str, tuple[int, ...]],
    store: MemoryStore,
    silent_at: float | None,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> Member:
    """A fill member for ``task``; SecAggRefused if the task fails the device's own floors."""
    participant = SecAggParticipant.for_task(
        task,
        model_shapes=shapes,
        store=cast(SecAggStore, store),
        random_bytes=random_bytes,
    )
    return Member(
        task_id=task.task_id,
        device=device,
        fill_id=participant.fill_id,
        participant=participant,
        silent_at=silent_at,
    )


@dataclass
class FillCosts:
    """What the secagg rows add, totalled over a study (the report's ``secagg`` figures)."""

    bytes_up_by_phase: dict[str, int] = field(default_factory=dict)
    bytes_down_by_phase: dict[str, int] = field(default_factory=dict)
    messages_by_phase: dict[str, int] = field(default_factory=dict)
    dropped_by_phase: dict[str, int] = field(default_factory=dict)
    device_prg_s: list[float] = field(default_factory=list)
    server_prg_s: float = 0.0
    fills_merged: int = 0
    fills_aborted: int = 0
    cohort_sizes: list[int] = field(default_factory=list)
    survivors: list[int] = field(default_factory=list)
    late_refused: int = 0
    refused: int = 0  # a device's own checks refused the fill (or a step of it)
    # ARRIVAL: "trained" frames (device to coordinator) and the re-sent tasks naming a fill
    ready_frames: int = 0
    ready_bytes: int = 0
    invite_bytes: int = 0
    # per member of a merged fill, virtual seconds from its task's dispatch to its
    # training's end, to its masked input's arrival, and to the fill's merge: how much of
    # the slot a fill holds goes to training, and how much to masking, upload and waiting
    trained_s: list[float] = field(default_factory=list)
    input_s: list[float] = field(default_factory=list)
    delivery_wait_s: list[float] = field(default_factory=list)  # trained, shares not yet in
    slot_s: list[float] = field(default_factory=list)
    fill_s: list[float] = field(default_factory=list)  # first dispatch to merge, per fill

    def slot_times(self) -> dict[str, float | None]:
        """Medians of the per-member times above and the shares of all merged members'
        slot-seconds spent up to the end of training, up to the masked input, and trained
        but waiting for the share delivery (the cohort's slowest key exchange)."""
        if not self.slot_s:
            return {
                "member_slot_s_median": None,
                "member_trained_s_median": None,
                "member_input_s_median": None,
                "slot_share_training": None,
                "slot_share_to_input": None,
                "slot_share_delivery_wait": None,
                "fill_s_median": None,
            }
        total = float(np.sum(self.slot_s))
        return {
            "member_slot_s_median": float(np.median(self.slot_s)),
            "member_trained_s_median": float(np.median(self.trained_s)),
            "member_input_s_median": float(np.median(self.input_s)),
            "slot_share_training": float(np.sum(self.trained_s)) / total if total else None,
            "slot_share_to_input": float(np.sum(self.input_s)) / total if total else None,
            "slot_share_delivery_wait": (
                float(np.sum(self.delivery_wait_s)) / total if total else None
            ),
            "fill_s_median": float(np.median(self.fill_s)) if self.fill_s else None,
        }

    def count(self, phase: SecAggPhase, nbytes: int) -> None:
        table = self.bytes_up_by_phase if phase.uplink else self.bytes_down_by_phase
        table[phase.value] = table.get(phase.value, 0) + nbytes
        self.messages_by_phase[phase.value] = self.messages_by_phase.get(phase.value, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        prg = self.device_prg_s
        return {
            "bytes_up_by_phase": dict(self.bytes_up_by_phase),
            "bytes_down_by_phase": dict(self.bytes_down_by_phase),
            "messages_by_phase": dict(self.messages_by_phase),
            "dropped_by_phase": dict(self.dropped_by_phase),
            "device_prg_s_median": float(np.median(prg)) if prg else None,
            "device_prg_s_max": max(prg) if prg else None,
            "server_prg_s": self.server_prg_s,
            "fills_merged": self.fills_merged,
            "fills_aborted": self.fills_aborted,
            "cohort_mean": float(np.mean(self.cohort_sizes)) if self.cohort_sizes else None,
            "survivors_mean": float(np.mean(self.survivors)) if self.survivors else None,
            "late_refused": self.late_refused,
            "device_refused": self.refused,
            "ready_frames": self.ready_frames,
            "ready_bytes": self.ready_bytes,
            "invite_bytes": self.invite_bytes,
            **self.slot_times(),
        }


# -- the fills in virtual time -------------------------------------------------------

Push = Callable[[float, str, Any], None]  # (virtual time, event kind, payload)


class FillSimulator:
    """Drives the engine's fills and the members' real SecAgg participants in virtual time.

    The study owns the clock (its event heap): this object schedules through
    ``push`` and handles the events it scheduled (``handle``). Event kinds:
    ``sa_recv`` (a task reaches its device), ``sa_trained`` (its training
    ends), ``sa_up`` / ``sa_down`` (a phase frame reaches the coordinator /
    the device), ``sa_tick`` (a phase timer may have fired) and, with cohorts
    bound at arrival, ``sa_ready`` (a device's "trained" reaches the
    coordinator; :meth:`train_first`). A fill the engine opens from ready devices
    sends each member its task again with the fill in it (``FillStep.invited``);
    the member then runs the phases as one whose training is already done.
    """

    KINDS = frozenset({"sa_recv", "sa_trained", "sa_up", "sa_down", "sa_tick", "sa_ready"})

    def __init__(
        self,
        *,
        engine: Any,
        study_id: str,
        shapes: Mapping[str, tuple[int, ...]],
        by_id: Mapping[str, SimDevice],
        calibration: PrgCalibration,
        push: Push,
        phase_timeout_s: float,
        random_bytes: Callable[[int], bytes] = os.urandom,
        task_for: Callable[[Any], Task] | None = None,
        phase_cost: PhaseCost = PhaseCost.MODELLED,
    ) -> None:
        self.engine, self.study_id, self.shapes, self.by_id = engine, study_id, shapes, by_id
        self.free = phase_cost is PhaseCost.FREE
        self.calibration, self.push, self.phase_timeout_s = calibration, push, phase_timeout_s
        self.random_bytes = random_bytes
        self.stores: dict[str, MemoryStore] = {}  # one per device, all its sessions
        self.members: dict[str, Member] = {}
        self.jobs: dict[str, Any] = {}  # task id -> executor handle (training in flight)
        self.costs = FillCosts()
        self.upload_bytes = 0
        self.download_bytes = 0
        self._ticks: set[float] = set()
        self._opened_at: dict[str, float] = {}  # fill id -> its first member's dispatch
        self.merges: list[Any] = []  # MergeResult of every fill merged, in order
        # ARRIVAL: the Task a member's engine order becomes once its fill opens
        self.task_for = task_for
        # ARRIVAL: task id -> (training job, when its device goes silent) until invited
        self.waiting: dict[str, tuple[Any, float | None]] = {}
        self.orphans: list[Any] = []  # jobs whose device went silent: drained at the end

    # -- dispatch ---------------------------------------------------------------
    def start(
        self,
        task: Task,
        *,
        now: float,
        download_s: float,
        compute_s: float,
        silent_at: float | None,
        submit: Callable[[], Any],
    ) -> bool:
        """A member's task leaves the coordinator at ``now``; it trains if it lives to mask.

        False: the device refused the fill (its own floors); it then stays silent and
        the engine's timer drops it, as a live device that refuses does.
        """
        device = self.by_id[task.device_id]
        store = self.stores.setdefault(device.device_id, MemoryStore(device.device_id))
        try:
            member = new_member(
                task=task,
                device=device,
                shapes=self.shapes,
                store=store,
                silent_at=silent_at,
                random_bytes=self.random_bytes,
            )
        except SecAggRefused:
            self.costs.refused += 1
            return False
        member.dispatched_at = now
        self.members[task.task_id] = member
        if member.fill_id not in self._opened_at:
            self._opened_at[member.fill_id] = now
            self.costs.cohort_sizes.append(member.session.n)
            self._tick_at(now + self.phase_timeout_s)
        received = now + download_s
        trained = received + compute_s
        # receipt first: it advertises, then takes the trained update (an invited member's
        # training is done already, compute_s == 0, and the heap breaks ties in push order);
        # FREE: it advertises at dispatch, so its key exchange waits for no one's download
        self.push(now if self.free else received, "sa_recv", task.task_id)
        if silent_at is None or silent_at > trained:  # else it never masks: no training
            self.jobs[task.task_id] = submit()
            self.push(trained, "sa_trained", task.task_id)
        return True

    def train_first(
        self,
        *,
        task_id: str,
        device_id: str,
        ready_at: float,
        ready_bytes: int,
        silent_at: float | None,
        job: Any,
    ) -> None:
        """ARRIVAL: a plain training task whose device says "trained" at ``ready_at``
        (a ``ready_bytes`` frame) and keeps its update for the fill it is invited to."""
        self.waiting[task_id] = (job, silent_at)
        self.upload_bytes += ready_bytes
        self.costs.ready_frames += 1
        self.costs.ready_bytes += ready_bytes
        self.push(ready_at, "sa_ready", (task_id, device_id))

    def _on_ready(self, payload: tuple[str, str], now: float) -> list[Any]:
        task_id, device_id = payload
        waiting = self.waiting.get(task_id)
        if waiting is None or (waiting[1] is not None and now >= waiting[1]):
            return []  # silent before it could say so: its task fails at the heartbeat
        try:
            step = self.engine.secagg_ready(task_id=task_id, device_id=device_id, now=now)
        except Exception as exc:  # its task failed meanwhile (e.g. its deadline)
            if not _is_refusal(exc):
                raise
            return []
        return self._apply(step, now)

    def _invite(self, order: Any, now: float) -> None:
        """Send an invited member its task with the fill in it; it has trained already."""
        if self.task_for is None:
            raise ValueError("cohorts bound at arrival need task_for")
        job, silent_at = self.waiting.pop(order.task_id)
        task = self.task_for(order)
        nbytes = frame_size(task)
        self.download_bytes += nbytes
        self.costs.invite_bytes += nbytes
        device = self.by_id[order.device_id]
        started = self.start(
            task,
            now=now,
            download_s=one_way_down_s(device, nbytes),
            compute_s=0.0,
            silent_at=silent_at,
            submit=lambda: job,
        )
        if not started or order.task_id not in self.jobs:
            self.orphans.append(job)  # refused, or silent before it could mask

    # -- events -----------------------------------------------------------------
    def handle(self, kind: str, payload: Any, now: float) -> list[Any]:
        """Handle one event; returns the MergeResults of the fills it merged."""
        if kind == "sa_recv":
            member = self.members.get(payload)
            if member is not None and not member.done:
                self._send(member, SecAggPhase.ADVERTISE, member.participant.advertise, now)
            return []
        if kind == "sa_trained":
            return self._on_trained(payload, now)
        if kind == "sa_ready":
            return self._on_ready(payload, now)
        if kind == "sa_down":
            self._on_down(payload, now)
            return []
        if kind == "sa_up":
            task_id, frame = payload
            return self._on_up(task_id, frame, now)
        if kind == "sa_tick":
            self._ticks.discard(now)
            return self._apply(self.engine.secagg_tick(now=now), now)
        raise ValueError(f"not a secagg event: {kind}")

    def _tick_at(self, at: float) -> None:
        at = float(at) + 1e-6  # just past the timer, so the engine sees it expired
        if at not in self._ticks:
            self._ticks.add(at)
            self.push(at, "sa_tick", None)

    def _send(
        self, member: Member, phase: SecAggPhase, build: Callable[[], object | None], at: float
    ) -> None:
        """The device sends ``phase`` at ``at`` unless it has gone silent by then."""
        if member.silent(at):
            self._went_silent(member, phase)
            return
        try:
            message = build()
        except (SecAggError, SecAggRefused):  # the device's own checks refuse: it gives up
            member.participant.on_abort()
            member.done = True
            self.costs.refused += 1
            return
        if message is None:
            return
        frame = phase_frame(
            study_id=self.study_id,
            device_id=member.device.device_id,
            task_id=member.task_id,
            fill_id=member.fill_id,
            phase=phase,
            message=message,
            modulus_bits=member.config.modulus_bits,
        )
        member.sent_bytes += len(frame)
        self.upload_bytes += len(frame)
        self.costs.count(phase, len(frame))
        link_s = one_way_up_s(member.device, len(frame))
        if self.free and phase is not SecAggPhase.MASKED_INPUT:
            link_s = 0.0
        self.push(at + link_s, "sa_up", (member.task_id, frame))

    def _went_silent(self, member: Member, phase: SecAggPhase) -> None:
        if member.dropped_at is None:
            member.dropped_at = phase
            key = phase.value
            self.costs.dropped_by_phase[key] = self.costs.dropped_by_phase.get(key, 0) + 1

    def _masking_s(self, member: Member, peers: int) -> float:
        if self.free:
            return 0.0  # not charged, and not counted in device_prg_s
        session, config = member.session, member.config
        prg = masking_prg_bytes(
            peers=peers,
            total_words=session.total_words(config),
            vector_length=session.vector_length,
            word_bytes=keystream_word_bytes(config.modulus_bits),
        )
        cost = self.calibration.device_s(member.device, prg)
        self.costs.device_prg_s.append(cost)
        return cost

    def _on_trained(self, task_id: str, now: float) -> list[Any]:
        member = self.members.get(task_id)
        handle = self.jobs.pop(task_id, None)
        if member is None or handle is None:
            return []
        outcome = handle.result()
        member.trained, member.trained_at = True, now
        if member.done or member.silent(now):
            return []
        if member.delivered:  # the delivery came first: mask now, send after the PRG work
            cost = self._masking_s(member, member.peers)
            member.masked = True
            self._send(
                member,
                SecAggPhase.MASKED_INPUT,
                lambda: member.participant.mask(outcome.delta, energy=outcome.update_energy),
                now + cost,
            )
        else:  # kept on the device until its delivery arrives
            try:
                member.participant.mask(outcome.delta, energy=outcome.update_energy)
            except (SecAggError, SecAggRefused):
                member.participant.on_abort()
                member.done = True
        return []

    def _on_down(self, payload: tuple[str, SecAggPhase, bytes], now: float) -> None:
        task_id, phase, frame = payload
        member = self.members.get(task_id)
        if member is None or member.done:
            return
        if member.silent(now):
            if phase is not SecAggPhase.ABORT:  # an abort asks for no answer: no drop there
                self._went_silent(member, _ANSWERS.get(phase, phase))
            return
        _, message = read_frame(
            frame, session=member.session, modulus_bits=member.config.modulus_bits
        )
        member.received_bytes += len(frame)
        participant = member.participant
        if phase is SecAggPhase.ABORT:
            participant.on_abort()
            member.done = True
        elif phase is SecAggPhase.ROSTER:
            roster = cast(KeyRoster, message)
            self._send(member, SecAggPhase.SHARES, lambda: participant.on_roster(roster), now)
        elif phase is SecAggPhase.DELIVERY:
            delivery = cast(ShareDelivery, message)
            member.delivered, member.peers = True, len(delivery.shares)
            member.delivered_at = now
            if member.trained and not member.masked:
                member.masked = True
                cost = self._masking_s(member, len(delivery.shares))
                self._send(
                    member,
                    SecAggPhase.MASKED_INPUT,
                    lambda: participant.on_delivery(delivery),
                    now + cost,
                )
            else:  # not trained yet: the delivery is kept (durably) until it is
                try:
                    participant.on_delivery(delivery)
                except (SecAggError, SecAggRefused):
                    participant.on_abort()
                    member.done = True
        elif phase is SecAggPhase.UNMASK_REQUEST:
            request = cast(UnmaskRequest, message)
            self._send(
                member, SecAggPhase.UNMASK_RESPONSE, lambda: participant.on_unmask(request), now
            )
            member.done = True

    def _on_up(self, task_id: str, frame: bytes, now: float) -> list[Any]:
        member = self.members[task_id]
        header, message = read_frame(
            frame, session=member.session, modulus_bits=member.config.modulus_bits
        )
        try:
            step = self.engine.secagg_receive(
                device_id=header.device_id,
                task_id=header.task_id,
                phase=header.phase,
                message=message,
                now=now,
            )
        except Exception as exc:  # a late member (declared dropped) is refused
            if not _is_refusal(exc):
                raise
            self.costs.late_refused += 1
            return []
        if header.phase is SecAggPhase.MASKED_INPUT:
            member.input_at = now
        return self._apply(step, now)

    def _apply(self, step: Any, now: float) -> list[Any]:
        for order in getattr(step, "invited", ()):
            self._invite(order, now)
        phases: set[tuple[str, SecAggPhase]] = set()
        for out in step.outbound:
            member = self.members.get(out.task_id)
            if member is None:
                continue
            phase = SecAggPhase(out.phase)
            frame = phase_frame(
                study_id=self.study_id,
                device_id=out.device_id,
                task_id=out.task_id,
                fill_id=out.fill_id,
                phase=phase,
                message=out.message,
                modulus_bits=member.config.modulus_bits,
            )
            self.download_bytes += len(frame)
            self.costs.count(phase, len(frame))
            self.push(
                now + (0.0 if self.free else one_way_down_s(member.device, len(frame))),
                "sa_down",
                (out.task_id, phase, frame),
            )
            phases.add((out.fill_id, phase))
        if any(phase is not SecAggPhase.ABORT for _fill, phase in phases):
            self._tick_at(now + self.phase_timeout_s)  # the next phase's timer
        deadline = self.engine.secagg_next_deadline()
        # e.g. a fill's straggler grace; at grace 0 it is now itself, and the tick just
        # past it is what closes the fill at its threshold (with ">" it waited for the
        # next tick of any fill: another phase's timer or its last member)
        if deadline is not None and deadline >= now:
            self._tick_at(deadline)
        merges = tuple(getattr(step, "merges", ()) or ((step.merge,) if step.merge else ()))
        self.costs.fills_aborted += len(set(step.aborted))  # the fill ids aborted
        return [self._merged(merge, now) for merge in merges]

    def flush(self, now: float) -> list[Any]:
        """The engine's pending fill step (e.g. the ABORT after a member's task failed)."""
        return self._apply(self.engine.secagg_tick(now=now), now)

    def _merged(self, merge: Any, now: float) -> Any:
        self.merges.append(merge)
        self.costs.fills_merged += 1
        survivors = len(merge.task_ids)
        self.costs.survivors.append(survivors)
        member = next((self.members[t] for t in merge.task_ids if t in self.members), None)
        if member is not None:
            session, config = member.session, member.config
            self.costs.server_prg_s += self.calibration.server_s(
                unmasking_prg_bytes(
                    survivors=survivors,
                    dropped=max(0, session.n - survivors),
                    total_words=session.total_words(config),
                    word_bytes=keystream_word_bytes(config.modulus_bits),
                )
            )
        for task_id in merge.task_ids:  # finished: the device forgets the session's state
            done = self.members.get(task_id)
            if done is not None:
                self.stores[done.device.device_id].discard(done.session.session_id)
                self._time_slot(done, now)
        if member is not None:
            self.costs.fill_s.append(now - self._opened_at[member.fill_id])
        return merge

    def _time_slot(self, member: Member, now: float) -> None:
        if member.trained_at is None or member.input_at is None:
            return  # (a survivor has both; kept safe for a member the engine merged anyway)
        self.costs.trained_s.append(member.trained_at - member.dispatched_at)
        self.costs.input_s.append(member.input_at - member.dispatched_at)
        delivered = member.delivered_at if member.delivered_at is not None else member.trained_at
        self.costs.delivery_wait_s.append(max(0.0, delivered - member.trained_at))
        self.costs.slot_s.append(now - member.dispatched_at)

    def drain(self) -> None:
        """Wait for training jobs still in flight (the executor must finish them)."""
        for handle in [*self.jobs.values(), *(j for j, _ in self.waiting.values()), *self.orphans]:
            handle.result()
        self.jobs.clear()
        self.waiting.clear()
        self.orphans.clear()


def _is_refusal(exc: Exception) -> bool:
    """The engine's refusal of a message (late, unknown fill, wrong phase), not a bug."""
    names = {c.__name__ for c in type(exc).__mro__}
    return isinstance(exc, SecAggError) or bool(names & {"CoordinatorError"})
