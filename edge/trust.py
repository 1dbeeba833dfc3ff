"""The device's side of trust on the wire: sign what it sends, verify what it takes.

Why the device pins the coordinator's key at enrolment, and how: its operator
hands it a one-time enrolment secret (:mod:`fedward.protocol.enrolment`). The
Enrol carries a proof of that secret, and the genuine coordinator answers with
an EnrolAck carrying its wire key and a proof over that key under the same
secret, which only the coordinator (holder of the master key) can compute. The
key is pinned in ``state_dir/coordinator.pub`` and from then on every downlink
message (task, model frame, ack, error) must be signed by it, for this study and
device, with a counter above the last one taken: a fake coordinator's forged
Task, model frame or Ack is refused and dropped, never acted on.

What the device sends is signed with its own enrolled key, with a counter that
never repeats (``state_dir/uplink-counter``), so the coordinator refuses an
update or heartbeat that anyone else published in its name, or replayed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedward.protocol.enrolment import EnrolmentSecret, ack_proof, enrol_proof, parse_secret
from fedward.protocol.errors import BadSignature, DecodeError, EnrolmentDenied
from fedward.protocol.messages import EnrolAck, EnrolTicket, decode_frame
from fedward.protocol.signing import (
    CounterFile,
    ReplayGuard,
    Role,
    SealContext,
    Sealed,
    open_seal,
    seal,
    verify,
)

from .identity import DeviceIdentity

PINNED_KEY_FILE = "coordinator.pub"
UPLINK_COUNTER_FILE = "uplink-counter"
DOWNLINK_COUNTER_FILE = "downlink-counter"
_COORDINATOR = "coordinator"


@dataclass(frozen=True)
class Opened:
    """A downlink message that verified (``frame``: the inner frame to decode)."""

    frame: bytes
    counter: int
    enrol_ack: EnrolAck | None = None  # set when it pinned (or refused) the enrolment


class AgentTrust:
    """Signing, verification and the pinned key of one device in one study."""

    def __init__(
        self,
        *,
        identity: DeviceIdentity,
        study_id: str,
        state_dir: Path,
        secret: str | None,
        max_message_bytes: int,
    ) -> None:
        self.identity = identity
        self.study_id = study_id
        self.state_dir = state_dir
        self.max_message_bytes = max_message_bytes
        self.secret: EnrolmentSecret | None = None
        if secret is not None:
            parsed = parse_secret(secret)
            if (parsed.study_id, parsed.device_id) != (study_id, identity.device_id):
                raise EnrolmentDenied(
                    f"this enrolment secret is for device {parsed.device_id} in study "
                    f"{parsed.study_id}, not {identity.device_id} in {study_id}"
                )
            self.secret = parsed
        self.pinned: bytes | None = self._read_pinned()
        self.counter = CounterFile(state_dir / UPLINK_COUNTER_FILE)
        self.downlink = ReplayGuard({_COORDINATOR: self._read_downlink()})
        self._send_lock = threading.Lock()

    @staticmethod
    def configured(state_dir: Path, secret: str | None) -> bool:
        """Whether the agent runs signed: a secret is given or a key is pinned already."""
        return secret is not None or (state_dir / PINNED_KEY_FILE).exists()

    # -- files ------------------------------------------------------------------------

    def _read_pinned(self) -> bytes | None:
        try:
            raw = (self.state_dir / PINNED_KEY_FILE).read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        try:
            key = bytes.fromhex(raw)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise EnrolmentDenied(f"{self.state_dir / PINNED_KEY_FILE} is not a 32-byte hex key")
        return key

    def _read_downlink(self) -> int:
        try:
            text = (self.state_dir / DOWNLINK_COUNTER_FILE).read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        return int(text) if text.isdigit() else 0

    def _write(self, name: str, text: str) -> None:
        path = self.state_dir / name
        tmp = path.with_name(name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, text.encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def remember_downlink(self) -> None:
        """Persist the highest downlink counter taken (after a task or an enrolment)."""
        self._write(DOWNLINK_COUNTER_FILE, str(self.downlink.highest(_COORDINATOR)))

    # -- sending ----------------------------------------------------------------------

    def ticket(self) -> EnrolTicket | None:
        if self.secret is None:
            return None
        proof = enrol_proof(
            self.secret.mac,
            study_id=self.study_id,
            device_id=self.identity.device_id,
            public_key=self.identity.public_key,
        )
        return EnrolTicket(expires_at=self.secret.expires_at, nonce=self.secret.nonce, proof=proof)

    def sign_and_send(self, frame: bytes, send: Callable[[bytes], bool]) -> bool:
        """Seal ``frame`` and call ``send(sealed)`` under one lock (counter order = wire order)."""
        context = SealContext(Role.DEVICE, self.study_id, self.identity.device_id)
        with self._send_lock:
            sealed = seal(
                frame, key=self.identity.key, context=context, counter=self.counter.next()
            )
            return send(sealed)

    # -- receiving --------------------------------------------------------------------

    def open(self, payload: bytes, *, device_id: str | None) -> Opened:
        """Verify a downlink message; raises AuthError/DecodeError when it is not proven.

        ``device_id`` is the topic's (None on a model broadcast).
        """
        sealed = open_seal(payload)
        context = SealContext(Role.COORDINATOR, self.study_id, device_id or "")
        if self.pinned is None:
            return self._first_enrol_ack(sealed.frame, sealed, context)
        frame = verify(sealed, public_key=self.pinned, context=context)
        self.downlink.check(_COORDINATOR, sealed.counter)
        return Opened(frame, sealed.counter)

    def _first_enrol_ack(self, frame: bytes, sealed: Sealed, context: SealContext) -> Opened:
        """Before a key is pinned only an EnrolAck is taken: proven, it pins the key."""
        message, _ = decode_frame(frame, max_bytes=self.max_message_bytes)
        if not isinstance(message, EnrolAck) or message.coordinator_key is None:
            raise BadSignature(f"{message.kind} before the coordinator key is pinned")
        key = bytes(message.coordinator_key)
        verify(sealed, public_key=key, context=context)
        if message.proof is None:
            if message.accepted:
                raise BadSignature("an unproven EnrolAck cannot admit the device")
            return Opened(frame, 0, enrol_ack=message)  # refused: nothing is pinned
        if self.secret is None:
            raise BadSignature("no enrolment secret to check the coordinator's proof with")
        expected = ack_proof(
            self.secret.mac,
            study_id=self.study_id,
            device_id=self.identity.device_id,
            public_key=self.identity.public_key,
            coordinator_key=key,
            accepted=message.accepted,
        )
        if expected != bytes(message.proof):
            raise BadSignature("the EnrolAck's proof does not match this device's secret")
        if message.accepted:
            self.pinned = key
            self._write(PINNED_KEY_FILE, key.hex())
        self.downlink.check(_COORDINATOR, sealed.counter)
        self.remember_downlink()
        return Opened(frame, sealed.counter, enrol_ack=message)


__all__ = ["AgentTrust", "DecodeError", "Opened"]
