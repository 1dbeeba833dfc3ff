"""Engine state as a JSON document, so a restarted coordinator resumes a study.

The engine says what its state is (``Engine.state_dict``, checked again by
``Engine.load_state_dict``); this module only decides how it is stored:

* large arrays never go into the JSON: the current model and the bases of
  tasks in flight are model versions (the engine names them in
  ``live_versions``; their tensors are loaded from the blob store by version),
  and each buffered update's delta is a blob referenced by its SHA-256
  (``delta_sha256`` in place of ``delta``);
* everything else (devices, tasks, counters, the RNG, the strategy's buffer
  and open round, the guards' states such as the privacy ledger) is the
  engine's own document, saved as it is.

Documents of format 1 (written before the engine owned its state: a FedAvg
round was kept beside the strategy's state as ``strategy_extra``) are upgraded
when read. ``restore_engine`` expects an engine freshly built from the same
spec (same strategy configuration, planner and model shapes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from fedward.coordinator.engine import ENGINE_STATE_FORMAT, Engine
from fedward.coordinator.errors import StateLoadError
from fedward.coordinator.strategies import StrategyName

SNAPSHOT_FORMAT = ENGINE_STATE_FORMAT
_LEGACY_FORMAT = 1

Params = dict[str, np.ndarray]
DeltaRef = Callable[[str, Mapping[str, np.ndarray]], str]
"""(task_id, delta) -> SHA-256 of the stored delta blob."""


def live_versions(engine: Engine) -> list[int]:
    """Model versions the engine still holds: the current one and bases in flight."""
    return engine.live_versions()


def engine_snapshot(engine: Engine, *, delta_ref: DeltaRef) -> dict[str, Any]:
    """The engine's state as JSON-ready data (buffered deltas by reference)."""
    state = engine.state_dict()
    strategy = state["strategy"]
    buffer = [
        {k: v for k, v in item.items() if k != "delta"}
        | {"delta_sha256": delta_ref(item["task_id"], item["delta"])}
        for item in strategy["buffer"]
    ]
    return {**state, "strategy": {**strategy, "buffer": buffer}}


def restore_engine(
    engine: Engine,
    state: Mapping[str, Any],
    *,
    load_params: Callable[[int], Params],
    load_delta: Callable[[str], Mapping[str, np.ndarray]],
) -> None:
    """Put a stored snapshot into a freshly built ``engine`` (same spec)."""
    state = upgrade_snapshot(state)
    try:
        versions = {int(v): load_params(int(v)) for v in state["live_versions"]}
        strategy = dict(state["strategy"])
        strategy["buffer"] = [
            {k: v for k, v in item.items() if k != "delta_sha256"}
            | {"delta": dict(load_delta(item["delta_sha256"]))}
            for item in strategy["buffer"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise StateLoadError(f"engine snapshot is malformed: {exc!r}") from exc
    engine.load_state_dict({**state, "strategy": strategy}, versions=versions)


def upgrade_snapshot(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """A snapshot in the current format (format 1 is converted; others are refused)."""
    found = state.get("format")
    if found == SNAPSHOT_FORMAT:
        return state
    if found != _LEGACY_FORMAT:
        raise StateLoadError(f"unsupported engine snapshot format {found!r}")
    try:
        strategy = dict(state["strategy"])
        extra = state.get("strategy_extra") or {}
        if strategy.get("strategy") == StrategyName.FEDAVG.value:
            strategy["round"] = {
                "cohort": list(extra.get("cohort", [])),
                "dropped": list(extra.get("dropped", [])),
            }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateLoadError(f"engine snapshot is malformed: {exc!r}") from exc
    kept = {k: v for k, v in state.items() if k != "strategy_extra"}
    return {**kept, "format": SNAPSHOT_FORMAT, "strategy": strategy}
