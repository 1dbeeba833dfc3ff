"""Aggregation strategies: pure objects behind one closed interface (see ``base``).

``Strategy`` is the interface; ``StrategyBase`` and ``BufferedStrategy`` implement
it with a buffer; ``StrategyWrapper`` implements it around any strategy
(``NormBounded``; ``SecureAggregated``, which merges secure-aggregation fills).
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
from .secure import FillAggregate, FillMergeError, SecureAggregated
from .wrapper import StrategyWrapper

__all__ = [
    "FTTE",
    "BufferedStrategy",
    "ClientLevelDP",
    "ClientUpdate",
    "FedAsync",
    "FedAvg",
    "FedBuff",
    "FillAggregate",
    "FillMergeError",
    "MergeResult",
    "NormBounded",
    "Schedule",
    "SecureAggregated",
    "StalenessFunction",
    "Strategy",
    "StrategyBase",
    "StrategyName",
    "StrategyWrapper",
]
