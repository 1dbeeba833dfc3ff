"""Engine state as a JSON document, so a restarted coordinator resumes a study.

The engine keeps everything in plain fields (params, version, devices, tasks,
stats, counters, the RNG, the strategy's buffer). This module turns those into
one JSON-ready mapping and back, without touching the engine's code:

* large arrays never go into the JSON: the current model and the bases of
  tasks in flight are model versions (loaded from the blob store by version),
  and each buffered update's delta is a blob referenced by its SHA-256;
* the RNG state is saved too, so the device sampling after a restart continues
  the same sequence it would have without one;
* a synchronous FedAvg round's cohort and dropouts are saved alongside the
  strategy's own ``state_dict`` (which does not hold them), so an open round
  survives a restart;
* engine guards with ``state_dict``/``load_state_dict`` (the privacy guard's
  per-device ledger) are saved in order, so budgets survive a restart too.

``restore_engine`` expects an engine freshly built from the same spec (same
strategy configuration, planner and model shapes) and refuses a document of
another format.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from coordinator.engine import Device, DeviceState, Engine, TaskOrder
from coordinator.errors import RejectReason, StateLoadError
from coordinator.strategies import FedAvg
from tinytrain.subsets import SubsetSpec

SNAPSHOT_FORMAT = 1

Params = dict[str, np.ndarray]
DeltaRef = Callable[[str, Mapping[str, np.ndarray]], str]
"""(task_id, delta) -> SHA-256 of the stored delta blob."""


def _device_dict(d: Device) -> dict[str, Any]:
    return {
        "device_id": d.device_id,
        "device_class": d.device_class,
        "memory_bytes": d.memory_bytes,
        "state": d.state.value,
        "held_version": d.held_version,
        "completed": d.completed,
    }


def _task_dict(t: TaskOrder) -> dict[str, Any]:
    return {
        "task_id": t.task_id,
        "device_id": t.device_id,
        "model_version": t.model_version,
        "subset_names": list(t.subset.names),
        "subset_tier": t.subset.tier,
        "ladder_version": t.subset.ladder_version,
        "download": list(t.download),
        "issued_at": t.issued_at,
        "round_id": t.round_id,
    }


def live_versions(engine: Engine) -> list[int]:
    """Model versions the engine still holds: the current one and bases in flight."""
    return sorted(engine._versions)  # noqa: SLF001 (documented engine field)


def engine_snapshot(engine: Engine, *, delta_ref: DeltaRef) -> dict[str, Any]:
    """The engine's state as JSON-ready data (arrays by reference)."""
    strategy_state = engine.strategy.state_dict()
    buffer = []
    for item in strategy_state["buffer"]:
        entry = {k: v for k, v in item.items() if k != "delta"}
        entry["delta_sha256"] = delta_ref(item["task_id"], item["delta"])
        buffer.append(entry)
    strategy_state = {**strategy_state, "buffer": buffer}
    extra: dict[str, Any] = {}
    if isinstance(engine.strategy, FedAvg):
        extra = {
            "cohort": sorted(engine.strategy._cohort),  # noqa: SLF001
            "dropped": sorted(engine.strategy._dropped),  # noqa: SLF001
        }
    version, internal, gauss = engine.rng.getstate()
    return {
        "format": SNAPSHOT_FORMAT,
        "version": engine.version,
        "live_versions": live_versions(engine),
        "changed_at": dict(engine._changed_at),  # noqa: SLF001
        "task_counter": engine._task_counter,  # noqa: SLF001
        "round": engine._round,  # noqa: SLF001
        "round_open": engine._round_open,  # noqa: SLF001
        "stats": {
            "dispatched": engine.stats.dispatched,
            "accepted": engine.stats.accepted,
            "merges": engine.stats.merges,
            "failed": engine.stats.failed,
            "rejected": {r.value: n for r, n in sorted(engine.stats.rejected.items())},
        },
        "rng": [version, list(internal), gauss],
        "devices": [_device_dict(d) for d in engine.devices.values()],
        "tasks": [_task_dict(t) for t in engine.tasks.values()],
        "strategy": strategy_state,
        "strategy_extra": extra,
        "guards": [_guard_state(g) for g in engine.guards],
    }


def _guard_state(guard: object) -> dict[str, Any] | None:
    state_dict = getattr(guard, "state_dict", None)
    return state_dict() if callable(state_dict) else None


def restore_engine(
    engine: Engine,
    state: Mapping[str, Any],
    *,
    load_params: Callable[[int], Params],
    load_delta: Callable[[str], Mapping[str, np.ndarray]],
) -> None:
    """Put ``state`` into a freshly built ``engine`` (same spec)."""
    if state.get("format") != SNAPSHOT_FORMAT:
        raise StateLoadError(f"unsupported engine snapshot format {state.get('format')!r}")
    try:
        _restore(engine, state, load_params=load_params, load_delta=load_delta)
    except (KeyError, TypeError, ValueError) as exc:
        raise StateLoadError(f"engine snapshot is malformed: {exc!r}") from exc


def _restore(
    engine: Engine,
    state: Mapping[str, Any],
    *,
    load_params: Callable[[int], Params],
    load_delta: Callable[[str], Mapping[str, np.ndarray]],
) -> None:
    version = int(state["version"])
    versions = {int(v): load_params(int(v)) for v in state["live_versions"]}
    if version not in versions:
        raise StateLoadError(f"current version {version} is not among the live versions")
    shapes = {n: v.shape for n, v in engine.params.items()}
    for v, params in versions.items():
        if {n: a.shape for n, a in params.items()} != shapes:
            raise StateLoadError(f"model version {v} does not match the study's model")
    engine.version = version
    engine.params = versions[version]
    engine._versions = versions  # noqa: SLF001
    changed_at = {str(n): int(v) for n, v in state["changed_at"].items()}
    if set(changed_at) != set(shapes):
        raise StateLoadError("changed_at does not name the model's tensors")
    engine._changed_at = changed_at  # noqa: SLF001
    engine._task_counter = int(state["task_counter"])  # noqa: SLF001
    engine._round = int(state["round"])  # noqa: SLF001
    engine._round_open = bool(state["round_open"])  # noqa: SLF001
    stats = state["stats"]
    engine.stats.dispatched = int(stats["dispatched"])
    engine.stats.accepted = int(stats["accepted"])
    engine.stats.merges = int(stats["merges"])
    engine.stats.failed = int(stats["failed"])
    engine.stats.rejected = Counter({RejectReason(r): int(n) for r, n in stats["rejected"].items()})
    rng_version, internal, gauss = state["rng"]
    engine.rng.setstate((int(rng_version), tuple(int(x) for x in internal), gauss))
    engine.devices = {
        d["device_id"]: Device(
            device_id=d["device_id"],
            device_class=d["device_class"],
            memory_bytes=int(d["memory_bytes"]),
            state=DeviceState(d["state"]),
            held_version=int(d["held_version"]),
            completed=int(d["completed"]),
        )
        for d in state["devices"]
    }
    tasks: dict[str, TaskOrder] = {}
    for t in state["tasks"]:
        if t["device_id"] not in engine.devices or int(t["model_version"]) not in versions:
            raise StateLoadError(f"task {t['task_id']} refers to an unknown device or version")
        tasks[t["task_id"]] = TaskOrder(
            task_id=t["task_id"],
            device_id=t["device_id"],
            model_version=int(t["model_version"]),
            subset=SubsetSpec(
                names=tuple(t["subset_names"]),
                tier=int(t["subset_tier"]),
                ladder_version=int(t["ladder_version"]),
            ),
            download=tuple(t["download"]),
            issued_at=float(t["issued_at"]),
            round_id=None if t["round_id"] is None else int(t["round_id"]),
        )
    engine.tasks = tasks
    strategy_state = dict(state["strategy"])
    strategy_state["buffer"] = [
        {**{k: v for k, v in item.items() if k != "delta_sha256"}}
        | {"delta": dict(load_delta(item["delta_sha256"]))}
        for item in strategy_state["buffer"]
    ]
    engine.strategy.load_state_dict(strategy_state)
    extra = state.get("strategy_extra") or {}
    if isinstance(engine.strategy, FedAvg) and extra:
        engine.strategy._cohort = set(extra["cohort"])  # noqa: SLF001
        engine.strategy._dropped = set(extra["dropped"])  # noqa: SLF001
    guard_states = state.get("guards", [])
    if len(guard_states) != len(engine.guards):
        raise StateLoadError(
            f"snapshot has {len(guard_states)} guard states, the engine {len(engine.guards)} guards"
        )
    for guard, guard_state in zip(engine.guards, guard_states, strict=True):
        if guard_state is not None:
            guard.load_state_dict(guard_state)
