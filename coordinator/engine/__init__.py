"""The engine: a study's state and every scheduling and merge decision, no I/O.

    engine.py    Engine: tasks out, updates in, merges, events for the audit log
    guards.py    GuardDecision and the guard protocol: guards decide, the engine acts
    records.py   the engine's records (devices, tasks, counters) and their saved form
    planning.py  which subset each device trains, sized to its measured memory
    ingest.py    an update frame decoded into what the engine and strategies consume

The names below are the engine's public surface; import them from here.
"""

from .engine import Engine, EngineEvent, EventKind, SubmitOutcome
from .guards import ALLOW, EngineGuard, GuardDecision, StatefulGuard
from .records import ENGINE_STATE_FORMAT, Device, DeviceState, EngineStats, TaskOrder

__all__ = [
    "ALLOW",
    "ENGINE_STATE_FORMAT",
    "Device",
    "DeviceState",
    "Engine",
    "EngineEvent",
    "EngineGuard",
    "EngineStats",
    "EventKind",
    "GuardDecision",
    "StatefulGuard",
    "SubmitOutcome",
    "TaskOrder",
]
