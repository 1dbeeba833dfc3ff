"""Helpers for ``state_dict`` / ``load_state_dict`` of the client and the server.

A state dict is a plain structure of dict, list, str, int, bytes and None (no
numpy, no pickled objects); the caller chooses how to persist it. It carries a
format name and version, the session it belongs to and the config fingerprint;
loading checks all of them and then re-validates the content for its stage.

A client state dict holds the device's secrets (X25519 private keys, self-mask
seed, decrypted shares of its peers' secrets): persist it only where the
device's own secrets may live (encrypted at rest).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, fields, is_dataclass
from typing import Any, TypeVar

from .config import SecAggConfig, SecAggSession
from .errors import StateError
from .messages import (
    EncryptedShare,
    RevealedShare,
    ShareBundle,
    UnmaskResponse,
)

STATE_VERSION = 1

_NESTED: dict[tuple[type, str], type] = {
    (ShareBundle, "shares"): EncryptedShare,
    (UnmaskResponse, "seed_shares"): RevealedShare,
    (UnmaskResponse, "key_shares"): RevealedShare,
}

M = TypeVar("M")
E = TypeVar("E", bound=enum.Enum)


def header(kind: str, session: SecAggSession, config: SecAggConfig) -> dict[str, Any]:
    return {
        "format": kind,
        "version": STATE_VERSION,
        "session_id": session.session_id,
        "round_index": session.round_index,
        "cohort": list(session.cohort),
        "vector_length": session.vector_length,
        "index_set_digest": session.index_set_digest,
        "config": config.fingerprint(),
    }


def check_header(
    state: object, kind: str, session: SecAggSession, config: SecAggConfig
) -> Mapping[str, Any]:
    if not isinstance(state, Mapping):
        raise StateError("state_dict must be a mapping")
    if state.get("format") != kind:
        raise StateError(f"not a {kind} state (format={state.get('format')!r})")
    if state.get("version") != STATE_VERSION:
        raise StateError(f"unsupported state version {state.get('version')!r}")
    expected = header(kind, session, config)
    for key in ("session_id", "round_index", "cohort", "vector_length", "index_set_digest"):
        if state.get(key) != expected[key]:
            raise StateError(f"state belongs to another session ({key} differs)")
    if state.get("config") != expected["config"]:
        raise StateError("state was saved under a different SecAggConfig")
    return state


def parse_stage(enum_cls: type[E], value: object) -> E:
    try:
        return enum_cls[value]  # type: ignore[index]
    except (KeyError, TypeError):
        raise StateError(f"unknown stage {value!r}") from None


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
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
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
