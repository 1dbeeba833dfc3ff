"""Aggregation strategies: pure objects behind one interface (see ``base``)."""

from .base import BufferedStrategy, ClientUpdate, MergeResult, Schedule, Strategy, StrategyName
from .client_dp import ClientLevelDP
from .fedasync import FedAsync, StalenessFunction
from .fedavg import FedAvg
from .fedbuff import FedBuff
from .ftte import FTTE
from .norm_bound import NormBounded

__all__ = [
    "FTTE",
    "BufferedStrategy",
    "ClientLevelDP",
    "ClientUpdate",
    "FedAsync",
    "FedAvg",
    "FedBuff",
    "MergeResult",
    "NormBounded",
    "Schedule",
    "StalenessFunction",
    "Strategy",
    "StrategyName",
]
