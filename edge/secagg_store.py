"""A device's durable SecAgg storage: the session journal and one state file per session.

Why on disk, and in this order: the one-shot rules of secure aggregation
(mask one input per session, answer one unmask request, never start a session
id twice) must survive ``kill -9``, or a coordinator that can make a device
restart learns an individual update (issue 11: a device restored from its own
saved state answered a second, different unmask request and its update was
recovered). :class:`~fedward.privacy.secagg.SecAggClient` writes, before it
returns any message, first its :class:`~fedward.privacy.secagg.SessionJournal`
(digests only) and then its saved state holding the exact message; this module
makes both writes durable before they return:

* the journal is an append-only file (``journal.log``): one JSON line per
  change, each line carrying the SHA-256 of its own content, appended with
  ``O_APPEND`` and ``fsync``'d before the write returns. A crash mid-append
  leaves a torn last line; loading drops it (that write never returned, so
  nothing it guarded was released) and truncates it away. A bad line followed
  by good ones is corruption, not a crash, and is refused;
* each session's state is a file ``sessions/<session id hex>.json`` written
  atomically: temporary file, ``fsync``, rename, ``fsync`` of the directory.

Opening the store refuses a journal that is behind a saved state (a journal
restored from an older copy would let a session id start again or a saved
state claim a stage the journal never recorded): every state file must have a
journal entry at its stage or later. The client itself then refuses a state
that is not exactly where the journal is (an older state, which would mask or
answer twice).

The state files hold the device's secrets for the session (X25519 keys, the
self-mask seed, its peers' decrypted shares): files are ``0600`` in a ``0700``
directory, the same rule as the device key. The journal holds digests only and
is kept for the device's lifetime (a session id must never become reusable).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from fedward.privacy.secagg import SessionJournal, StateError
from fedward.privacy.secagg.journal import JOURNAL_KIND, JOURNAL_VERSION, STAGE_ORDER
from fedward.saved_state import open_envelope, seal

from .durable import TMP_SUFFIX, fsync_dir, replace_durably, write_all

__all__ = ["JOURNAL_FILE", "SESSIONS_DIR", "SecAggStore", "decode_plain", "encode_plain"]

JOURNAL_FILE = "journal.log"
SESSIONS_DIR = "sessions"
_STATE_SUFFIX = ".json"
_BYTES_TAG = "__bytes__"
_LINE_FORMAT = 1
_WRITE_CHUNK = 1 << 14


def encode_plain(value: object) -> object:
    """A saved state's plain data (dict, list, tuple, str, int, bool, None, bytes) as JSON data.

    Bytes become ``{"__bytes__": hex}``; tuples become lists (the SecAgg loaders
    take either, and message digests treat both alike).
    """
    if isinstance(value, bytes):
        return {_BYTES_TAG: value.hex()}
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or key == _BYTES_TAG:
                raise StateError(f"cannot store the key {key!r} in a SecAgg state file")
            out[key] = encode_plain(item)
        return out
    if isinstance(value, list | tuple):
        return [encode_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise StateError(f"cannot store a {type(value).__name__} in a SecAgg state file")


def decode_plain(value: object) -> object:
    """Inverse of :func:`encode_plain`."""
    if isinstance(value, dict):
        if set(value) == {_BYTES_TAG}:
            raw = value[_BYTES_TAG]
            if not isinstance(raw, str):
                raise StateError("a stored bytes value must be hex")
            try:
                return bytes.fromhex(raw)
            except ValueError:
                raise StateError("a stored bytes value is not hex") from None
        return {k: decode_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_plain(v) for v in value]
    return value


def _dump(value: object, out: BinaryIO) -> None:
    """Write ``encode_plain(value)`` as JSON to ``out``, piece by piece.

    Streamed because a masked input is the largest thing a wearable holds:
    ``json.dumps`` of its hex would hold three more copies of it at once (hex
    string, JSON string, encoded bytes); here bytes go out as hex in chunks.
    """
    if isinstance(value, bytes):
        out.write(b'{"' + _BYTES_TAG.encode() + b'":"')
        for at in range(0, len(value), _WRITE_CHUNK // 2):
            out.write(value[at : at + _WRITE_CHUNK // 2].hex().encode("ascii"))
        out.write(b'"}')
    elif isinstance(value, Mapping):
        out.write(b"{")
        for i, key in enumerate(sorted(value)):
            if not isinstance(key, str) or key == _BYTES_TAG:
                raise StateError(f"cannot store the key {key!r} in a SecAgg state file")
            out.write((b"," if i else b"") + json.dumps(key).encode("ascii") + b":")
            _dump(value[key], out)
        out.write(b"}")
    elif isinstance(value, list | tuple):
        out.write(b"[")
        for i, item in enumerate(value):
            if i:
                out.write(b",")
            _dump(item, out)
        out.write(b"]")
    elif value is None or isinstance(value, str | int | float | bool):
        out.write(json.dumps(value, allow_nan=False).encode("ascii"))
    else:
        raise StateError(f"cannot store a {type(value).__name__} in a SecAgg state file")


def _line_digest(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(b"fedward.edge.secagg.journal-line.v1" + canonical.encode()).hexdigest()


def _line(body: Mapping[str, Any]) -> bytes:
    text = json.dumps({**body, "sha256": _line_digest(body)}, sort_keys=True, separators=(",", ":"))
    return text.encode("ascii") + b"\n"


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    """The body of one journal line, or None if it is not a complete, intact line."""
    if not raw.endswith(b"\n"):
        return None
    try:
        data = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("sha256"), str):
        return None
    body = {k: v for k, v in data.items() if k != "sha256"}
    return body if _line_digest(body) == data["sha256"] else None


class SecAggStore:
    """The SecAgg storage of one device under ``root`` (created ``0700``).

    ``journal`` is the device's :class:`SessionJournal`, loaded from disk, whose
    sink appends to the journal file; pass it to every ``SecAggClient`` of this
    device. :meth:`save_state` is the client's ``persist`` (per session).
    Raises :class:`StateError` at open for a journal of another device, a
    corrupt journal, or a journal behind a saved state.
    """

    def __init__(self, root: Path, *, device_id: str) -> None:
        if not isinstance(device_id, str) or not device_id:
            raise StateError("a SecAgg store belongs to one device id")
        self.root = root
        self.device_id = device_id
        self.sessions_dir = root / SESSIONS_DIR
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.sessions_dir.mkdir(mode=0o700, exist_ok=True)
        for stale in self.sessions_dir.glob(f"*{TMP_SUFFIX}"):  # a crash mid-write
            stale.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self.journal_path = root / JOURNAL_FILE
        rows = self._load_journal()
        self._rows: dict[bytes, tuple[str, bytes, bytes]] = rows
        self.journal = SessionJournal.from_state_dict(
            seal(
                JOURNAL_KIND,
                JOURNAL_VERSION,
                {
                    "device_id": device_id,
                    "sessions": [[sid, *row] for sid, row in sorted(rows.items())],
                },
            ),
            device_id=device_id,
            sink=self._append,
        )
        self._check_states_against_journal()

    # -- journal ---------------------------------------------------------------------

    def _load_journal(self) -> dict[bytes, tuple[str, bytes, bytes]]:
        if not self.journal_path.exists():
            self._create_journal()
            return {}
        data = self.journal_path.read_bytes()
        lines = data.splitlines(keepends=True)
        bodies: list[dict[str, Any]] = []
        good_bytes = 0
        for i, raw in enumerate(lines):
            body = _parse_line(raw)
            if body is None:
                if i == len(lines) - 1:  # a torn last append: it never returned
                    break
                raise StateError(
                    f"{self.journal_path}: line {i + 1} is damaged and later lines follow it; "
                    "this is corruption, not a crash: refusing the journal"
                )
            bodies.append(body)
            good_bytes += len(raw)
        if not bodies:
            raise StateError(f"{self.journal_path} has no intact header line")
        header = bodies[0]
        if header != {"format": _LINE_FORMAT, "kind": JOURNAL_KIND, "device_id": self.device_id}:
            raise StateError(f"{self.journal_path} is not this device's SecAgg journal")
        rows: dict[bytes, tuple[str, bytes, bytes]] = {}
        for body in bodies[1:]:
            sid, row = self._row(body)
            old = rows.get(sid)
            if old is not None and STAGE_ORDER.index(row[0]) < STAGE_ORDER.index(old[0]):
                raise StateError(f"{self.journal_path}: a session moves back from {old[0]}")
            rows[sid] = row
        if good_bytes < len(data):
            with open(self.journal_path, "r+b") as f:  # drop the torn tail for good
                f.truncate(good_bytes)
                f.flush()
                os.fsync(f.fileno())
        return rows

    def _row(self, body: Mapping[str, Any]) -> tuple[bytes, tuple[str, bytes, bytes]]:
        if set(body) != {"session_id", "stage", "request", "released"}:
            raise StateError(f"{self.journal_path}: a journal line has unknown fields")
        try:
            sid = bytes.fromhex(body["session_id"])
            request = bytes.fromhex(body["request"])
            released = bytes.fromhex(body["released"])
        except (TypeError, ValueError):
            raise StateError(f"{self.journal_path}: a journal line is not hex") from None
        if body["stage"] not in STAGE_ORDER or not sid:
            raise StateError(f"{self.journal_path}: a journal line has an unknown stage")
        return sid, (body["stage"], request, released)

    def _create_journal(self) -> None:
        header = {"format": _LINE_FORMAT, "kind": JOURNAL_KIND, "device_id": self.device_id}
        replace_durably(self.journal_path, _line(header))

    def _append(self, sealed: dict[str, Any]) -> None:
        """The journal's sink: append what changed, fsync, then return (or raise)."""
        payload = open_envelope(
            sealed, kind=JOURNAL_KIND, format_version=JOURNAL_VERSION, error=StateError
        )
        if payload.get("device_id") != self.device_id:
            raise StateError("a journal of another device was handed to this store")
        new: dict[bytes, tuple[str, bytes, bytes]] = {}
        for sid, stage, request, released in payload["sessions"]:
            new[sid] = (stage, request, released)
        with self._lock:
            if not set(self._rows) <= set(new):
                raise StateError("a journal that forgets sessions cannot be written")
            changed = [(sid, row) for sid, row in sorted(new.items()) if self._rows.get(sid) != row]
            if not changed:
                return
            data = b"".join(
                _line(
                    {
                        "session_id": sid.hex(),
                        "stage": stage,
                        "request": request.hex(),
                        "released": released.hex(),
                    }
                )
                for sid, (stage, request, released) in changed
            )
            fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            try:
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._rows = new

    # -- session states --------------------------------------------------------------

    def _state_path(self, session_id: bytes) -> Path:
        if not isinstance(session_id, bytes) or not session_id:
            raise StateError("a session id is non-empty bytes")
        return self.sessions_dir / f"{session_id.hex()}{_STATE_SUFFIX}"

    def save_state(self, session_id: bytes, state: Mapping[str, Any], *, stage: str) -> None:
        """Write ``state`` for ``session_id`` atomically and durably (returns once on disk).

        ``stage`` is the client stage the state is at (a ``STAGE_ORDER`` name): opening
        the store compares it with the journal without parsing the state.
        """
        if stage not in STAGE_ORDER:
            raise StateError(f"unknown stage {stage!r}")
        path = self._state_path(session_id)
        record = {"stage": stage, "state": state}
        with self._lock:
            replace_durably(path, lambda f: _dump(record, f), buffering=_WRITE_CHUNK)

    def load_state(self, session_id: bytes) -> dict[str, Any] | None:
        """The last state saved for ``session_id`` (None if none); StateError if unreadable."""
        record = self._record(session_id)
        return None if record is None else record[1]

    def stored_stage(self, session_id: bytes) -> str | None:
        """The stage of the last state saved for ``session_id`` (None if none)."""
        record = self._record(session_id)
        return None if record is None else record[0]

    def _record(self, session_id: bytes) -> tuple[str, dict[str, Any]] | None:
        path = self._state_path(session_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            raise StateError(f"{path} is not a readable SecAgg state") from None
        if not isinstance(data, dict) or set(data) != {"stage", "state"}:
            raise StateError(f"{path} does not hold a saved SecAgg state")
        stage, state = data["stage"], decode_plain(data["state"])
        if stage not in STAGE_ORDER or not isinstance(state, dict):
            raise StateError(f"{path} does not hold a saved SecAgg state")
        return str(stage), state

    def session_ids(self) -> tuple[bytes, ...]:
        """Sessions with a state file on disk (sorted)."""
        out = []
        for path in self.sessions_dir.glob(f"*{_STATE_SUFFIX}"):
            try:
                out.append(bytes.fromhex(path.name[: -len(_STATE_SUFFIX)]))
            except ValueError:
                continue
        return tuple(sorted(out))

    def discard_state(self, session_id: bytes) -> bool:
        """Delete a finished session's state (its secrets); the journal entry stays.

        Only for a session the journal has at DONE or ABORTED; False if no file.
        """
        entry = self.journal.get(session_id)
        if entry is None or entry.stage not in ("DONE", "ABORTED"):
            raise StateError("only a finished (DONE or ABORTED) session's state can be discarded")
        path = self._state_path(session_id)
        with self._lock:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            fsync_dir(self.sessions_dir)
            return True

    def _check_states_against_journal(self) -> None:
        for sid in self.session_ids():
            stage = self.stored_stage(sid)
            entry = self.journal.get(sid)
            if stage is None:
                continue
            if entry is None or STAGE_ORDER.index(entry.stage) < STAGE_ORDER.index(stage):
                raise StateError(
                    f"{self.journal_path} is behind the saved state of session {sid.hex()[:16]} "
                    f"(state at {stage}, journal at {entry.stage if entry else 'no entry'}): an "
                    "older journal would let a session be started or answered again; refusing it"
                )
