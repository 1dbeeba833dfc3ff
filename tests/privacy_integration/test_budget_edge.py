"""The device's own budget: refuse before training, carry the accountant, claim honestly."""

from __future__ import annotations

import numpy as np
import pytest
from budget_helpers import DELTA, PRIVACY, SPEC

from fedward.edge.budget import DeviceBudget, RefusalReason, TaskRefused, run_dp_task
from fedward.edge.dp_training import DPTrainConfig, planned_step, train_subset_dp
from fedward.edge.local import DPSpend, LocalOutcome
from fedward.privacy.accounting import Accountant, MechanismStep, epsilon_for
from fedward.privacy.budget import BudgetPolicy
from fedward.privacy.errors import PolicyError
from fedward.privacy.ledger import PrivacyLedger
from fedward.protocol.messages import ErrorCode, Task
from fedward.tinytrain.models import build_model, get_params, parameter_groups
from fedward.tinytrain.subsets import SubsetLadder

POLICY = BudgetPolicy(epsilon=8.0, delta=DELTA)


@pytest.fixture(scope="module")
def device():
    config = SPEC.model_settings()
    model = build_model(config, seed=0)
    names = SubsetLadder(parameter_groups(model)).tier(4).names
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, config.in_channels, config.window)).astype(np.float32)
    y = rng.integers(0, config.num_classes, 20)
    return model, get_params(model), names, x, y


def _task(task_id: str, names) -> Task:
    return Task(
        task_id=task_id,
        study_id="s1",
        device_id="dev-00",
        model_version=0,
        subset_id="sub",
        subset_names=tuple(names),
        local_epochs=2,
        batch_size=8,
        lr=0.05,
        deadline_s=60.0,
        dp=PRIVACY.task_dp(),
    )


def test_fixed_mechanism_runs_the_task_steps_whatever_the_data_size(device):
    # Prepare
    model, base, names, x, y = device
    config = DPTrainConfig(
        noise_multiplier=1.5,
        max_grad_norm=1.0,
        sample_rate=0.25,
        steps=8,
        max_physical_batch_size=4,
    )

    # Execute
    small = train_subset_dp(
        model, base, names, x[:7], y[:7], config=config, accountant_state=None, seed=1
    )
    large = train_subset_dp(model, base, names, x, y, config=config, accountant_state=None, seed=1)

    # Assert
    expected = MechanismStep(noise_multiplier=1.5, sample_rate=0.25, steps=8)
    assert small.mechanism_step == large.mechanism_step == expected
    assert planned_step(7, config=config) == planned_step(20, config=config) == expected
    assert large.accountant_state == {"mechanism": "rdp", "history": [[1.5, 0.25, 8]]}
    assert set(large.delta) == set(names)
    assert all(np.all(np.isfinite(v)) and np.any(v != 0) for v in large.delta.values())


def test_device_trains_until_its_budget_then_refuses(device):
    # Prepare
    model, base, names, x, y = device
    budget = DeviceBudget(BudgetPolicy(epsilon=4.5, delta=DELTA))
    ledger = PrivacyLedger(budget.policy)  # what the coordinator recomputes
    trained = 0

    # Execute
    with pytest.raises(TaskRefused) as refused:
        for i in range(10):
            task = _task(f"t{i}", names)
            outcome, report = run_dp_task(
                budget, task, model, base, x, y, momentum=0.9, max_physical_batch_size=4, seed=i
            )
            ledger.charge(
                "dev-00",
                task.task_id,
                MechanismStep(
                    noise_multiplier=report.noise_multiplier,
                    sample_rate=report.sample_rate,
                    steps=report.steps,
                ),
                at=float(i),
                max_grad_norm=report.max_grad_norm,
                claimed_epsilon=report.claimed_epsilon,
            )
            trained += 1

    # Assert
    assert trained == 2
    assert refused.value.reason is RefusalReason.BUDGET_EXHAUSTED
    assert refused.value.spent == pytest.approx(budget.spent()) and refused.value.requested > 4.5
    assert refused.value.error_message().code is ErrorCode.BUDGET_EXHAUSTED
    assert budget.would_exceed(PRIVACY.task_dp())
    assert ledger.spent("dev-00") == budget.spent() <= 4.5
    assert budget.accountant_state == {"mechanism": "rdp", "history": [[1.5, 0.25, 16]]}


def test_task_on_other_terms_is_refused_before_training():
    # Prepare
    budget = DeviceBudget(POLICY)
    other_delta = PRIVACY.task_dp().model_copy(update={"delta": 1e-6})
    other_accountant = PRIVACY.task_dp().model_copy(update={"accountant": Accountant.PRV})
    unplanned = PRIVACY.task_dp().model_copy(update={"max_steps": None})

    # Execute / Assert
    for dp, reason in (
        (other_delta, RefusalReason.TERMS_DIFFER),
        (other_accountant, RefusalReason.TERMS_DIFFER),
        (unplanned, RefusalReason.UNPLANNED),
    ):
        with pytest.raises(TaskRefused) as refused:
            budget.check(dp)
        assert refused.value.reason is reason
    assert budget.accountant_state is None and budget.spent() == 0.0


def test_claim_matches_an_opacus_replay_and_a_foreign_state_is_refused(device):
    # Prepare
    model, base, names, x, y = device
    budget = DeviceBudget(POLICY)

    # Execute
    _, report = run_dp_task(
        budget,
        _task("t0", names),
        model,
        base,
        x,
        y,
        momentum=0.9,
        max_physical_batch_size=8,
        seed=3,
    )

    # Assert
    step = MechanismStep(noise_multiplier=1.5, sample_rate=0.25, steps=8)
    assert report.claimed_epsilon == epsilon_for([step], delta=DELTA, accountant=Accountant.RDP)
    stale = DeviceBudget(POLICY)  # a device that lost its state would claim less: refused
    with pytest.raises(PolicyError):
        stale.record(_outcome_with_history(report, history=[[1.5, 0.25, 16]]))


def test_budget_survives_a_device_restart(tmp_path, device):
    # Prepare
    model, base, names, x, y = device
    budget = DeviceBudget(POLICY)
    run_dp_task(
        budget,
        _task("t0", names),
        model,
        base,
        x,
        y,
        momentum=0.9,
        max_physical_batch_size=8,
        seed=1,
    )
    path = tmp_path / "budget.json"

    # Execute
    budget.save(path)
    restored = DeviceBudget.load(path, policy=POLICY)

    # Assert
    assert restored.spent() == budget.spent() > 0
    assert restored.accountant_state == budget.accountant_state
    assert (path.stat().st_mode & 0o777) == 0o600
    with pytest.raises(PolicyError):
        DeviceBudget.load(path, policy=BudgetPolicy(epsilon=9.0, delta=DELTA))


def _outcome_with_history(report, *, history):
    return LocalOutcome(
        task_id="t1",
        delta={},
        num_samples=1,
        steps=report.steps,
        mean_loss=0.0,
        update_energy=0.0,
        dp=DPSpend(
            noise_multiplier=report.noise_multiplier,
            sample_rate=report.sample_rate,
            steps=report.steps,
            max_grad_norm=report.max_grad_norm,
            accountant_state={"mechanism": "rdp", "history": history},
        ),
    )
