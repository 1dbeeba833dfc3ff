"""Subset ladder, memory-sized selection and measured footprints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedward.coordinator.engine.planning import DoesNotFit, SubsetMode, SubsetPlanner
from fedward.tinytrain.memory import measure_training_step
from fedward.tinytrain.models import (
    ModelConfig,
    ModelKind,
    build_model,
    get_params,
    param_shapes,
    parameter_groups,
)
from fedward.tinytrain.subsets import SubsetLadder, SubsetSpec, subset_id
from fedward.tinytrain.training import LocalTrainConfig, split_for_training, train_subset

CONFIG = ModelConfig(width=8, window=128)


@pytest.fixture(scope="module")
def ladder() -> SubsetLadder:
    return SubsetLadder(parameter_groups(build_model(CONFIG, seed=0)))


@pytest.fixture(scope="module")
def footprints(ladder: SubsetLadder) -> list[int]:
    return [measure_training_step(CONFIG, t.names, batch_size=16).total for t in ladder.tiers()]


def test_ladder_tiers_are_nested_and_walk_from_the_output(ladder: SubsetLadder) -> None:
    tiers = ladder.tiers()
    for small, big in zip(tiers, tiers[1:], strict=False):
        assert set(small.names) < set(big.names)
    assert ladder.order[:2] == ("head.bias", "head.weight")
    assert set(ladder.full().names) == set(param_shapes(build_model(CONFIG, seed=0)))


def test_subset_id_depends_on_names_not_order() -> None:
    assert subset_id(["a", "b"]) == subset_id(["b", "a"])
    assert subset_id(["a"]) != subset_id(["a", "b"])
    with pytest.raises(ValueError):
        SubsetSpec(names=(), tier=1)


def test_measured_footprint_grows_with_the_tier(footprints: list[int]) -> None:
    assert footprints == sorted(footprints)
    assert footprints[0] < footprints[-1] / 3


def test_subset_step_holds_no_gradients_or_state_for_frozen_tensors(ladder: SubsetLadder) -> None:
    tier = ladder.tier(4)
    f = measure_training_step(CONFIG, tier.names, batch_size=16)
    trained_bytes = 4 * tier.numel(param_shapes(build_model(CONFIG, seed=0)))
    assert f.grads == trained_bytes
    assert f.optimizer == trained_bytes  # one momentum buffer per trained tensor
    full = measure_training_step(CONFIG, ladder.full().names, batch_size=16)
    assert f.saved < full.saved / 4


def test_profiler_cross_check_agrees_with_the_hook_measurement(ladder: SubsetLadder) -> None:
    # The profiler sees allocations during the step (not the parameters held
    # before it); hook-measured state and the profiler's peak must agree
    # within a factor of two for every tier.
    for tier in (ladder.tier(2), ladder.tier(6), ladder.full()):
        f = measure_training_step(CONFIG, tier.names, batch_size=16)
        resident = f.total - f.params
        assert 0.5 * resident <= f.profiler_peak <= 2.0 * resident + 64 * 1024


@pytest.mark.parametrize("budget_tier", [1, 4, 7])
def test_planner_picks_the_largest_tier_that_fits(
    ladder: SubsetLadder, footprints: list[int], budget_tier: int
) -> None:
    planner = SubsetPlanner(
        ladder, footprint_bytes=lambda s: footprints[s.tier - 1], mode=SubsetMode.NESTED
    )
    budget = footprints[budget_tier - 1] + 1
    chosen = planner.subset_for(budget, fleet_memory=[budget])
    assert chosen.tier == budget_tier
    assert footprints[chosen.tier - 1] <= budget


def test_global_mode_sizes_everyone_to_the_smallest_device(
    ladder: SubsetLadder, footprints: list[int]
) -> None:
    planner = SubsetPlanner(
        ladder, footprint_bytes=lambda s: footprints[s.tier - 1], mode=SubsetMode.GLOBAL
    )
    fleet = [footprints[2], footprints[-1] * 10]
    assert planner.subset_for(fleet[1], fleet_memory=fleet).tier == 3
    nested = SubsetPlanner(
        ladder, footprint_bytes=lambda s: footprints[s.tier - 1], mode=SubsetMode.NESTED
    )
    assert nested.subset_for(fleet[1], fleet_memory=fleet).tier == ladder.num_tiers
    with pytest.raises(DoesNotFit):
        nested.subset_for(footprints[0] - 1, fleet_memory=fleet)


def test_subset_training_changes_only_trained_tensors(ladder: SubsetLadder) -> None:
    # Prepare
    model = build_model(CONFIG, seed=1)
    base = get_params(model)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, CONFIG.in_channels, CONFIG.window)).astype(np.float32)
    y = rng.integers(0, CONFIG.num_classes, size=20)
    tier = ladder.tier(4)
    # Execute
    result = train_subset(
        model, base, tier.names, x, y, config=LocalTrainConfig(batch_size=8), seed=0
    )
    # Assert
    assert list(result.delta) == list(tier.names)
    assert all(np.abs(v).sum() > 0 for v in result.delta.values())
    after = get_params(model)
    for name in set(base) - set(tier.names):
        np.testing.assert_array_equal(after[name], base[name])
    assert result.steps == 3 and result.num_samples == 20


def test_split_marks_only_the_subset_trainable(ladder: SubsetLadder) -> None:
    model = build_model(CONFIG, seed=0)
    split = split_for_training(model, ladder.tier(3).names)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(ladder.tier(3).names)
    assert len(split.prefix) > 0  # stem..block3 run without autograd
    with torch.no_grad():
        out = model(torch.zeros(2, CONFIG.in_channels, CONFIG.window))
    assert out.shape == (2, CONFIG.num_classes)


def test_mlp_has_named_groups_too() -> None:
    groups = parameter_groups(
        build_model(ModelConfig(kind=ModelKind.MLP, width=4, window=64), seed=0)
    )
    assert list(groups) == ["stem", "block2", "head"]
