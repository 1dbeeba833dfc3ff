"""Helpers of the secure-aggregation live tests: a fill member built from the real
device side (``fedward.edge.secagg.SecAggParticipant`` over its file store), and
the frames it exchanges, exactly as they travel (``SecAggMessage`` + tensors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedward.coordinator.strategies import StrategyName
from fedward.coordinator.study_spec import SecAggSettings, StudySpec
from fedward.edge.secagg import SecAggParticipant
from fedward.edge.secagg_store import SecAggStore
from fedward.privacy.secagg import wire
from fedward.privacy.secagg.messages import KeyRoster, MaskedInput, ShareDelivery, UnmaskRequest
from fedward.protocol.messages import (
    SECAGG_WORDS,
    SecAggMessage,
    SecAggPhase,
    Task,
    decode_frame,
    encode_frame,
    secagg_body,
    secagg_frame_tensors,
    secagg_words_tensor,
    update_energy,
)
from fedward.tinytrain.models import build_model, param_shapes
from tests.live.live_helpers import TINY_SPEC

MAX = 1 << 24
# FTTE, buffer 3: a cohort of ceil(3 / 0.75) = 4, threshold max(floor((4 + 1)/2) + 1, 3) = 3
SECAGG_SPEC: StudySpec = TINY_SPEC.model_copy(
    update={
        "name": "live-secagg",
        "strategy": StrategyName.FTTE,
        "buffer_size": 3,
        "concurrency": 8,
        "norm_bound_tolerance": None,
        "secagg": SecAggSettings(
            expected_dropout=0.25,
            max_colluders=1,
            min_cohort=3,
            clip=4.0,
            phase_timeout_s=20.0,
            fills_in_flight=2,
        ),
    }
)
CANARY = 0.123456789  # a value pattern no honest model update holds


def model_shapes(spec: StudySpec) -> dict[str, tuple[int, ...]]:
    return param_shapes(build_model(spec.model_settings(), seed=spec.model_seed))


def frame(message: SecAggMessage, msg: object | None, *, modulus_bits: int = 32) -> bytes:
    """The frame of one step: words for a masked input (b bits each), the canonical body
    otherwise."""
    if msg is None:
        return encode_frame(message)
    if isinstance(msg, MaskedInput):
        words = secagg_words_tensor(msg.data, modulus_bits=modulus_bits)
        return encode_frame(message, secagg_frame_tensors(message.phase, words=words))
    return encode_frame(message, secagg_frame_tensors(message.phase, body=wire.encode_message(msg)))


_DOWNLINK_TYPES = {
    SecAggPhase.ROSTER: KeyRoster,
    SecAggPhase.DELIVERY: ShareDelivery,
    SecAggPhase.UNMASK_REQUEST: UnmaskRequest,
}


@dataclass
class Member:
    """One device of one fill, answering what the coordinator sends it."""

    task: Task
    participant: SecAggParticipant
    delta: dict[str, np.ndarray]
    sent: list[bytes] = field(default_factory=list)  # every frame it published
    masked: bytes = b""  # its masked words, as sent
    aborted: bool = False
    silent_from: SecAggPhase | None = None  # drops out: sends nothing from this phase on
    withheld: list[bytes] = field(default_factory=list)  # what it would have sent

    @classmethod
    def for_task(
        cls,
        task: Task,
        *,
        root: Path,
        spec: StudySpec,
        delta: dict[str, np.ndarray],
        signing_key: Ed25519PrivateKey | None = None,
    ) -> Member:
        """``signing_key``: the key the device enrolled with (it signs its advertisement)."""
        store = SecAggStore(root / task.device_id / "secagg", device_id=task.device_id)
        participant = SecAggParticipant.for_task(
            task, model_shapes=model_shapes(spec), store=store, signing_key=signing_key
        )
        return cls(task=task, participant=participant, delta=delta)

    def _out(self, phase: SecAggPhase, msg: object | None) -> bytes | None:
        if msg is None:
            return None
        header = SecAggMessage(
            study_id=self.task.study_id,
            device_id=self.task.device_id,
            task_id=self.task.task_id,
            fill_id=self.task.secagg.fill_id if self.task.secagg else "",
            phase=phase,
        )
        raw = frame(header, msg, modulus_bits=self.participant.config.modulus_bits)
        if isinstance(msg, MaskedInput):
            self.masked = msg.data
        if self.silent_from is not None and _after(phase, self.silent_from):
            self.withheld.append(raw)
            return None
        self.sent.append(raw)
        return raw

    def start(self) -> list[bytes]:
        """Advertise, then train (here: the given delta) and hand the update over."""
        out = [self._out(SecAggPhase.ADVERTISE, self.participant.advertise())]
        masked = self.participant.mask(self.delta, energy=update_energy(self.delta))
        out.append(self._out(SecAggPhase.MASKED_INPUT, masked))
        return [o for o in out if o is not None]

    def on_frame(self, raw: bytes) -> list[bytes]:
        message, tensors = decode_frame(raw, max_bytes=MAX)
        if not isinstance(message, SecAggMessage):
            raise AssertionError(f"not a SecAgg frame: {message.kind}")
        if message.phase is SecAggPhase.ABORT:
            self.aborted = True
            self.participant.on_abort()
            return []
        msg = wire.decode_message(secagg_body(tensors), _DOWNLINK_TYPES[message.phase])
        if message.phase is SecAggPhase.ROSTER:
            answer = self._out(SecAggPhase.SHARES, self.participant.on_roster(msg))
        elif message.phase is SecAggPhase.DELIVERY:
            answer = self._out(SecAggPhase.MASKED_INPUT, self.participant.on_delivery(msg))
        else:
            answer = self._out(SecAggPhase.UNMASK_RESPONSE, self.participant.on_unmask(msg))
        return [answer] if answer is not None else []


_ORDER = [
    SecAggPhase.ADVERTISE,
    SecAggPhase.SHARES,
    SecAggPhase.MASKED_INPUT,
    SecAggPhase.UNMASK_RESPONSE,
]


def _after(phase: SecAggPhase, start: SecAggPhase) -> bool:
    return _ORDER.index(phase) >= _ORDER.index(start)


def decoded(raw: bytes) -> tuple[SecAggMessage, dict[str, np.ndarray]]:
    message, tensors = decode_frame(raw, max_bytes=MAX)
    if not isinstance(message, SecAggMessage):
        raise AssertionError(f"not a SecAgg frame: {message.kind}")
    return message, tensors


def delta_for(task: Task, shapes: dict[str, tuple[int, ...]], *, seed: int, canary: bool = False):
    """A small plain update of the task's subset; ``canary``: a distinctive value pattern."""
    rng = np.random.default_rng(seed)
    delta = {
        n: (0.01 * rng.standard_normal(shapes[n])).astype(np.float32) for n in task.subset_names
    }
    if canary:
        for n in delta:
            flat = delta[n].reshape(-1)
            flat[::2] = np.float32(CANARY)
    return delta


__all__ = [
    "CANARY",
    "MAX",
    "SECAGG_SPEC",
    "SECAGG_WORDS",
    "Member",
    "decoded",
    "delta_for",
    "frame",
    "model_shapes",
]
