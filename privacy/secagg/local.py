"""Run a whole SecAgg instance in memory: executable documentation and a test driver.

The simulator can use it to model a buffer fill with dropouts without any
transport; real deployments drive ``SecAggClient`` / ``SecAggServer`` message
by message instead.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .client import SecAggClient
from .config import SecAggConfig, SecAggSession
from .crypto import RandomBytes
from .messages import KeyRoster, ShareDelivery, UnmaskRequest
from .server import AggregateResult, SecAggServer


class DropPoint(enum.Enum):
    """Where a device goes silent (it sends nothing from this step on)."""

    BEFORE_ADVERTISE = 0
    BEFORE_SHARES = 1
    BEFORE_INPUT = 2
    BEFORE_UNMASK = 3


@dataclass(frozen=True, kw_only=True)
class ClientInput:
    """One device's input: its update, weight and ``count_words`` count words."""

    update: np.ndarray
    weight: float = 1.0
    counts: tuple[int, ...] = (1,)


@dataclass(kw_only=True)
class LocalRound:
    result: AggregateResult
    server: SecAggServer
    clients: dict[str, SecAggClient] = field(default_factory=dict)


class LocalRunner:
    """One server and its cohort's clients in memory, driven stage by stage.

    Each step delivers the previous stage's output to ``devices`` (those still
    online), feeds their answers to the server and closes the stage. Tests and
    the simulator may swap ``server`` or ``clients[d]`` between steps (e.g.
    after a state_dict round trip).
    """

    def __init__(
        self,
        *,
        config: SecAggConfig,
        session: SecAggSession,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        self.server = SecAggServer(config=config, session=session)
        self.clients = {
            d: SecAggClient(config=config, session=session, device_id=d, random_bytes=random_bytes)
            for d in session.cohort
        }

    def advertise(self, devices: Iterable[str]) -> KeyRoster:
        for d in devices:
            self.server.receive_advertisement(self.clients[d].advertise())
        return self.server.close_advertisements()

    def share_keys(self, devices: Iterable[str], roster: KeyRoster) -> dict[str, ShareDelivery]:
        for d in devices:
            self.server.receive_share_bundle(self.clients[d].share_keys(roster))
        return self.server.close_shares()

    def mask(
        self,
        devices: Iterable[str],
        deliveries: Mapping[str, ShareDelivery],
        inputs: Mapping[str, ClientInput],
    ) -> UnmaskRequest:
        for d in devices:
            x = inputs[d]
            self.server.receive_masked_input(
                self.clients[d].mask_input(
                    deliveries[d], update=x.update, weight=x.weight, counts=x.counts
                )
            )
        return self.server.close_masked_inputs()

    def unmask(self, devices: Iterable[str], request: UnmaskRequest) -> AggregateResult:
        for d in devices:
            self.server.receive_unmask_response(self.clients[d].unmask(request))
        return self.server.finalize()


def run_local_round(
    *,
    config: SecAggConfig,
    session: SecAggSession,
    inputs: Mapping[str, ClientInput],
    drops: Mapping[str, DropPoint] | None = None,
    random_bytes: RandomBytes = os.urandom,
) -> LocalRound:
    """Run every stage for the cohort; devices in ``drops`` fall silent at their point."""
    drops = dict(drops or {})
    runner = LocalRunner(config=config, session=session, random_bytes=random_bytes)

    def online(point: DropPoint) -> list[str]:
        return [d for d in session.cohort if d not in drops or drops[d].value > point.value]

    roster = runner.advertise(online(DropPoint.BEFORE_ADVERTISE))
    deliveries = runner.share_keys(online(DropPoint.BEFORE_SHARES), roster)
    request = runner.mask(online(DropPoint.BEFORE_INPUT), deliveries, inputs)
    result = runner.unmask(online(DropPoint.BEFORE_UNMASK), request)
    return LocalRound(result=result, server=runner.server, clients=runner.clients)
