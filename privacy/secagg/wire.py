"""Bytes for the SecAgg messages: one canonical, strict encoding for the wire.

``fedward.protocol`` carries a SecAgg message as an opaque body inside a signed
envelope; this module is the one place that turns the message dataclasses of
:mod:`.messages` into bytes and back. The encoding is canonical JSON (sorted
keys, no spaces, bytes as lowercase hex), so the same message always gives the
same bytes: a device that re-sends a journalled answer after a restart sends
exactly what it sent before. Decoding is strict: unknown or missing fields,
wrong types and oversized bodies raise :class:`~.errors.ProtocolViolation`
(a device's bytes are untrusted); the receiver's own checks
(``masking.check_*``) still judge the content.

``MaskedInput.data`` is the one large field; it is hex in this encoding too, so
the codec stays one shape. A transport that wants it binary sends the words
as a tensor and rebuilds the message with :func:`masked_input_from_words`.

``KeyRoster.evidence`` (opaque bytes per advertisement, for the device's check
of its peers' identity keys) is a list of hex strings, left out of the body
when empty: a roster without evidence keeps the bytes it had before the field
existed, and an explicitly empty list is refused (one spelling per message).
When present it must hold exactly one item per advertisement.
"""

from __future__ import annotations

import json
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

from .errors import ProtocolViolation
from .messages import (
    EncryptedShare,
    KeyAdvertisement,
    KeyRoster,
    MaskedInput,
    RevealedShare,
    ShareBundle,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_EVIDENCE_BYTES",
    "MESSAGE_TYPES",
    "decode_message",
    "encode_message",
]

#: Largest body accepted (a roster of 1,000 devices is about 300 KB).
MAX_BODY_BYTES = 8 << 20

#: Largest single evidence item of a roster (fedward's enrolment evidence is ~3 KB).
MAX_EVIDENCE_BYTES = 64 << 10

#: Wire name of every message type (the "type" field of a body).
MESSAGE_TYPES: dict[str, type] = {
    "key_advertisement": KeyAdvertisement,
    "key_roster": KeyRoster,
    "share_bundle": ShareBundle,
    "share_delivery": ShareDelivery,
    "masked_input": MaskedInput,
    "unmask_request": UnmaskRequest,
    "unmask_response": UnmaskResponse,
}
_NAME_OF = {cls: name for name, cls in MESSAGE_TYPES.items()}

# Fields holding a tuple of nested messages, and what each item is.
_NESTED: dict[tuple[type, str], type] = {
    (KeyRoster, "advertisements"): KeyAdvertisement,
    (ShareBundle, "shares"): EncryptedShare,
    (ShareDelivery, "shares"): EncryptedShare,
    (UnmaskResponse, "seed_shares"): RevealedShare,
    (UnmaskResponse, "key_shares"): RevealedShare,
}
# Fields holding a tuple of device ids.
_ID_TUPLES = frozenset({(UnmaskRequest, "survivors"), (UnmaskRequest, "dropped")})
# Fields holding a tuple of opaque byte strings, left out of the body when empty.
_BYTES_TUPLES = frozenset({(KeyRoster, "evidence")})

M = TypeVar("M")


def _plain(msg: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(msg):  # type: ignore[arg-type]
        value = getattr(msg, f.name)
        if (type(msg), f.name) in _BYTES_TUPLES:
            if value:  # absent when empty: the body a roster had before the field existed
                out[f.name] = [bytes(v).hex() for v in value]
        elif isinstance(value, bytes):
            out[f.name] = value.hex()
        elif isinstance(value, tuple):
            out[f.name] = [_plain(v) if is_dataclass(v) else v for v in value]
        else:
            out[f.name] = value
    return out


def encode_message(msg: object) -> bytes:
    """Canonical bytes of a SecAgg message (deterministic: same message, same bytes)."""
    name = _NAME_OF.get(type(msg))
    if name is None:
        raise ProtocolViolation(f"not a SecAgg wire message: {type(msg).__name__}")
    body = {"type": name, "message": _plain(msg)}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _build(cls: type[M], data: object, where: str) -> M:
    if not isinstance(data, dict):
        raise ProtocolViolation(f"{where}: expected an object")
    wanted = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    optional = {name for name in wanted if (cls, name) in _BYTES_TUPLES}
    if not set(wanted) - optional <= set(data) <= set(wanted):
        raise ProtocolViolation(
            f"{where}: fields {sorted(data)} differ from {sorted(wanted)} for {cls.__name__}"
        )
    kwargs: dict[str, Any] = {}
    for name, f in wanted.items():
        if name not in data:  # an optional tuple of bytes left out: empty
            continue
        value = data[name]
        item_cls = _NESTED.get((cls, name))
        if (cls, name) in _BYTES_TUPLES:
            kwargs[name] = _bytes_tuple(value, f"{where}.{name}")
        elif item_cls is not None:
            if not isinstance(value, list):
                raise ProtocolViolation(f"{where}.{name}: expected a list")
            kwargs[name] = tuple(
                _build(item_cls, v, f"{where}.{name}[{i}]") for i, v in enumerate(value)
            )
        elif (cls, name) in _ID_TUPLES:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ProtocolViolation(f"{where}.{name}: expected a list of device ids")
            kwargs[name] = tuple(value)
        elif f.type in ("bytes", bytes):
            if not isinstance(value, str):
                raise ProtocolViolation(f"{where}.{name}: expected hex")
            try:
                kwargs[name] = bytes.fromhex(value)
            except ValueError:
                raise ProtocolViolation(f"{where}.{name}: not hex") from None
            if value != kwargs[name].hex():  # one spelling only: the encoding is canonical
                raise ProtocolViolation(f"{where}.{name}: hex must be lowercase, no spaces")
        elif f.type in ("int", int):
            if type(value) is not int:
                raise ProtocolViolation(f"{where}.{name}: expected an integer")
            kwargs[name] = value
        elif f.type in ("str", str):
            if not isinstance(value, str):
                raise ProtocolViolation(f"{where}.{name}: expected a string")
            kwargs[name] = value
        else:  # pragma: no cover - a new field type must be added above
            raise ProtocolViolation(f"{where}.{name}: field type {f.type!r} has no wire form")
    msg = cls(**kwargs)
    if isinstance(msg, KeyRoster) and msg.evidence:
        if len(msg.evidence) != len(msg.advertisements):
            raise ProtocolViolation(
                f"{where}: {len(msg.evidence)} evidence items for "
                f"{len(msg.advertisements)} advertisements (one each, or none)"
            )
    return msg


def _bytes_tuple(value: object, where: str) -> tuple[bytes, ...]:
    """A non-empty list of canonical hex strings, each at most MAX_EVIDENCE_BYTES."""
    if not isinstance(value, list) or not value:
        raise ProtocolViolation(f"{where}: expected a non-empty list (absent when empty)")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or len(item) > 2 * MAX_EVIDENCE_BYTES:
            raise ProtocolViolation(f"{where}[{i}]: expected hex of at most {MAX_EVIDENCE_BYTES} B")
        try:
            raw = bytes.fromhex(item)
        except ValueError:
            raise ProtocolViolation(f"{where}[{i}]: not hex") from None
        if item != raw.hex():
            raise ProtocolViolation(f"{where}[{i}]: hex must be lowercase, no spaces")
        out.append(raw)
    return tuple(out)


def decode_message(data: bytes, expected: type[M]) -> M:
    """The message of type ``expected`` encoded in ``data``; ProtocolViolation otherwise."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolViolation("a SecAgg body must be bytes")
    if len(data) > MAX_BODY_BYTES:
        raise ProtocolViolation(f"SecAgg body of {len(data)} bytes exceeds {MAX_BODY_BYTES}")
    try:
        body = json.loads(bytes(data).decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolViolation("a SecAgg body must be ASCII JSON") from None
    if not isinstance(body, dict) or set(body) != {"type", "message"}:
        raise ProtocolViolation("a SecAgg body is {type, message}")
    cls = MESSAGE_TYPES.get(body["type"]) if isinstance(body["type"], str) else None
    if cls is not expected:
        raise ProtocolViolation(
            f"expected {_NAME_OF.get(expected, expected.__name__)}, got {body['type']!r}"
        )
    return _build(expected, body["message"], _NAME_OF[expected])
