"""One envelope for every saved state: kind, format version, payload.

Strategies, the engine, privacy ledgers, edge budgets, update buffers and
secure-aggregation sessions all save themselves as plain data through
``state_dict()`` and restore with ``load_state_dict(state)`` (the Opacus
accountant habit). Whatever the payload, the outside is the same::

    {"kind": "fedward.coordinator.strategy.ftte", "format_version": 1, "payload": {...}}

and every load starts with :func:`open_envelope`, which refuses a state of
another kind or an unknown format version before any of the payload is
looked at. The payload's own checks (shapes, checksums, consistency) stay
with its owner; so does the choice of error class (``error=``), which must be
a :class:`~fedward.errors.SavedStateError`.

Why not one checksum here: payloads differ (JSON-only ledgers carry a
SHA-256 of their canonical form; strategy buffers hold numpy arrays that the
store writes as blobs), so integrity is the payload's concern.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import SavedStateError

__all__ = ["ENVELOPE_KEYS", "open_envelope", "seal"]

ENVELOPE_KEYS = frozenset({"kind", "format_version", "payload"})


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
) -> Mapping[str, Any]:
    """The payload of ``state`` if it is a ``kind`` state of ``format_version``; else ``error``."""
    if not isinstance(state, Mapping):
        raise error(f"a saved {kind} state must be a mapping, not {type(state).__name__}")
    if set(state) != ENVELOPE_KEYS:
        raise error(
            f"a saved {kind} state has exactly the keys {sorted(ENVELOPE_KEYS)}; "
            f"got {sorted(map(str, state))}"
        )
    if state["kind"] != kind:
        raise error(f"this is a saved {state['kind']!r} state, not {kind!r}")
    found = state["format_version"]
    if isinstance(found, bool) or found != format_version:
        raise error(
            f"saved {kind} state has format version {found!r}; this build reads {format_version}"
        )
    payload = state["payload"]
    if not isinstance(payload, Mapping):
        raise error(f"the payload of a saved {kind} state must be a mapping")
    return payload
