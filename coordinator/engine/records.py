"""The engine's records (devices, tasks, counters) and their saved form.

Why a module of its own: ``Engine.state_dict``/``load_state_dict`` are the
only way a study's state leaves and re-enters an engine (the live service
stores it, ``fedward.coordinator.store.snapshot`` adds blob references), so the plain
records they carry and the checks a loaded state must pass live next to each
other, outside the engine's decision logic.

Every ``*_from_state`` function refuses what the engine could never have
written (``StateLoadError``): a restarted coordinator must fail loudly rather
than schedule from a corrupt document.
"""

from __future__ import annotations

import enum
import math
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedward.tinytrain.models import Params
from fedward.tinytrain.subsets import SubsetSpec

from ..errors import RejectReason, StateLoadError

ENGINE_STATE_KIND = "fedward.coordinator.engine"
ENGINE_STATE_FORMAT = 4
"""Version of ``Engine.state_dict``'s envelope. 1 was the store's own snapshot
layout, 2 a flat dict with the synchronous round beside the strategy; 3 the
saved-state envelope, rounds inside the strategy; 4 adds the secure-aggregation
fill book (``fills``, None without secure aggregation) and each task's
``fill_id``. A format-3 state loads as one without fills; older ones are refused."""
ENGINE_STATE_FORMAT_BEFORE_FILLS = 3


class DeviceState(enum.StrEnum):
    IDLE = "idle"
    BUSY = "busy"
    OFFLINE = "offline"
    REVOKED = "revoked"
    EXHAUSTED = "exhausted"  # privacy budget spent: never scheduled again
    # the device declines this study's tasks (it holds a DP budget and the study's
    # tasks carry no DP-SGD): never scheduled again by this study
    DECLINED = "declined"


@dataclass(kw_only=True)
class Device:
    device_id: str
    device_class: str
    memory_bytes: int
    state: DeviceState = DeviceState.IDLE
    held_version: int = -1  # last model version the device fully holds
    completed: int = 0
    # seconds its recent tasks took, dispatch to answer on the engine's clock
    # (exponentially weighted; None: none answered yet). Secure aggregation groups
    # cohorts by it, so one slow member does not hold a fill.
    task_seconds: float | None = None


@dataclass(frozen=True, kw_only=True)
class TaskOrder:
    """What the transport sends to a device: a task plus the tensors it lacks."""

    task_id: str
    device_id: str
    model_version: int
    subset: SubsetSpec
    download: tuple[str, ...]  # tensor names the device must receive
    issued_at: float
    round_id: int | None = None
    fill_id: str | None = None  # the secure-aggregation fill this task is a member of


@dataclass(kw_only=True)
class EngineStats:
    dispatched: int = 0
    accepted: int = 0
    merges: int = 0
    failed: int = 0
    rejected: Counter = field(default_factory=Counter)


# -- records <-> JSON-ready dicts ------------------------------------------------
def device_state(d: Device) -> dict[str, Any]:
    return {
        "device_id": d.device_id,
        "device_class": d.device_class,
        "memory_bytes": d.memory_bytes,
        "state": d.state.value,
        "held_version": d.held_version,
        "completed": d.completed,
        "task_seconds": d.task_seconds,
    }


def device_from_state(d: Mapping[str, Any]) -> Device:
    return Device(
        device_id=str(d["device_id"]),
        device_class=str(d["device_class"]),
        memory_bytes=int(d["memory_bytes"]),
        state=DeviceState(d["state"]),
        held_version=int(d["held_version"]),
        completed=int(d["completed"]),
        task_seconds=_seconds(d.get("task_seconds")),  # absent in states saved before it
    )


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"task_seconds must be a finite number >= 0, got {value!r}")
    return seconds


def task_state(t: TaskOrder) -> dict[str, Any]:
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
        "fill_id": t.fill_id,
    }


def task_from_state(t: Mapping[str, Any]) -> TaskOrder:
    return TaskOrder(
        task_id=str(t["task_id"]),
        device_id=str(t["device_id"]),
        model_version=int(t["model_version"]),
        subset=SubsetSpec(
            names=tuple(str(n) for n in t["subset_names"]),
            tier=int(t["subset_tier"]),
            ladder_version=int(t["ladder_version"]),
        ),
        download=tuple(str(n) for n in t["download"]),
        issued_at=float(t["issued_at"]),
        round_id=None if t["round_id"] is None else int(t["round_id"]),
        # absent in format 3 (before fills)
        fill_id=None if t.get("fill_id") is None else str(t["fill_id"]),
    )


def stats_state(s: EngineStats) -> dict[str, Any]:
    return {
        "dispatched": s.dispatched,
        "accepted": s.accepted,
        "merges": s.merges,
        "failed": s.failed,
        "rejected": {r.value: n for r, n in sorted(s.rejected.items())},
    }


def stats_from_state(s: Mapping[str, Any]) -> EngineStats:
    return EngineStats(
        dispatched=int(s["dispatched"]),
        accepted=int(s["accepted"]),
        merges=int(s["merges"]),
        failed=int(s["failed"]),
        rejected=Counter({RejectReason(r): int(n) for r, n in s["rejected"].items()}),
    )


def rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def rng_from_state(saved: Any) -> tuple[Any, ...]:
    """A ``random.Random.setstate`` argument (the caller sets it, which checks it)."""
    version, internal, gauss = saved
    return (int(version), tuple(int(x) for x in internal), gauss)


def keyed(items: Any, key: str, what: str) -> dict[str, Any]:
    """A list of records as a dict by ``key``; refuses duplicate ids."""
    out: dict[str, Any] = {}
    for item in items:
        ident = getattr(item, key)
        if ident in out:
            raise StateLoadError(f"{what} {ident} appears twice")
        out[ident] = item
    return out


# -- checks of a loaded state --------------------------------------------------------
def check_versions(versions: Mapping[int, Params], model: Params, *, current: int) -> None:
    """Every live version has the study's tensors (names, shapes, float32)."""
    if current not in versions:
        raise StateLoadError(f"current version {current} is not among the live versions")
    expected = {n: v.shape for n, v in model.items()}
    for version, params in versions.items():
        got = {n: getattr(a, "shape", None) for n, a in params.items()}
        if got != expected:
            raise StateLoadError(f"model version {version} does not match the study's model")
        if any(getattr(a, "dtype", None) != np.float32 for a in params.values()):
            raise StateLoadError(f"model version {version} is not float32")


def check_tasks(
    tasks: Mapping[str, TaskOrder],
    devices: Mapping[str, Device],
    *,
    versions: Mapping[int, Params],
    tensor_names: set[str],
    current: int,
) -> None:
    """Tasks and devices agree: a task's device exists and is BUSY with only that
    task, every BUSY device has a task, and a task names live versions and real
    tensors. A broken pairing would leave a device busy forever or a slot lost."""
    owners: dict[str, str] = {}
    for task in tasks.values():
        device = devices.get(task.device_id)
        if device is None or task.model_version not in versions:
            raise StateLoadError(f"task {task.task_id} refers to an unknown device or version")
        if device.state is not DeviceState.BUSY:
            raise StateLoadError(f"task {task.task_id} is in flight on a {device.state} device")
        if task.device_id in owners:
            raise StateLoadError(f"device {task.device_id} holds two tasks")
        owners[task.device_id] = task.task_id
        if not set(task.subset.names) <= tensor_names or not set(task.download) <= tensor_names:
            raise StateLoadError(f"task {task.task_id} names tensors the model lacks")
    for device in devices.values():
        if device.state is DeviceState.BUSY and device.device_id not in owners:
            raise StateLoadError(f"device {device.device_id} is busy without a task")
        if not -1 <= device.held_version <= current:
            raise StateLoadError(f"device {device.device_id} holds an unknown version")
