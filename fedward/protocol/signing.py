"""Signed envelopes: who sent a frame, for which study and device, in which order.

Why: the topic says nothing about who published (a broker without an ACL, or a
hostile broker, lets anyone publish anywhere), so every live message travels
sealed in an envelope signed with its sender's Ed25519 key. A device signs
with the key it enrolled; the coordinator signs with its wire key, which the
device pins at enrolment (:mod:`fedward.protocol.enrolment`).

Layout (little-endian; the inner frame is :func:`fedward.protocol.messages.encode_frame`
output, unchanged)::

    magic     4 bytes  b"FWSG"
    version   u8       SEAL_VERSION
    role      u8       1 = device -> coordinator, 2 = coordinator -> device(s)
    counter   u64      the sender's monotonic counter (>= 1)
    signature 64 bytes Ed25519 over the signed bytes below
    frame     the inner frame (header + CRC + tensor payload)

Signed bytes::

    b"fedward-seal-v1" | role | len16 study_id | len16 device_id | counter u64
    | sha256(frame header bytes) | sha256(frame tensor payload)

``study_id`` and ``device_id`` are the topic's (``device_id`` empty on a
broadcast model topic): a signed frame replayed on another study's or
device's topic fails verification. The task is bound through the header (its
``task_id``), the order through the counter: a receiver keeps the highest
counter it accepted per sender (:class:`ReplayGuard`) and refuses anything not
above it, so a replayed or reordered frame is refused. A sender's counter
survives restarts (:class:`CounterFile`), so it never goes back.

Verification happens on the whole message (after chunk reassembly), before
the frame is decoded: an unauthenticated sender never reaches the decoder.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedward.protocol.errors import BadSignature, DecodeError, EncodeError, Replayed, Unsigned

SEAL_MAGIC = b"FWSG"
SEAL_VERSION = 1
SIGNATURE_BYTES = 64
_SEAL = struct.Struct("<4sBBQ64s")
SEAL_OVERHEAD = _SEAL.size
_DOMAIN = b"fedward-seal-v1"
_FRAME_PREFIX = struct.Struct("<4sBBII")  # mirrors messages._FRAME_PREFIX (layout frozen)
_CRC_BYTES = 4
MAX_COUNTER = 2**64 - 1


class Role(IntEnum):
    """Who signed: the direction of the message."""

    DEVICE = 1
    COORDINATOR = 2


@dataclass(frozen=True, slots=True)
class SealContext:
    """What a signature is bound to besides the frame: direction, study, device."""

    role: Role
    study_id: str
    device_id: str = ""  # "" for a broadcast (model) topic

    def signed_prefix(self, counter: int) -> bytes:
        study = self.study_id.encode("utf-8")
        device = self.device_id.encode("utf-8")
        return b"".join(
            (
                _DOMAIN,
                bytes((int(self.role),)),
                struct.pack("<H", len(study)),
                study,
                struct.pack("<H", len(device)),
                device,
                struct.pack("<Q", counter),
            )
        )


@dataclass(frozen=True, slots=True)
class Sealed:
    """A parsed envelope: not yet verified."""

    role: Role
    counter: int
    signature: bytes
    frame: bytes


def _frame_digests(frame: bytes) -> bytes:
    """``sha256(header) | sha256(payload)`` of an inner frame (its prefix says where)."""
    if len(frame) < _FRAME_PREFIX.size + _CRC_BYTES:
        raise DecodeError("sealed frame too short")
    _, _, _, header_len, _ = _FRAME_PREFIX.unpack_from(frame)
    head_end = _FRAME_PREFIX.size + header_len
    if head_end + _CRC_BYTES > len(frame):
        raise DecodeError("sealed frame shorter than its header")
    header = frame[_FRAME_PREFIX.size : head_end]
    payload = frame[head_end + _CRC_BYTES :]
    return hashlib.sha256(header).digest() + hashlib.sha256(payload).digest()


def signed_bytes(context: SealContext, counter: int, frame: bytes) -> bytes:
    """The exact bytes a seal's signature covers."""
    return context.signed_prefix(counter) + _frame_digests(frame)


def seal(frame: bytes, *, key: Ed25519PrivateKey, context: SealContext, counter: int) -> bytes:
    """Wrap ``frame`` in an envelope signed by ``key`` for ``context`` at ``counter``."""
    if type(counter) is not int or not 1 <= counter <= MAX_COUNTER:
        raise EncodeError(f"counter must be an int in 1..2**64-1, got {counter!r}")
    signature = key.sign(signed_bytes(context, counter, frame))
    return _SEAL.pack(SEAL_MAGIC, SEAL_VERSION, int(context.role), counter, signature) + frame


def is_sealed(data: bytes | bytearray | memoryview) -> bool:
    return bytes(data[:4]) == SEAL_MAGIC


def open_seal(data: bytes | bytearray | memoryview) -> Sealed:
    """Parse an envelope (no verification); :class:`Unsigned` if it is not one."""
    raw = bytes(data)
    if not is_sealed(raw):
        raise Unsigned("message is not signed")
    if len(raw) < SEAL_OVERHEAD:
        raise DecodeError("signed envelope too short")
    _, version, role, counter, signature = _SEAL.unpack_from(raw)
    if version != SEAL_VERSION:
        raise DecodeError(f"signed envelope version {version} (supported: {SEAL_VERSION})")
    try:
        parsed_role = Role(role)
    except ValueError:
        raise DecodeError(f"unknown signer role {role}") from None
    if counter < 1:
        raise DecodeError("signed envelope counter must be >= 1")
    return Sealed(parsed_role, counter, signature, raw[SEAL_OVERHEAD:])


def verify(sealed: Sealed, *, public_key: bytes, context: SealContext) -> bytes:
    """The inner frame if ``sealed`` was signed by ``public_key`` for ``context``.

    Raises :class:`BadSignature` for a wrong role, a key that did not sign it
    or any change to the frame, study, device or counter.
    """
    if sealed.role is not context.role:
        raise BadSignature(f"signed as {sealed.role.name}, expected {context.role.name}")
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
        key.verify(sealed.signature, signed_bytes(context, sealed.counter, sealed.frame))
    except (InvalidSignature, ValueError) as exc:
        raise BadSignature("signature does not verify") from exc
    return sealed.frame


class ReplayGuard:
    """The highest counter accepted per sender; anything not above it is refused.

    ``snapshot``/``restore`` let the owner persist it (the coordinator saves it
    with its wire state so a restart does not reopen the replay window).
    Thread-safe.
    """

    def __init__(self, highest: Mapping[str, int] | None = None) -> None:
        self._highest: dict[str, int] = dict(highest or {})
        self._lock = threading.Lock()

    def check(self, sender: str, counter: int) -> None:
        """Accept ``counter`` from ``sender`` (and remember it) or raise :class:`Replayed`."""
        with self._lock:
            last = self._highest.get(sender, 0)
            if counter <= last:
                raise Replayed(f"counter {counter} of {sender!r} is not above {last}")
            self._highest[sender] = counter

    def highest(self, sender: str) -> int:
        with self._lock:
            return self._highest.get(sender, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._highest)


class CounterFile:
    """A sender's monotonic counter that never repeats, even across crashes.

    Why reservations: an fsync per message would cap a device at a few hundred
    messages per second and wear its flash; instead the file holds the end of
    a reserved block, written (and fsynced) before any counter of the block is
    used. A restart continues after the reserved end, skipping what was unused.
    """

    def __init__(self, path: Path, *, block: int = 1024) -> None:
        if block < 1:
            raise ValueError("block must be >= 1")
        self.path = path
        self.block = block
        self._lock = threading.Lock()
        self._next = self._read() + 1
        self._reserved = self._next - 1

    def _read(self) -> int:
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        if not text.isdigit():
            raise EncodeError(f"counter file {self.path} is corrupt: {text[:40]!r}")
        return int(text)

    def _reserve(self, end: int) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, str(end).encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self._reserved = end

    def next(self) -> int:
        """The next counter value (strictly above every value returned before)."""
        with self._lock:
            value = self._next
            if value > self._reserved:
                self._reserve(value + self.block - 1)
            self._next = value + 1
            return value


class MemoryCounter:
    """A counter that lives only in memory (tests, and the in-process ``fedward up``)."""

    def __init__(self, start: int = 0) -> None:
        self._value = start
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._value += 1
            return self._value


__all__ = [
    "SEAL_MAGIC",
    "SEAL_OVERHEAD",
    "CounterFile",
    "MemoryCounter",
    "ReplayGuard",
    "Role",
    "SealContext",
    "Sealed",
    "is_sealed",
    "open_seal",
    "seal",
    "signed_bytes",
    "verify",
]
