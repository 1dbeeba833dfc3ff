"""One envelope for every saved state: kind, format version, payload.

Strategies and their wrappers, update buffers, the engine, the privacy guard,
privacy ledgers, edge budgets, the model lineage and secure-aggregation
sessions all save themselves as plain data through ``state_dict()`` and
restore with ``load_state_dict(state)`` (the Opacus accountant habit).
Whatever the payload, the outside is the same::

    {"kind": "fedward.coordinator.strategy", "format_version": 3, "payload": {...}}

and every load starts with :func:`open_envelope`, which refuses a state of
another kind or an unknown format version before any of the payload is
looked at. The payload's own checks (shapes, checksums, consistency) stay
with its owner; so does the choice of error class (``error=``), which must be
a :class:`~fedward.errors.SavedStateError`.

Checksums: a JSON-only payload can carry a SHA-256 of its canonical JSON
(``seal_checked`` / ``open_checked``: the privacy ledger, the device budget),
so a file corrupted on disk, or edited without recomputing the checksum, is
refused rather than believed. It is a plain hash, not a signature or a MAC:
whoever can write the file can recompute it, so it does not stop a deliberate
forger (the privacy ledger's authenticity comes from the signed audit log its
spends are recorded in). Payloads that hold numpy arrays (strategy buffers,
which the store writes as content-addressed blobs) check their content
themselves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .errors import SavedStateError

__all__ = [
    "CHECKSUM_KEY",
    "ENVELOPE_KEYS",
    "content_sha256",
    "open_checked",
    "open_envelope",
    "seal",
    "seal_checked",
]

ENVELOPE_KEYS = frozenset({"kind", "format_version", "payload"})
CHECKSUM_KEY = "sha256"


def seal(kind: str, format_version: int, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The saved form of ``payload``: the envelope around it."""
    if not kind or not isinstance(kind, str):
        raise ValueError("a saved state needs a non-empty kind")
    if isinstance(format_version, bool) or not isinstance(format_version, int):
        raise ValueError("format_version must be an int")
    return {"kind": kind, "format_version": format_version, "payload": dict(payload)}


def open_envelope(
    state: object,
    *,
    kind: str,
    format_version: int,
    error: type[SavedStateError] = SavedStateError,
    before_envelope: str = "",
) -> Mapping[str, Any]:
    """The payload of ``state`` if it is a ``kind`` state of ``format_version``; else ``error``.

    A state written before this envelope existed (a flat mapping with a
    ``format`` key) is refused with what it is, what this build reads and
    ``before_envelope``: what its owner should do instead (convert it, keep
    it, abandon it), which only the owner knows.
    """
    if not isinstance(state, Mapping):
        raise error(f"a saved {kind} state must be a mapping, not {type(state).__name__}")
    if "payload" not in state and "format" in state:
        raise error(
            f"this {kind} state was saved before the saved-state envelope (format "
            f"{state.get('format')!r} version {state.get('version')!r}); this build reads "
            f"kind {kind!r} format_version {format_version}. {before_envelope}".rstrip(" .")
        )
    if set(state) != ENVELOPE_KEYS:
        raise error(
            f"a saved {kind} state has exactly the keys {sorted(ENVELOPE_KEYS)}; "
            f"got {sorted(map(str, state))}"
        )
    if state["kind"] != kind:
        raise error(f"this is a saved {state['kind']!r} state, not {kind!r}")
    found = state["format_version"]
    if type(found) is not int or found != format_version:  # not 1.0, not True
        raise error(
            f"saved {kind} state has format version {found!r}; this build reads {format_version}"
        )
    payload = state["payload"]
    if not isinstance(payload, Mapping):
        raise error(f"the payload of a saved {kind} state must be a mapping")
    return payload


def content_sha256(content: Mapping[str, Any]) -> str:
    """SHA-256 hex of ``content``'s canonical JSON (sorted keys, no spaces, no NaN).

    Raises ``TypeError``/``ValueError`` for content that is not plain JSON.
    """
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def seal_checked(kind: str, format_version: int, content: Mapping[str, Any]) -> dict[str, Any]:
    """An envelope whose payload is ``content`` plus its ``CHECKSUM_KEY``."""
    if CHECKSUM_KEY in content:
        raise ValueError(f"content may not hold the checksum key {CHECKSUM_KEY!r}")
    return seal(kind, format_version, {**content, CHECKSUM_KEY: content_sha256(content)})


def open_checked(
    state: object,
    *,
    kind: str,
    format_version: int,
    keys: frozenset[str],
    error: type[SavedStateError] = SavedStateError,
    before_envelope: str = "",
) -> dict[str, Any]:
    """The content of a :func:`seal_checked` state: exactly ``keys``, checksum intact."""
    payload = open_envelope(
        state,
        kind=kind,
        format_version=format_version,
        error=error,
        before_envelope=before_envelope,
    )
    if set(payload) != keys | {CHECKSUM_KEY}:
        raise error(
            f"saved {kind} payload keys must be {sorted(keys | {CHECKSUM_KEY})}, "
            f"got {sorted(map(str, payload))}"
        )
    content = {k: v for k, v in payload.items() if k != CHECKSUM_KEY}
    try:
        intact = content_sha256(content) == payload[CHECKSUM_KEY]
    except (TypeError, ValueError) as exc:
        raise error(f"saved {kind} state is not canonical JSON: {exc}") from exc
    if not intact:
        raise error(f"saved {kind} state checksum mismatch: corrupted or edited")
    return content
