"""Aggregation strategies: pure objects behind one closed interface (see ``base``).

``Strategy`` is the interface; ``StrategyBase`` and ``BufferedStrategy`` implement
it with a buffer; ``StrategyWrapper`` implements it around any strategy
(``NormBounded``).
"""

from .base import (
    BufferedStrategy,
    ClientUpdate,
    MergeResult,
    Schedule,
    Strategy,
    StrategyBase,
    StrategyName,
)
from .client_dp import ClientLevelDP
from .fedasync import FedAsync, StalenessFunction
from .fedavg import FedAvg
from .fedbuff import FedBuff
from .ftte import FTTE
from .norm_bound import NormBounded
from .wrapper import StrategyWrapper

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
    "StrategyBase",
    "StrategyName",
    "StrategyWrapper",
]
