"""Aggregation strategies: pure objects behind one interface (see ``base``)."""

from .base import ClientUpdate, MergeResult, Schedule, Strategy, StrategyName
from .fedasync import FedAsync, StalenessFunction
from .fedavg import FedAvg
from .fedbuff import FedBuff
from .ftte import FTTE

__all__ = [
    "FTTE",
    "ClientUpdate",
    "FedAsync",
    "FedAvg",
    "FedBuff",
    "MergeResult",
    "Schedule",
    "StalenessFunction",
    "Strategy",
    "StrategyName",
]
