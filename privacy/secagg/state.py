"""Helpers for ``state_dict`` / ``load_state_dict`` of the client and the server.

A state dict is a :mod:`fedward.saved_state` envelope around a plain
structure of dict, list, str, int, bytes and None (no numpy, no pickled
objects); the caller chooses how to persist it. The payload names the session
it belongs to and the config fingerprint beside the stage's content; loading
checks the envelope (kind, format version), then the session, then
re-validates the content for its stage.

A state saved before the envelope (format version 1) is refused and not
converted: a session lives one round, so the way out is to abort it and start
a new one, never to start this device or server over within the same session.

A client state dict holds the device's secrets (X25519 private keys, self-mask
seed, decrypted shares of its peers' secrets): persist it only where the
device's own secrets may live (encrypted at rest).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, fields, is_dataclass
from typing import Any, TypeVar

from fedward.saved_state import open_envelope, seal

from .config import SecAggConfig, SecAggSession
from .errors import StateError
from .messages import (
    EncryptedShare,
    RevealedShare,
    ShareBundle,
    UnmaskResponse,
)

# 1: a flat dict with "format" and "version" beside the content; 2: the envelope;
# 3: the client also holds its request digest and the exact message it released.
STATE_VERSION = 3
SESSION_KEYS = (
    "session_id",
    "round_index",
    "cohort",
    "vector_length",
    "index_set_digest",
    "config",
)

_NESTED: dict[tuple[type, str], type] = {
    (ShareBundle, "shares"): EncryptedShare,
    (UnmaskResponse, "seed_shares"): RevealedShare,
    (UnmaskResponse, "key_shares"): RevealedShare,
}

M = TypeVar("M")
E = TypeVar("E", bound=enum.Enum)


def session_header(session: SecAggSession, config: SecAggConfig) -> dict[str, Any]:
    """What ties a saved state to its session: ids, cohort, shapes and config fingerprint."""
    return {
        "session_id": session.session_id,
        "round_index": session.round_index,
        "cohort": list(session.cohort),
        "vector_length": session.vector_length,
        "index_set_digest": session.index_set_digest,
        "config": config.fingerprint(),
    }


def seal_state(
    kind: str, session: SecAggSession, config: SecAggConfig, content: Mapping[str, Any]
) -> dict[str, Any]:
    """The saved form of a client's or server's ``content`` in ``session``."""
    clash = set(content) & set(SESSION_KEYS)
    if clash:
        raise ValueError(f"state content may not reuse the session keys {sorted(clash)}")
    return seal(kind, STATE_VERSION, {**session_header(session, config), **content})


def open_state(
    saved: object,
    *,
    kind: str,
    session: SecAggSession,
    config: SecAggConfig,
    content_keys: frozenset[str],
) -> Mapping[str, Any]:
    """The payload of ``saved`` if it is a ``kind`` state of ``session`` with exactly its keys."""
    payload = open_envelope(
        saved,
        kind=kind,
        format_version=STATE_VERSION,
        error=StateError,
        before_envelope="That session cannot be resumed: abort it and run a new session "
        "(do not start over in the same one)",
    )
    expected_keys = set(SESSION_KEYS) | content_keys
    if set(payload) != expected_keys:
        missing, extra = expected_keys - set(payload), set(payload) - expected_keys
        raise StateError(
            f"{kind} state payload lacks {sorted(missing)} / has unknown {sorted(map(str, extra))}"
        )
    expected = session_header(session, config)
    for key in SESSION_KEYS[:-1]:
        if payload[key] != expected[key]:
            raise StateError(f"state belongs to another session ({key} differs)")
    if payload["config"] != expected["config"]:
        raise StateError("state was saved under a different SecAggConfig")
    return payload


def parse_stage(enum_cls: type[E], value: object) -> E:
    if not isinstance(value, str) or value not in enum_cls.__members__:
        raise StateError(f"unknown stage {value!r}")
    return enum_cls[value]


def opt_bytes(value: object, length: int, what: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, bytes) or len(value) != length:
        raise StateError(f"{what} must be {length} bytes")
    return value


def to_plain(msg: object) -> dict[str, Any]:
    if not is_dataclass(msg) or isinstance(msg, type):
        raise StateError("expected a message dataclass")
    return asdict(msg)


def from_plain(cls: type[M], data: object) -> M:
    """Rebuild a message dataclass from :func:`to_plain` output (fields are re-validated later)."""
    if not isinstance(data, Mapping):
        raise StateError(f"{cls.__name__} state must be a mapping")
    if not is_dataclass(cls):
        raise StateError(f"{cls.__name__} is not a message dataclass")
    names = {f.name for f in fields(cls)}
    if set(data) != names:
        raise StateError(
            f"{cls.__name__} state has fields {sorted(data)}, expected {sorted(names)}"
        )
    kwargs: dict[str, Any] = {}
    for name in names:
        value = data[name]
        nested = _NESTED.get((cls, name))
        if nested is not None:
            if not isinstance(value, list | tuple):
                raise StateError(f"{cls.__name__}.{name} must be a list")
            value = tuple(from_plain(nested, v) for v in value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
