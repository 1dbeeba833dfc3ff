"""The per-fill privacy ledger of distributed DP (issue 11, item 5).

A fill member's task is charged its Skellam release when the fill is
dispatched; when the sum is released the survivors' charges are confirmed and
the members whose input is in no sum get theirs back; an aborted fill (nothing
unmasked) gives every charge back; a device whose budget cannot afford one
more release is not put in another fill. Real SecAgg clients, real engine.
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest

from fedward.coordinator.engine import DeviceState, Engine
from fedward.coordinator.engine.planning import SubsetMode, SubsetPlanner
from fedward.coordinator.privacy.guard import PrivacyGuard
from fedward.coordinator.privacy.settings import DistributedPrivacy
from fedward.coordinator.secagg import SecAggPolicy
from fedward.coordinator.strategies import FedBuff
from fedward.privacy.skellam import epsilon as skellam_epsilon
from fedward.protocol.messages import SecAggPhase
from fedward.tinytrain.subsets import SubsetLadder
from tests.coordinator.test_secagg_engine import (
    BUFFER,
    COHORT,
    DROPOUT,
    SHAPES,
    THRESHOLD,
    TIMEOUT,
    Fleet,
    enrol,
    open_fill,
)

MODEL_SIZE = 15


def privacy(epsilon: float = 50.0) -> DistributedPrivacy:
    return DistributedPrivacy(
        epsilon=epsilon,
        delta=1e-5,
        l2_clip=1.0,
        noise_multiplier=1.0,
        bits=20,
        threshold=THRESHOLD,
        max_colluders=1,
        cohort_size=COHORT,
        model_size=MODEL_SIZE,
    )


def ddp_engine(settings: DistributedPrivacy) -> tuple[Engine, PrivacyGuard]:
    guard = PrivacyGuard(settings)
    policy = SecAggPolicy(
        buffer_size=BUFFER,
        expected_dropout=DROPOUT,
        phase_timeout_s=TIMEOUT,
        ddp=settings.mechanism(),
    )
    engine = Engine(
        params={n: np.zeros(s, np.float32) for n, s in SHAPES.items()},
        strategy=FedBuff(shapes=SHAPES, buffer_size=BUFFER),
        planner=SubsetPlanner(
            SubsetLadder({"layer": list(SHAPES)}), footprint_bytes=lambda s: 1, mode=SubsetMode.FULL
        ),
        concurrency=1,
        rng=random.Random(0),
        secagg=policy,
        random_bytes=os.urandom,
        guards=(guard,),
    )
    return engine, guard


def test_a_released_fill_confirms_its_survivors_and_gives_dropped_members_their_charge_back():
    # Prepare: one fill of 7, one member silent from its masked input on
    settings = privacy()
    engine, guard = ddp_engine(settings)
    enrol(engine, COHORT)
    fleet = Fleet(engine)
    orders = open_fill(engine, fleet)
    dropped = sorted(o.device_id for o in orders)[0]
    fleet.silent = {dropped: SecAggPhase.MASKED_INPUT}
    one_release = skellam_epsilon([settings.task_step()], delta=settings.delta)
    charged = {o.device_id: guard.ledger.spent(o.device_id) for o in orders}
    # Execute
    fleet.run()
    # Assert: charged at dispatch, then settled by the fill's outcome
    assert len(fleet.merges) == 1
    assert all(e == pytest.approx(one_release) for e in charged.values())
    for order in orders:
        spent = guard.ledger.spent(order.device_id)
        if order.device_id == dropped:
            assert spent == 0.0 and not guard.ledger.is_reserved(dropped, order.task_id)
        else:
            assert spent == pytest.approx(one_release)
            assert not guard.ledger.is_reserved(order.device_id, order.task_id)  # confirmed


def test_an_aborted_fill_gives_every_charge_back():
    # Prepare: 3 of 7 silent at the shares leave 4 < t = 5
    engine, guard = ddp_engine(privacy())
    enrol(engine, COHORT)
    fleet = Fleet(engine)
    orders = open_fill(engine, fleet)
    fleet.silent = dict.fromkeys(sorted(o.device_id for o in orders)[:3], SecAggPhase.SHARES)
    # Execute
    fleet.run()
    # Assert
    assert fleet.aborted == [orders[0].fill_id] and not fleet.merges
    assert all(guard.ledger.spent(o.device_id) == 0.0 for o in orders)


def test_a_device_that_cannot_afford_another_release_is_not_put_in_a_fill():
    # Prepare: a budget of two releases and a bit
    probe = privacy()
    two = skellam_epsilon([probe.task_step(), probe.task_step()], delta=probe.delta)
    engine, guard = ddp_engine(privacy(epsilon=two * 1.01))
    enrol(engine, COHORT)
    merges, now = 0, 1.0
    # Execute: two fills merge (a fresh fleet of clients each); a third finds everyone spent
    for _ in range(2):
        fleet = Fleet(engine)
        fleet.now = now
        open_fill(engine, fleet)
        fleet.run()
        merges, now = merges + len(fleet.merges), fleet.now + 1.0
    third = engine.dispatch(now=now)
    # Assert
    assert merges == 2 and third == []
    assert all(d.state is DeviceState.EXHAUSTED for d in engine.devices.values())
    assert all(guard.ledger.spent(d) <= two * 1.01 for d in engine.devices)


def test_the_guard_saves_the_fills_it_is_settling_and_a_restored_guard_settles_them():
    # Prepare: a fill dispatched, guard state saved mid-fill
    settings = privacy()
    engine, guard = ddp_engine(settings)
    enrol(engine, COHORT)
    fleet = Fleet(engine)
    orders = open_fill(engine, fleet)
    saved = json.loads(json.dumps(guard.state_dict()))
    twin = PrivacyGuard(settings)
    # Execute
    twin.load_state_dict(saved)
    engine.guards = [twin]
    fleet.run()
    # Assert: the restored guard confirmed every member at the merge
    assert saved["payload"]["distributed"] is True
    assert set(saved["payload"]["fills"][orders[0].fill_id]) == {o.device_id for o in orders}
    assert all(not twin.ledger.is_reserved(o.device_id, o.task_id) for o in orders)
    assert all(twin.ledger.spent(o.device_id) > 0 for o in orders)
