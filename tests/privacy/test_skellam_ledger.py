"""The ledger charges a distributed-DP fill per device: reserve at dispatch, settle per fill."""

from __future__ import annotations

import pytest

from fedward.privacy.accounting import Accountant, MechanismStep, epsilon_for
from fedward.privacy.budget import BudgetPolicy
from fedward.privacy.errors import BudgetExceeded, PolicyError, PrivacyError
from fedward.privacy.ledger import PrivacyLedger
from fedward.privacy.secagg.ddp import DistributedDp
from fedward.privacy.skellam import SkellamStep

D = 4096
DDP = DistributedDp(l2_clip=1.0, noise_multiplier=2.0, bits=20, scale=2.0**10, min_survivors=4)
FILL = DDP.release_step(D)
POLICY = BudgetPolicy(epsilon=8.0, delta=1e-5)
COHORT = {f"dev-{i}": f"task-{i}" for i in range(6)}


def reserve_fill(ledger: PrivacyLedger, tasks: dict[str, str], *, at: float = 0.0) -> None:
    for device, task_id in tasks.items():
        ledger.reserve(device, task_id, FILL, at=at, max_grad_norm=DDP.l2_clip)


def test_a_fill_charges_its_survivors_and_releases_the_dropouts() -> None:
    # Prepare: the whole cohort reserved when the fill was dispatched
    ledger = PrivacyLedger(POLICY)
    reserve_fill(ledger, COHORT)
    one = epsilon_for([FILL], delta=POLICY.delta, accountant=Accountant.RDP)
    assert all(ledger.spent(d) == pytest.approx(one) for d in COHORT)

    # Execute: dev-4 and dev-5 dropped before their masked input
    survivors = ["dev-0", "dev-1", "dev-2", "dev-3"]
    settled = ledger.settle_fill(COHORT, survivors=survivors)

    # Assert
    assert sorted(settled.confirmed) == survivors
    assert sorted(settled.released) == ["dev-4", "dev-5"]
    for device in survivors:
        assert ledger.spent(device) == pytest.approx(one)
        assert ledger.unconfirmed(device) == []
        (record,) = ledger.records(device)
        assert record.skellam_variance == DDP.central_variance
        assert isinstance(record.step, SkellamStep)
    assert ledger.spent("dev-4") == 0.0 and ledger.records("dev-5") == []


def test_fills_compose_and_a_device_past_its_budget_cannot_be_reserved() -> None:
    # Prepare: one device in fill after fill
    ledger = PrivacyLedger(POLICY)
    fills = 0
    # Execute: reserve and settle until the budget refuses the next fill
    with pytest.raises(BudgetExceeded):
        while True:
            tasks = {"dev-0": f"fill-{fills}"}
            reserve_fill(ledger, tasks)
            ledger.settle_fill(tasks, survivors=["dev-0"])
            fills += 1
    # Assert: the ledger's figure is the composition of that many releases, within budget
    composed = epsilon_for([FILL.with_steps(fills)], delta=POLICY.delta, accountant=Accountant.RDP)
    assert fills >= 1 and ledger.spent("dev-0") == pytest.approx(composed)
    assert ledger.spent("dev-0") <= POLICY.epsilon
    over = epsilon_for([FILL.with_steps(fills + 1)], delta=POLICY.delta, accountant=Accountant.RDP)
    assert over > POLICY.epsilon


def test_skellam_and_gaussian_releases_compose_in_one_history() -> None:
    # Prepare
    ledger = PrivacyLedger(POLICY)
    gaussian = MechanismStep(noise_multiplier=1.2, sample_rate=0.1, steps=20)
    # Execute
    ledger.charge("dev-0", "dp-sgd", gaussian, at=0.0, max_grad_norm=1.0)
    reserve_fill(ledger, {"dev-0": "fill"})
    # Assert: more than either alone, what the accountant gives for both
    both = ledger.spent("dev-0")
    alone = [
        epsilon_for([s], delta=POLICY.delta, accountant=Accountant.RDP) for s in (gaussian, FILL)
    ]
    assert both > max(alone)
    assert both == pytest.approx(
        epsilon_for([gaussian, FILL], delta=POLICY.delta, accountant=Accountant.RDP)
    )
    assert ledger.recompute("dev-0") == pytest.approx(both)


def test_a_skellam_release_needs_the_rdp_accountant() -> None:
    ledger = PrivacyLedger(BudgetPolicy(epsilon=8.0, delta=1e-5, accountant=Accountant.PRV))
    with pytest.raises(PolicyError, match="RDP"):
        ledger.reserve("dev-0", "fill", FILL, at=0.0, max_grad_norm=1.0)
    assert ledger.records("dev-0") == []


def test_settling_is_all_or_nothing() -> None:
    # Prepare: one member was never reserved
    ledger = PrivacyLedger(POLICY)
    reserve_fill(ledger, {d: t for d, t in COHORT.items() if d != "dev-5"})
    before = {d: ledger.records(d) for d in COHORT}
    # Execute / Assert: refused, nothing changed
    with pytest.raises(PrivacyError, match="no pending reservation"):
        ledger.settle_fill(COHORT, survivors=list(COHORT))
    with pytest.raises(PrivacyError, match="not one of its cohort"):
        ledger.settle_fill({"dev-0": "task-0"}, survivors=["dev-0", "dev-1"])
    assert {d: ledger.records(d) for d in COHORT} == before
    # settling twice is refused too
    partial = {d: t for d, t in COHORT.items() if d != "dev-5"}
    ledger.settle_fill(partial, survivors=["dev-0"])
    with pytest.raises(PrivacyError):
        ledger.settle_fill(partial, survivors=["dev-0"])


def test_skellam_records_survive_a_state_round_trip() -> None:
    # Prepare
    ledger = PrivacyLedger(POLICY)
    reserve_fill(ledger, COHORT)
    ledger.settle_fill(COHORT, survivors=list(COHORT)[:4])
    # Execute
    restored = PrivacyLedger.from_state_dict(ledger.state_dict())
    # Assert
    for device in COHORT:
        assert restored.records(device) == ledger.records(device)
        assert restored.spent(device) == ledger.spent(device)
