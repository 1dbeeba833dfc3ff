"""The device side: the live agent and what it runs on the device.

    agent.py         EdgeAgent: enrol, take tasks, train, deliver updates exactly once
    secagg.py        SecAggParticipant: this device in one secure-aggregation fill
    secagg_store.py  SecAggStore: the fill's durable journal and state files

The SecAgg names below are exported lazily (``from fedward.edge import
SecAggParticipant``), so importing one edge module does not load the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .secagg import SecAggFloors, SecAggParticipant, SecAggRefused
    from .secagg_store import SecAggStore

_HOMES = {
    "SecAggFloors": ".secagg",
    "SecAggParticipant": ".secagg",
    "SecAggRefused": ".secagg",
    "SecAggStore": ".secagg_store",
}

__all__ = ["SecAggFloors", "SecAggParticipant", "SecAggRefused", "SecAggStore"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home, __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
