"""Run a whole SecAgg instance in memory: executable documentation and a test driver.

The simulator can use it to model a buffer fill with dropouts without any
transport; real deployments drive ``SecAggClient`` / ``SecAggServer`` message
by message instead.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .client import SecAggClient
from .config import SecAggConfig, SecAggSession
from .server import AggregateResult, SecAggServer


class DropPoint(enum.Enum):
    """Where a device goes silent (it sends nothing from this step on)."""

    BEFORE_ADVERTISE = 0
    BEFORE_SHARES = 1
    BEFORE_INPUT = 2
    BEFORE_UNMASK = 3


@dataclass(frozen=True, kw_only=True)
class ClientInput:
    update: np.ndarray
    weight: float = 1.0
    num_samples: int = 1


@dataclass(kw_only=True)
class LocalRound:
    result: AggregateResult
    server: SecAggServer
    clients: dict[str, SecAggClient] = field(default_factory=dict)


def run_local_round(
    *,
    config: SecAggConfig,
    session: SecAggSession,
    inputs: Mapping[str, ClientInput],
    drops: Mapping[str, DropPoint] | None = None,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> LocalRound:
    """Run every stage for the cohort; devices in ``drops`` fall silent at their point."""
    drops = dict(drops or {})
    server = SecAggServer(config=config, session=session)
    clients = {
        d: SecAggClient(config=config, session=session, device_id=d, random_bytes=random_bytes)
        for d in session.cohort
    }

    def active(point: DropPoint) -> list[str]:
        return [d for d in session.cohort if d not in drops or drops[d].value > point.value]

    for d in active(DropPoint.BEFORE_ADVERTISE):
        server.receive_advertisement(clients[d].advertise())
    roster = server.close_advertisements()
    for d in active(DropPoint.BEFORE_SHARES):
        server.receive_share_bundle(clients[d].share_keys(roster))
    deliveries = server.close_shares()
    for d in active(DropPoint.BEFORE_INPUT):
        x = inputs[d]
        server.receive_masked_input(
            clients[d].mask_input(
                deliveries[d], update=x.update, weight=x.weight, num_samples=x.num_samples
            )
        )
    request = server.close_masked_inputs()
    for d in active(DropPoint.BEFORE_UNMASK):
        server.receive_unmask_response(clients[d].unmask(request))
    return LocalRound(result=server.finalize(), server=server, clients=clients)
