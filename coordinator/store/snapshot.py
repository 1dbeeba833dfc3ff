"""Engine state as a JSON document, so a restarted coordinator resumes a study.

The engine says what its state is (``Engine.state_dict``, an envelope checked
again by ``Engine.load_state_dict``); this module only decides how it is
stored:

* large arrays never go into the JSON: the current model and the bases of
  tasks in flight are model versions (the engine names them in
  ``live_versions``; their tensors are loaded from the blob store by version),
  and each buffered update's delta is a blob referenced by its SHA-256
  (``delta_sha256`` in place of ``delta``);
* everything else (devices, tasks, counters, the RNG, the strategy and its
  wrappers, open rounds, the guards' states such as the privacy ledger) is
  the engine's own document, saved as it is.

Buffers are found by their envelope kind (``BUFFER_KIND``) wherever they sit
in the strategy's state, so a wrapper around a wrapper around FTTE is stored
like plain FTTE and this module knows no strategy's layout. Snapshots written
before the saved-state envelope (engine formats 1 and 2) are refused with a
clear error. ``restore_engine`` expects an engine freshly built from the same
spec (same strategy configuration, planner and model shapes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedward.coordinator.engine import ENGINE_STATE_FORMAT, Engine
from fedward.coordinator.engine.records import ENGINE_STATE_FORMAT_BEFORE_FILLS, ENGINE_STATE_KIND
from fedward.coordinator.errors import StateLoadError
from fedward.coordinator.strategies.base import SavedUpdates, map_saved_buffers
from fedward.saved_state import open_envelope
from fedward.tinytrain.models import Params

from .blobs import BlobError

SNAPSHOT_FORMAT = ENGINE_STATE_FORMAT

DeltaRef = Callable[[str, Mapping[str, np.ndarray]], str]
"""(task_id, delta) -> SHA-256 of the stored delta blob."""
DeltaLoad = Callable[[str], Mapping[str, np.ndarray]]
"""SHA-256 of a stored delta blob -> the delta."""


def engine_snapshot(engine: Engine, *, delta_ref: DeltaRef) -> dict[str, Any]:
    """The engine's state as JSON-ready data (buffered deltas by reference)."""

    def by_reference(update: Mapping[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in update.items() if k != "delta"}
        return kept | {"delta_sha256": delta_ref(update["task_id"], update["delta"])}

    snapshot = map_saved_buffers(
        engine.state_dict(), lambda updates: [by_reference(u) for u in updates]
    )
    if not isinstance(snapshot, dict):
        raise StateLoadError("engine state is not a mapping")
    return snapshot


def restore_engine(
    engine: Engine,
    state: Mapping[str, Any],
    *,
    load_params: Callable[[int], Params],
    load_delta: DeltaLoad,
) -> None:
    """Put a stored snapshot into a freshly built ``engine`` (same spec)."""
    # A snapshot written before secure aggregation (format 3) has no fills; the
    # engine reads it as a state without any, so it is opened at its own format.
    found = state.get("format_version") if isinstance(state, Mapping) else None
    opened_at = (
        ENGINE_STATE_FORMAT_BEFORE_FILLS
        if type(found) is int and found == ENGINE_STATE_FORMAT_BEFORE_FILLS
        else SNAPSHOT_FORMAT
    )
    payload = open_envelope(
        state,
        kind=ENGINE_STATE_KIND,
        format_version=opened_at,
        error=StateLoadError,
        before_envelope="It was written by an older fedward: start the study again "
        "(no upgrade path exists before 0.2)",
    )

    def by_value(update: Mapping[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in update.items() if k != "delta_sha256"}
        return kept | {"delta": dict(load_delta(update["delta_sha256"]))}

    try:
        versions = {int(v): load_params(int(v)) for v in payload["live_versions"]}
        full = map_saved_buffers(state, lambda updates: [by_value(u) for u in updates])
    except BlobError:
        raise  # a missing or corrupted blob says so itself (BlobNotFound is a KeyError too)
    except (KeyError, TypeError, ValueError) as exc:
        raise StateLoadError(f"engine snapshot is malformed: {exc!r}") from exc
    engine.load_state_dict(full, versions=versions)


def buffered_delta_refs(snapshot: Mapping[str, Any]) -> dict[str, str]:
    """task id -> SHA-256 of its delta blob, for every update buffered in ``snapshot``."""
    refs: dict[str, str] = {}

    def collect(updates: SavedUpdates) -> SavedUpdates:
        refs.update((str(u["task_id"]), str(u["delta_sha256"])) for u in updates)
        return updates

    map_saved_buffers(snapshot, collect)
    return refs
