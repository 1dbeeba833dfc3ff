"""The ledger's reservations: charge at dispatch, confirm by task id, release a refusal."""

from __future__ import annotations

import pytest

from fedward.privacy.accounting import Accountant, MechanismStep, epsilon_for
from fedward.privacy.budget import BudgetPolicy
from fedward.privacy.errors import BudgetExceeded, DuplicateCharge, ForgedClaim, PrivacyError
from fedward.privacy.ledger import STATE_KIND, STATE_VERSION, PrivacyLedger
from fedward.saved_state import seal_checked

POLICY = BudgetPolicy(epsilon=8.0, delta=1e-5)
TASK = MechanismStep(noise_multiplier=1.5, sample_rate=0.25, steps=8)


def _eps(n: int) -> float:
    return epsilon_for([TASK] * n, delta=1e-5, accountant=Accountant.RDP)


def _reserve(ledger: PrivacyLedger, task_id: str) -> None:
    ledger.reserve("d", task_id, TASK, at=0.0, max_grad_norm=1.0)


def test_a_reservation_is_a_full_charge_before_any_update():
    # Prepare
    ledger = PrivacyLedger(POLICY)
    # Execute
    _reserve(ledger, "t1")
    # Assert
    assert ledger.spent("d") == pytest.approx(_eps(1))
    assert ledger.unconfirmed("d") == ["t1"] and ledger.is_reserved("d", "t1")


def test_a_claim_is_reconciled_between_confirmed_and_dispatched():
    # Prepare: three tasks dispatched; the first update was lost
    ledger = PrivacyLedger(POLICY)
    for task_id in ("t1", "t2", "t3"):
        _reserve(ledger, task_id)
    # Execute / Assert: a device that trained t1..t3 or only t2..t3 is honest
    ledger.confirm("d", "t2", claimed_epsilon=_eps(2))
    ledger.confirm("d", "t3", claimed_epsilon=_eps(3))
    assert ledger.unconfirmed("d") == ["t1"]


@pytest.mark.parametrize("claimed", [0.0, 2.0, 8.0])
def test_a_claim_outside_the_range_is_forged_and_changes_nothing(claimed):
    # Prepare: two dispatched, the first confirmed; the range for t2 is [eps(2), eps(2)]
    ledger = PrivacyLedger(POLICY)
    _reserve(ledger, "t1")
    ledger.confirm("d", "t1", claimed_epsilon=_eps(1))
    _reserve(ledger, "t2")
    # Execute / Assert
    with pytest.raises(ForgedClaim) as info:
        ledger.confirm("d", "t2", claimed_epsilon=claimed)
    assert info.value.bounds == pytest.approx((_eps(2), _eps(2)))
    assert ledger.is_reserved("d", "t2") and ledger.spent("d") == pytest.approx(_eps(2))


def test_confirm_and_reserve_refuse_replays_and_unknown_tasks():
    # Prepare
    ledger = PrivacyLedger(POLICY)
    _reserve(ledger, "t1")
    ledger.confirm("d", "t1")
    # Execute / Assert
    with pytest.raises(DuplicateCharge):
        ledger.confirm("d", "t1")
    with pytest.raises(DuplicateCharge):
        _reserve(ledger, "t1")
    with pytest.raises(PrivacyError):
        ledger.confirm("d", "never-sent")


def test_a_reservation_never_takes_a_device_past_its_budget():
    # Prepare
    ledger = PrivacyLedger(POLICY)
    n = 0
    while _eps(n + 1) <= POLICY.epsilon:
        _reserve(ledger, f"t{n}")
        n += 1
    # Execute / Assert
    with pytest.raises(BudgetExceeded):
        _reserve(ledger, "one-too-many")
    assert len(ledger.records("d")) == n


def test_release_drops_a_declined_reservation_and_rechains_the_rest():
    # Prepare
    ledger = PrivacyLedger(POLICY)
    for task_id in ("t1", "t2", "t3"):
        _reserve(ledger, task_id)
    # Execute
    ledger.release("d", "t2")
    # Assert: what remains is two tasks, chained and reloadable
    assert [r.task_id for r in ledger.records("d")] == ["t1", "t3"]
    assert ledger.spent("d") == pytest.approx(_eps(2))
    assert PrivacyLedger.from_state_dict(ledger.state_dict()).spent("d") == ledger.spent("d")
    ledger.confirm("d", "t1")
    with pytest.raises(PrivacyError):
        ledger.release("d", "t1")  # a delivered task is never released


def test_a_state_from_before_reservations_loads_as_confirmed():
    # Prepare: records without the 'confirmed' key (charged on arrival)
    ledger = PrivacyLedger(POLICY)
    ledger.charge("d", "t1", TASK, at=0.0, max_grad_norm=1.0)
    content = ledger._content()
    for record in content["devices"]["d"]:
        del record["confirmed"]
    state = seal_checked(STATE_KIND, STATE_VERSION, content)
    # Execute
    restored = PrivacyLedger.from_state_dict(state)
    # Assert
    assert restored.unconfirmed("d") == [] and restored.records("d")[0].confirmed
