"""Errors raised by the wire protocol.

Everything that arrives from the network is untrusted, so every failure to
understand it must surface as one catchable family instead of whatever
``struct``/``numpy``/``json`` happened to raise. Callers (the coordinator
bridge, the edge agent) catch :class:`ProtocolError`, drop the message and
audit it; they never have to guess which low-level exception a forged
payload might trigger.

Hierarchy (hangs from :class:`fedward.errors.FedwardError`)::

    ProtocolError            base class for everything below
    ├── DecodeError          bytes that are not a valid message/tensor payload
    ├── EncodeError          a local value that cannot be put on the wire
    ├── MessageTooLarge      above the configured per-message byte limit
    ├── UnsupportedVersion   valid framing, but a protocol/format version we do not speak
    ├── ChunkError           a chunk that is malformed or inconsistent with its siblings
    ├── RouteError           a valid message on a topic it may not use (spoofed ids)
    ├── AuthError            a message whose sender is not proven (signed envelopes)
    │   ├── Unsigned         no signed envelope at all
    │   ├── BadSignature     a signature that does not verify (forged, altered, wrong key)
    │   ├── Replayed         a counter not above the sender's last one (replay, reorder)
    │   ├── NotEnrolled      no enrolled key for the device the topic names
    │   └── EnrolmentDenied  an enrolment without a valid operator-issued secret
    └── TransportError       the transport could not connect/publish/subscribe; paho's
                             (and the embedded amqtt broker's) own errors are mapped to
                             it at the seam, chained as ``__cause__``, never leaked

Validation is always done with explicit ``raise``; ``assert`` disappears
under ``python -O`` and must never guard untrusted input.
"""

from __future__ import annotations

from fedward.errors import FedwardError


class ProtocolError(FedwardError):
    """Base class of every error raised by :mod:`fedward.protocol`."""


class DecodeError(ProtocolError):
    """Received bytes are malformed, truncated, corrupted or forged."""


class EncodeError(ProtocolError):
    """A local value cannot be encoded (unsupported dtype, bad name, ...).

    This is a programming error on the sending side, kept separate from
    :class:`DecodeError` so receivers never confuse their own bugs with
    hostile input.
    """


class MessageTooLarge(ProtocolError):
    """A message exceeds the configured per-message size limit."""


class UnsupportedVersion(ProtocolError):
    """The peer speaks a protocol or format version this build does not."""


class ChunkError(ProtocolError):
    """A chunk is malformed, corrupted or inconsistent with its message."""


class RouteError(ProtocolError):
    """A well-formed message arrived on a topic it does not belong to.

    Separate from :class:`DecodeError` because it is an authorisation
    signal (a device speaking for another device), worth auditing as such.
    """


class TransportError(ProtocolError):
    """The transport failed (not connected, broker refused, timeout, bad TLS files, ...).

    The message says what to check; the library's own exception, if any, is
    the ``__cause__``.
    """


class AuthError(ProtocolError):
    """The sender of a message is not proven: never act on it, never in its claimed name."""


class Unsigned(AuthError):
    """A message without a signed envelope where one is required."""


class BadSignature(AuthError):
    """A signature that does not verify for the claimed sender, study, device and counter."""


class Replayed(AuthError):
    """A correctly signed message whose counter is not above the sender's last one."""


class NotEnrolled(AuthError):
    """No key is enrolled for the device a message's topic names: nothing to verify with."""


class EnrolmentDenied(AuthError):
    """An enrolment without a valid, unexpired, operator-issued secret for its device."""
