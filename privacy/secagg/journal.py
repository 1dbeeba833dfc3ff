"""A device's durable record of every SecAgg session it took part in.

The one-shot rules (mask one input per session, answer one unmask request)
must survive a crash and a restore from an older saved state, or a server
that can make a device restart learns an individual update: restored from a
state saved before it answered, the device would answer a second, different
unmask request (seed shares of a device whose key shares it already sent), and
restored from a state saved before it masked, it would mask a second input
with the same masks (the difference of two inputs leaks).

So before a client releases a message it records here, write-ahead, the
stage it reaches, a digest of the request that produced the message and a
digest of the message itself; ``sink`` (the caller's durable write, e.g. an
fsync'd file on the device) gets the sealed journal before the client returns.
The journal only grows, and a client refuses

* to start (advertise in) a session id this journal already holds;
* to load a saved state that is behind the journal (an older state) or whose
  released message differs from the recorded one;
* a repeated request that differs from the recorded one (the same request
  gets the same bytes again, from the saved state; nothing is recomputed).

One entry per session: about 150 bytes, kept for the device's lifetime
(a session id must never be reusable). The journal holds digests only, no secrets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fedward.saved_state import open_envelope, seal

from .errors import StateError
from .state import to_plain

JOURNAL_KIND = "fedward.privacy.secagg.journal"
JOURNAL_VERSION = 1
DIGEST_BYTES = 32

#: The client stages a journal records, in protocol order (ABORTED is final).
STAGE_ORDER = ("NEW", "ADVERTISED", "SHARED", "MASKED", "DONE", "ABORTED")

Sink = Callable[[dict[str, Any]], None]


def message_digest(msg: object) -> bytes:
    """SHA-256 of a message dataclass's canonical plain form (``b""`` digests to itself).

    The plain form holds only bytes, str, int, tuples/lists and dicts (field
    order); each value is fed with a type tag and a length, so distinct
    messages never collide by concatenation and large payloads are hashed in
    place (no copy of a masked vector).
    """
    h = hashlib.sha256(b"fedward.secagg.message.v1")
    _feed(h, None if msg is None else to_plain(msg))
    return h.digest()


def _feed(h: Any, value: object) -> None:
    if value is None:
        h.update(b"N")
    elif isinstance(value, bytes):
        h.update(b"B" + len(value).to_bytes(8, "big"))
        h.update(value)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        h.update(b"S" + len(raw).to_bytes(8, "big") + raw)
    elif isinstance(value, bool) or not isinstance(value, int | dict | list | tuple):
        raise StateError(f"cannot digest a {type(value).__name__} in a message")
    elif isinstance(value, int):
        h.update(b"I" + str(value).encode() + b";")
    elif isinstance(value, dict):
        h.update(b"D" + len(value).to_bytes(8, "big"))
        for key, item in value.items():
            _feed(h, str(key))
            _feed(h, item)
    else:
        h.update(b"L" + len(value).to_bytes(8, "big"))
        for item in value:
            _feed(h, item)


@dataclass(frozen=True, kw_only=True)
class JournalEntry:
    """What a device did in one session: the last stage, its request and its release."""

    stage: str
    request: bytes
    released: bytes


class SessionJournal:
    """The append-only, durable session record of one device (see the module doc).

    ``sink`` receives :meth:`state_dict` after every change, before the client
    that made it returns; it must write durably or raise (a raise stops the
    client from releasing anything). Without a sink the journal lives only as
    long as this object, so the rules hold across restores only if the caller
    passes the same object (tests, the in-process simulator).
    """

    def __init__(self, *, device_id: str, sink: Sink | None = None) -> None:
        if not isinstance(device_id, str) or not device_id:
            raise StateError("a session journal belongs to one device id")
        self.device_id = device_id
        self._sink = sink
        self._entries: dict[bytes, JournalEntry] = {}

    def get(self, session_id: bytes) -> JournalEntry | None:
        return self._entries.get(session_id)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, session_id: bytes, *, stage: str, request: bytes, released: bytes) -> None:
        """Move ``session_id`` forward to ``stage``; never backwards, never sideways."""
        if stage not in STAGE_ORDER:
            raise StateError(f"unknown stage {stage!r}")
        old = self._entries.get(session_id)
        if old is not None and STAGE_ORDER.index(stage) < STAGE_ORDER.index(old.stage):
            raise StateError(f"session journal cannot move back from {old.stage} to {stage}")
        if (
            old is not None
            and old.stage == stage
            and old != JournalEntry(stage=stage, request=request, released=released)
        ):
            raise StateError(f"session journal already holds a different {stage} release")
        entries = dict(self._entries)
        entries[session_id] = JournalEntry(stage=stage, request=request, released=released)
        if self._sink is not None:
            self._sink(self._sealed(entries))  # durable first; only then the new entry counts
        self._entries = entries

    def _sealed(self, entries: Mapping[bytes, JournalEntry]) -> dict[str, Any]:
        return seal(
            JOURNAL_KIND,
            JOURNAL_VERSION,
            {
                "device_id": self.device_id,
                "sessions": [
                    [sid, e.stage, e.request, e.released] for sid, e in sorted(entries.items())
                ],
            },
        )

    def state_dict(self) -> dict[str, Any]:
        return self._sealed(self._entries)

    @classmethod
    def from_state_dict(
        cls, saved: object, *, device_id: str, sink: Sink | None = None
    ) -> SessionJournal:
        payload = open_envelope(
            saved, kind=JOURNAL_KIND, format_version=JOURNAL_VERSION, error=StateError
        )
        if set(payload) != {"device_id", "sessions"} or payload["device_id"] != device_id:
            raise StateError("session journal of another device, or with unknown keys")
        rows = payload["sessions"]
        if not isinstance(rows, list):
            raise StateError("session journal rows must be a list")
        journal = cls(device_id=device_id, sink=sink)
        for row in rows:
            if not isinstance(row, list | tuple) or len(row) != 4:
                raise StateError("a session journal row is [session_id, stage, request, released]")
            sid, stage, request, released = row
            ok = isinstance(sid, bytes) and stage in STAGE_ORDER
            ok = ok and all(isinstance(v, bytes) for v in (request, released))
            if not ok or sid in journal._entries:
                raise StateError("malformed or duplicate session journal row")
            journal._entries[sid] = JournalEntry(stage=stage, request=request, released=released)
        return journal
