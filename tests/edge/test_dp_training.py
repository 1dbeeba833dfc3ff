"""DP-SGD on the trainable subset: what changes, what is reported, what it costs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from fedward.edge.dp_training import (
    DPTrainConfig,
    measure_dp_training_step,
    planned_step,
    train_subset_dp,
)
from fedward.privacy.accounting import Accountant, MechanismStep, epsilon_for
from fedward.privacy.budget import BudgetPolicy
from fedward.privacy.errors import PolicyError
from fedward.privacy.ledger import PrivacyLedger
from fedward.tinytrain.memory import measure_training_step
from fedward.tinytrain.models import ModelConfig, build_model, get_params, parameter_groups
from fedward.tinytrain.subsets import SubsetLadder

DELTA = 1e-5
CONFIG = DPTrainConfig(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=16, epochs=1)


@pytest.fixture(scope="module")
def setup():
    model_config = ModelConfig()
    model = build_model(model_config, seed=0)
    ladder = SubsetLadder(parameter_groups(model))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, model_config.in_channels, model_config.window)).astype(np.float32)
    y = rng.integers(0, model_config.num_classes, 64)
    return model_config, model, ladder, get_params(model), x, y


def test_only_trained_tensors_change_and_deltas_are_finite(setup):
    # Prepare
    _, model, ladder, base, x, y = setup
    subset = ladder.tier(3)  # head + block4 bias: block4 weight is frozen inside the suffix

    # Execute
    result = train_subset_dp(
        model, base, subset.names, x, y, config=CONFIG, accountant_state=None, seed=1
    )

    # Assert
    after = get_params(model)
    assert list(result.delta) == list(subset.names)
    for name, value in base.items():
        if name in subset.names:
            assert np.all(np.isfinite(result.delta[name]))
            assert np.any(result.delta[name] != 0)
            np.testing.assert_allclose(after[name], value + result.delta[name], rtol=1e-6)
        else:
            np.testing.assert_array_equal(after[name], value)


def test_reports_mechanism_and_leaves_no_opacus_hooks(setup):
    # Prepare
    _, model, ladder, base, x, y = setup
    subset = ladder.tier(4)

    # Execute
    result = train_subset_dp(
        model, base, subset.names, x, y, config=CONFIG, accountant_state=None, seed=1
    )

    # Assert
    assert result.mechanism_step == planned_step(len(x), config=CONFIG)
    assert result.sample_rate == 16 / 64 and result.steps == 4
    assert result.noise_multiplier == 1.0 and result.max_grad_norm == 1.0
    assert result.num_samples == 64 and np.isfinite(result.mean_loss)
    assert result.accountant_state == {"mechanism": "rdp", "history": [[1.0, 0.25, 4]]}
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks
    for p in model.parameters():
        assert not hasattr(p, "grad_sample") and not hasattr(p, "summed_grad")


def test_same_seed_reproduces_and_other_seed_differs(setup):
    # Prepare
    _, model, ladder, base, x, y = setup
    names = ladder.tier(2).names

    def run(seed: int):
        return train_subset_dp(
            model, base, names, x, y, config=CONFIG, accountant_state=None, seed=seed
        )

    # Execute
    a, b, c = run(5), run(5), run(6)

    # Assert
    for name in names:
        np.testing.assert_array_equal(a.delta[name], b.delta[name])
    assert any(not np.array_equal(a.delta[n], c.delta[n]) for n in names)


def test_accountant_state_carries_across_tasks_with_different_subsets(setup):
    # Prepare
    _, model, ladder, base, x, y = setup
    other = DPTrainConfig(noise_multiplier=1.3, max_grad_norm=0.5, batch_size=10, epochs=2)

    # Execute
    first = train_subset_dp(
        model, base, ladder.tier(4).names, x, y, config=CONFIG, accountant_state=None, seed=1
    )
    second = train_subset_dp(
        model,
        base,
        ladder.tier(2).names,
        x[:40],
        y[:40],
        config=other,
        accountant_state=first.accountant_state,
        seed=2,
    )

    # Assert
    history = [first.mechanism_step, second.mechanism_step]
    one_accountant = RDPAccountant()
    for step in history:
        for _ in range(step.steps):
            one_accountant.step(
                noise_multiplier=step.noise_multiplier, sample_rate=step.sample_rate
            )
    assert second.mechanism_step == MechanismStep(noise_multiplier=1.3, sample_rate=0.25, steps=8)
    assert second.epsilon(delta=DELTA) == epsilon_for(
        history, delta=DELTA, accountant=Accountant.RDP
    )
    assert second.epsilon(delta=DELTA) == pytest.approx(one_accountant.get_epsilon(DELTA), rel=1e-9)
    assert second.epsilon(delta=DELTA) > first.epsilon(delta=DELTA)


def test_device_reports_are_accepted_by_the_ledger(setup):
    # Prepare
    _, model, ladder, base, x, y = setup
    ledger = PrivacyLedger(BudgetPolicy(epsilon=20.0, delta=DELTA))
    state = None

    # Execute: the device refuses nothing here; the ledger recomputes each claim
    for task in range(2):
        step = planned_step(len(x), config=CONFIG)
        assert ledger.can_afford("wrist", step)
        result = train_subset_dp(
            model,
            base,
            ladder.tier(2).names,
            x,
            y,
            config=CONFIG,
            accountant_state=state,
            seed=task,
        )
        state = result.accountant_state
        ledger.charge(
            "wrist",
            f"t{task}",
            result.mechanism_step,
            at=float(task),
            max_grad_norm=result.max_grad_norm,
            claimed_epsilon=result.epsilon(delta=DELTA),
        )

    # Assert
    assert ledger.spent("wrist") == pytest.approx(result.epsilon(delta=DELTA), abs=1e-12)


def test_gdp_refuses_a_changed_mechanism_before_training(setup):
    # Prepare
    _, model, ladder, base, x, y = setup
    gdp = DPTrainConfig(noise_multiplier=1.0, max_grad_norm=1.0, accountant=Accountant.GDP)
    prior = {"mechanism": "gdp", "history": [[2.0, 0.5, 3]]}

    # Execute / Assert
    with pytest.raises(PolicyError, match="GDP"):
        train_subset_dp(
            model, base, ladder.tier(2).names, x, y, config=gdp, accountant_state=prior, seed=0
        )


def test_accountant_state_of_another_mechanism_is_refused(setup):
    # Prepare
    _, model, ladder, base, x, y = setup
    prv_state = {"mechanism": "prv", "history": [[1.0, 0.5, 3]]}

    # Execute / Assert
    with pytest.raises(PolicyError):
        train_subset_dp(
            model,
            base,
            ladder.tier(2).names,
            x,
            y,
            config=CONFIG,
            accountant_state=prv_state,
            seed=0,
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_multiplier": 0.0, "max_grad_norm": 1.0},
        {"noise_multiplier": 1.0, "max_grad_norm": float("nan")},
        {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "max_physical_batch_size": 0},
        {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "accountant": "rdp"},
    ],
)
def test_config_rejects_invalid_values(kwargs):
    with pytest.raises(ValueError):
        DPTrainConfig(**kwargs)


def test_dp_memory_on_wearable_subset_is_within_a_quarter_of_full_fedavg(setup):
    # Prepare: block4 + head (tier 4), batch 32; the wearable caps physical batches at 8
    model_config, _, ladder, _, _, _ = setup
    subset = ladder.tier(4)
    everything = ladder.full().names
    torch.manual_seed(0)

    # Execute
    full = measure_training_step(model_config, everything, batch_size=32)
    dp = measure_dp_training_step(
        model_config, subset.names, batch_size=32, max_physical_batch_size=8
    )
    dp_unbatched = measure_dp_training_step(model_config, subset.names, batch_size=32)

    # Assert
    trained_bytes = 4 * sum(
        p.numel()
        for n, p in build_model(model_config, seed=0).named_parameters()
        if n in subset.names
    )
    assert dp.per_sample_grads == 8 * trained_bytes  # counted, one physical batch
    assert dp_unbatched.per_sample_grads == 32 * trained_bytes
    assert dp.grads >= dp.per_sample_grads + trained_bytes
    assert dp.total <= 0.25 * full.total, (dp.as_dict(), full.as_dict())
