"""Strategies against merges computed by hand (Prepare / Execute / Assert)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from fedward.coordinator.errors import (
    NotReadyError,
    RejectReason,
    StateLoadError,
    StrategyConfigError,
    UpdateRejected,
)
from fedward.coordinator.strategies import (
    FTTE,
    ClientUpdate,
    FedAsync,
    FedAvg,
    FedBuff,
    NormBounded,
    Schedule,
    StalenessFunction,
    StrategyName,
)
from fedward.coordinator.strategies.ftte import EnergyRule

SHAPES = {"a": (2,), "b": (1,)}


def params() -> dict[str, np.ndarray]:
    return {"a": np.array([1.0, 2.0], dtype=np.float32), "b": np.array([0.5], dtype=np.float32)}


def upd(
    task: str, delta: dict[str, list[float]], *, n: int = 1, base: int = 0, device: str = ""
) -> ClientUpdate:
    return ClientUpdate(
        device_id=device or f"dev-{task}",
        task_id=task,
        base_version=base,
        subset_id="s",
        delta={k: np.array(v, dtype=np.float32) for k, v in delta.items()},
        num_samples=n,
    )


def test_fedavg_is_the_sample_weighted_mean_per_tensor() -> None:
    # Prepare
    s = FedAvg(shapes=SHAPES)
    s.begin_round(["t1", "t2"])
    s.accept(upd("t1", {"a": [1.0, 0.0], "b": [3.0]}, n=1), server_version=0)
    # Execute
    s.accept(upd("t2", {"a": [4.0, 3.0]}, n=3), server_version=0)  # t2 did not train b
    merged = s.aggregate(params(), server_version=0)
    # Assert: a <- a + (1*[1,0] + 3*[4,3]) / 4 ; b <- b + 3 (only t1 trained b)
    np.testing.assert_allclose(merged.params["a"], [1 + 13 / 4, 2 + 9 / 4], rtol=1e-6)
    np.testing.assert_allclose(merged.params["b"], [3.5], rtol=1e-6)
    assert merged.coverage == {"a": 2, "b": 1}


def test_fedavg_waits_for_cohort_and_counts_dropouts() -> None:
    s = FedAvg(shapes=SHAPES)
    s.begin_round(["t1", "t2", "t3"])
    s.accept(upd("t1", {"a": [1.0, 1.0]}), server_version=0)
    assert not s.ready()
    s.mark_dropped("t2")
    assert not s.ready()
    s.accept(upd("t3", {"a": [3.0, 3.0]}), server_version=0)
    assert s.ready()
    with pytest.raises(UpdateRejected) as err:
        s.accept(upd("t9", {"a": [0.0, 0.0]}), server_version=0)
    assert err.value.reason is RejectReason.NOT_IN_COHORT


def test_fedbuff_divides_by_k_and_discounts_staleness() -> None:
    # Prepare: K = 2, one fresh and one update three versions stale
    s = FedBuff(shapes=SHAPES, buffer_size=2, server_lr=0.5)
    s.accept(upd("t1", {"a": [2.0, 2.0]}, base=5), server_version=5)
    s.accept(upd("t2", {"a": [4.0, 0.0]}, base=2), server_version=5)
    # Execute
    merged = s.aggregate(params(), server_version=5)
    # Assert: a <- a + 0.5 * (1*[2,2] + 1/sqrt(4)*[4,0]) / 2
    expected = np.array([1.0, 2.0]) + 0.5 * (np.array([2.0, 2.0]) + 0.5 * np.array([4.0, 0.0])) / 2
    np.testing.assert_allclose(merged.params["a"], expected, rtol=1e-6)
    assert merged.staleness == (0, 3)
    np.testing.assert_allclose(merged.weights, [1.0, 1 / math.sqrt(4)])


def test_fedasync_mixes_the_trained_model_with_polynomial_staleness() -> None:
    # Prepare: base model of version 0 differs from the current one (version 2)
    s = FedAsync(shapes=SHAPES, mixing=0.5, function=StalenessFunction.POLYNOMIAL, exponent=1.0)
    base = {"a": np.array([0.0, 0.0], dtype=np.float32), "b": np.array([0.0], dtype=np.float32)}
    u = upd("t1", {"a": [1.0, 1.0]}, base=0)
    u = ClientUpdate(**{**u.__dict__, "base_params": base})
    # Execute
    s.accept(u, server_version=2)
    merged = s.aggregate(params(), server_version=2)
    # Assert: alpha = 0.5 * (2+1)^-1 ; a <- (1-alpha) a + alpha (base + delta)
    alpha = 0.5 / 3
    np.testing.assert_allclose(
        merged.params["a"], (1 - alpha) * np.array([1.0, 2.0]) + alpha * 1.0, rtol=1e-6
    )
    np.testing.assert_allclose(merged.params["b"], [0.5])


def test_fedasync_hinge() -> None:
    s = FedAsync(shapes=SHAPES, function=StalenessFunction.HINGE, exponent=0.5, hinge_b=2)
    assert s.staleness_weight(2) == 1.0
    assert s.staleness_weight(6) == pytest.approx(1 / (0.5 * 4 + 1))


def test_ftte_weights_by_samples_age_and_relative_update_energy() -> None:
    # Prepare: three updates; the third is stale, the second unusually energetic
    s = FTTE(
        shapes=SHAPES,
        buffer_size=3,
        staleness_exponent=1.0,
        energy_beta=2.0,
        energy_tolerance=4.0,
        energy_rule=EnergyRule.DAMP,  # the former rule (CLIP: test_ftte_energy_clip.py)
        energy_quantile=0.5,
    )
    u1 = upd("t1", {"a": [1.0, 1.0]}, n=2, base=4)  # energy 1
    u2 = upd("t2", {"a": [3.0, 3.0]}, n=2, base=4)  # energy 9
    u3 = upd("t3", {"a": [-1.0, 1.0]}, n=4, base=1)  # energy 1, staleness 3
    for u in (u1, u2, u3):
        s.accept(u, server_version=4)
    # Execute
    merged = s.aggregate(params(), server_version=4)
    # Assert: median energy = 1 -> r = (1, 9, 1); g = (1, 1/(1+2*(9-4)), 1); s = (1, 1, 1/4)
    w = np.array([2 * 1 * 1, 2 * 1 * (1 / 11), 4 * 0.25 * 1])
    deltas = np.array([[1.0, 1.0], [3.0, 3.0], [-1.0, 1.0]])
    expected = np.array([1.0, 2.0]) + (w[:, None] * deltas).sum(0) / w.sum()
    np.testing.assert_allclose(merged.weights, w, rtol=1e-9)
    np.testing.assert_allclose(merged.params["a"], expected, rtol=1e-6)


def test_ftte_energy_term_leaves_updates_within_the_tolerance_alone() -> None:
    # Prepare: energies 1, 9 and 400 times the median; tolerance 10, beta 1
    s = FTTE(
        shapes=SHAPES,
        buffer_size=4,
        staleness_exponent=0.0,
        sample_weighting=False,
        energy_rule=EnergyRule.DAMP,
        energy_quantile=0.5,
    )
    for i, value in enumerate((1.0, 1.0, 3.0, 20.0)):
        s.accept(upd(f"t{i}", {"a": [value, value]}), server_version=0)
    # Execute
    merged = s.aggregate(params(), server_version=0)
    # Assert: median energy = (1 + 9) / 2 = 5 -> r = (0.2, 0.2, 1.8, 80); only the last
    # exceeds 10x the median and is damped by 1 / (1 + (80 - 10))
    np.testing.assert_allclose(merged.weights, [1.0, 1.0, 1.0, 1 / 71], rtol=1e-9)


def test_ftte_reference_energy_looks_back_so_a_divergent_half_buffer_is_still_damped() -> None:
    # Prepare: two ordinary merges (energies 1) fill the look-back window, then a
    # buffer where half the updates are 400x as energetic
    s = FTTE(
        shapes=SHAPES,
        buffer_size=4,
        staleness_exponent=0.0,
        sample_weighting=False,
        energy_rule=EnergyRule.DAMP,
        energy_quantile=0.5,
    )
    for merge in range(2):
        for i in range(4):
            s.accept(upd(f"m{merge}-{i}", {"a": [1.0, 1.0]}), server_version=merge)
        s.aggregate(params(), server_version=merge)
    for i, value in enumerate((1.0, 1.0, 20.0, 20.0)):
        s.accept(upd(f"t{i}", {"a": [value, value]}), server_version=2)
    # Execute
    merged = s.aggregate(params(), server_version=2)
    # Assert: median over 8 past + 4 buffered energies is 1 -> r = (1, 1, 400, 400);
    # the buffer's own median (200.5) would have damped nothing
    assert s.reference_energy([]) == 1.0
    np.testing.assert_allclose(merged.weights, [1.0, 1.0, 1 / 391, 1 / 391], rtol=1e-9)
    windowless = FTTE(
        shapes=SHAPES,
        buffer_size=4,
        staleness_exponent=0.0,
        sample_weighting=False,
        energy_window=0,
        energy_rule=EnergyRule.DAMP,
        energy_quantile=0.5,
    )
    for i, value in enumerate((1.0, 1.0, 20.0, 20.0)):
        windowless.accept(upd(f"t{i}", {"a": [value, value]}), server_version=0)
    assert windowless.aggregate(params(), server_version=0).weights == (1.0, 1.0, 1.0, 1.0)


def test_ftte_saves_and_checks_its_energy_window() -> None:
    # Prepare: one merge leaves energies 1 and 9 in the window
    s = FTTE(shapes=SHAPES, buffer_size=2, energy_window=3)
    s.accept(upd("t1", {"a": [1.0, 1.0]}), server_version=0)
    s.accept(upd("t2", {"a": [3.0, 3.0]}), server_version=0)
    s.aggregate(params(), server_version=0)
    state = s.state_dict()
    # Execute
    restored = FTTE(shapes=SHAPES, buffer_size=2, energy_window=3)
    restored.load_state_dict(state)
    # Assert
    assert state["payload"]["energies"] == [1.0, 9.0]
    assert restored.reference_energy([]) == s.reference_energy([]) == 5.0
    for bad in ([1.0, -1.0], [float("nan")], [1.0, 1.0, 1.0, 1.0], "1,9", [True]):
        with pytest.raises(StateLoadError, match="energies"):
            FTTE(shapes=SHAPES, buffer_size=2, energy_window=3).load_state_dict(
                {**state, "payload": {**state["payload"], "energies": bad}}
            )


def test_ftte_refuses_a_tolerance_below_the_median() -> None:
    with pytest.raises(StrategyConfigError, match="energy_tolerance"):
        FTTE(shapes=SHAPES, buffer_size=2, energy_tolerance=0.5)


def test_ftte_nested_subsets_normalise_each_tensor_by_who_trained_it() -> None:
    s = FTTE(shapes=SHAPES, buffer_size=2, staleness_exponent=0.0, energy_beta=0.0)
    s.accept(upd("t1", {"a": [1.0, 1.0], "b": [2.0]}, n=1), server_version=0)
    s.accept(upd("t2", {"a": [3.0, 3.0]}, n=1), server_version=0)
    merged = s.aggregate(params(), server_version=0)
    np.testing.assert_allclose(merged.params["a"], [3.0, 4.0])
    np.testing.assert_allclose(merged.params["b"], [2.5])  # not diluted by t2
    assert merged.coverage == {"a": 2, "b": 1}


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        (upd("x", {"a": [np.nan, 1.0]}), RejectReason.NON_FINITE),
        (upd("x", {"a": [1.0, 1.0, 1.0]}), RejectReason.SHAPE_MISMATCH),
        (upd("x", {"zz": [1.0]}), RejectReason.UNEXPECTED_TENSOR),
        (upd("x", {}), RejectReason.MISSING_TENSOR),
        (upd("x", {"a": [1.0, 1.0]}, n=0), RejectReason.BAD_SAMPLE_COUNT),
        (upd("x", {"a": [1.0, 1.0]}, base=9), RejectReason.MALFORMED),
    ],
)
def test_bad_updates_are_rejected_with_a_reason(update: ClientUpdate, reason: RejectReason) -> None:
    s = FTTE(shapes=SHAPES, buffer_size=2)
    with pytest.raises(UpdateRejected) as err:
        s.accept(update, server_version=3)
    assert err.value.reason is reason
    assert s.pending == 0


def test_too_stale_and_duplicate_updates_are_rejected() -> None:
    s = FedBuff(shapes=SHAPES, buffer_size=3, max_staleness=2)
    with pytest.raises(UpdateRejected) as err:
        s.accept(upd("t1", {"a": [1.0, 1.0]}, base=0), server_version=3)
    assert err.value.reason is RejectReason.TOO_STALE
    s.accept(upd("t2", {"a": [1.0, 1.0]}, base=2), server_version=3)
    with pytest.raises(UpdateRejected) as err:
        s.accept(upd("t2", {"a": [1.0, 1.0]}, base=2), server_version=3)
    assert err.value.reason is RejectReason.DUPLICATE


def test_aggregate_before_ready_raises() -> None:
    s = FedBuff(shapes=SHAPES, buffer_size=2)
    s.accept(upd("t1", {"a": [1.0, 1.0]}), server_version=0)
    with pytest.raises(NotReadyError):
        s.aggregate(params(), server_version=0)


def test_state_dict_round_trip_restores_the_buffer_and_checks_config() -> None:
    # Prepare
    s = FTTE(shapes=SHAPES, buffer_size=2)
    s.accept(upd("t1", {"a": [1.0, 2.0]}, n=3), server_version=0)
    state = s.state_dict()
    # Execute
    restored = FTTE(shapes=SHAPES, buffer_size=2)
    restored.load_state_dict(state)
    restored.accept(upd("t2", {"a": [3.0, 4.0]}, n=1), server_version=0)
    s.accept(upd("t2", {"a": [3.0, 4.0]}, n=1), server_version=0)
    # Assert
    np.testing.assert_array_equal(
        restored.aggregate(params(), server_version=0).params["a"],
        s.aggregate(params(), server_version=0).params["a"],
    )
    with pytest.raises(StateLoadError):
        FTTE(shapes=SHAPES, buffer_size=5).load_state_dict(state)
    with pytest.raises(StateLoadError):
        FedBuff(shapes=SHAPES, buffer_size=2).load_state_dict(state)
    bad = copy.deepcopy(state)
    bad["payload"]["buffer"]["payload"]["updates"][0]["delta"] = {"a": np.array([np.inf, 0.0])}
    for energy in ("1.0", True, float("nan"), -1.0):  # not a finite energy >= 0
        odd = copy.deepcopy(state)
        odd["payload"]["buffer"]["payload"]["updates"][0]["update_energy"] = energy
        with pytest.raises(StateLoadError):
            FTTE(shapes=SHAPES, buffer_size=2).load_state_dict(odd)
    with pytest.raises(StateLoadError):
        FTTE(shapes=SHAPES, buffer_size=2).load_state_dict(bad)


def test_fedavg_state_dict_keeps_an_open_round() -> None:
    # Prepare: a round of three, one reported, one dropped
    s = FedAvg(shapes=SHAPES)
    s.begin_round(["t1", "t2", "t3"])
    s.accept(upd("t1", {"a": [1.0, 1.0]}, n=2), server_version=0)
    s.mark_dropped("t2")
    state = s.state_dict()
    # Execute
    restored = FedAvg(shapes=SHAPES)
    restored.load_state_dict(state)
    for strategy in (s, restored):
        strategy.accept(upd("t3", {"a": [3.0, 3.0]}), server_version=0)
    # Assert: an envelope; same payload keys as every strategy plus the round; the
    # round closes the same way
    assert set(state) == {"kind", "format_version", "payload"}
    assert set(state["payload"]) == {"strategy", "config", "buffer", "round"}
    assert state["payload"]["round"] == {
        "number": 1,
        "cohort": ["t1", "t2", "t3"],
        "dropped": ["t2"],
    }
    assert restored.cohort == s.cohort and restored.ready()
    np.testing.assert_array_equal(
        restored.aggregate(params(), server_version=0).params["a"],
        s.aggregate(params(), server_version=0).params["a"],
    )


@pytest.mark.parametrize(
    "round_",
    [
        None,
        {"number": 1, "cohort": ["t1"], "dropped": ["t9"]},  # dropped outside the cohort
        {"number": 1, "cohort": ["t2"], "dropped": []},  # the buffered t1 outside the cohort
        {"number": 1, "cohort": ["t1"], "dropped": ["t1"]},  # t1 both buffered and dropped
        {"number": 0, "cohort": ["t1"], "dropped": []},  # an open round numbered 0
        {"number": 1, "cohort": "t1", "dropped": []},
        {"number": -1, "cohort": ["t1"], "dropped": []},
        {"number": True, "cohort": ["t1"], "dropped": []},
    ],
)
def test_fedavg_refuses_a_round_that_cannot_have_happened(round_) -> None:
    # Prepare
    s = FedAvg(shapes=SHAPES)
    s.begin_round(["t1"])
    s.accept(upd("t1", {"a": [1.0, 1.0]}), server_version=0)
    state = copy.deepcopy(s.state_dict())
    del state["payload"]["round"]
    if round_ is not None:
        state["payload"]["round"] = round_
    target = FedAvg(shapes=SHAPES)
    # Execute / Assert: refused, and nothing half-loaded
    with pytest.raises(StateLoadError):
        target.load_state_dict(state)
    assert target.pending == 0 and target.cohort == frozenset()


def test_norm_bounded_scales_an_outlier_to_the_bound_and_leaves_the_rest() -> None:
    # Prepare: FedBuff wrapped; three ordinary updates (energy 1) then one of energy 400
    s = NormBounded(FedBuff(shapes=SHAPES, buffer_size=4), tolerance=10.0, window=50)
    for i in range(3):
        s.accept(upd(f"t{i}", {"a": [1.0, 1.0]}), server_version=0)
    # Execute
    s.accept(upd("t3", {"a": [20.0, 20.0]}), server_version=0)
    merged = s.aggregate(params(), server_version=0)
    # Assert: median of (1, 1, 1, 400) = 1 -> bound 10 -> the outlier scaled by
    # sqrt(10 / 400) to energy 10 (values sqrt(10)); FedBuff's mean of what remains
    bounded = np.sqrt(10.0)
    np.testing.assert_allclose(
        merged.params["a"], np.array([1.0, 2.0]) + (3 * 1.0 + bounded) / 4, rtol=1e-6
    )
    assert s.clipped == 1 and s.name is StrategyName.FEDBUFF and s.pending == 0


def test_norm_bounded_leaves_updates_alone_when_the_median_energy_is_zero() -> None:
    s = NormBounded(FedBuff(shapes=SHAPES, buffer_size=4), tolerance=10.0)
    for i in range(3):
        s.accept(upd(f"t{i}", {"a": [0.0, 0.0]}), server_version=0)
    s.accept(upd("t3", {"a": [2.0, 2.0]}), server_version=0)
    merged = s.aggregate(params(), server_version=0)
    np.testing.assert_allclose(merged.params["a"], [1.5, 2.5])  # (0 + 0 + 0 + 2) / 4
    assert s.clipped == 0


def test_norm_bounded_wraps_any_strategy_and_refuses_bad_input_before_measuring() -> None:
    with pytest.raises(StrategyConfigError, match="Strategy"):
        NormBounded(object())  # type: ignore[arg-type]
    twice = NormBounded(NormBounded(FedAvg(shapes=SHAPES)))  # a wrapper is a strategy
    assert twice.name is StrategyName.FEDAVG and twice.schedule is Schedule.SYNCHRONOUS
    s = NormBounded(FedBuff(shapes=SHAPES, buffer_size=2))
    with pytest.raises(UpdateRejected):
        s.accept(upd("t1", {"a": [np.nan, 1.0]}), server_version=0)
    assert s.state_dict()["payload"]["own"]["energies"] == []  # the rejected update left no trace


def test_norm_bounded_fedavg_keeps_the_round_and_bounds_inside_it() -> None:
    # Prepare: a round of four through the wrapper's schedule hooks
    s = NormBounded(FedAvg(shapes=SHAPES), tolerance=10.0)
    assert s.dispatch_room(in_flight=0, concurrency=4) == 4 and s.next_round_id() == 1
    s.tasks_dispatched(["t0", "t1", "t2", "t3"])
    # Execute: three ordinary updates, one outlier, and an update outside the round
    for i in range(3):
        s.accept(upd(f"t{i}", {"a": [1.0, 1.0]}), server_version=0)
    with pytest.raises(UpdateRejected):
        s.accept(upd("t9", {"a": [1.0, 1.0]}), server_version=0)
    room_while_open = s.dispatch_room(in_flight=1, concurrency=4)
    s.accept(upd("t3", {"a": [20.0, 20.0]}), server_version=0)
    merged = s.aggregate(params(), server_version=0)
    # Assert: no room while the round is open; the outlier bounded to energy 10;
    # FedAvg's sample-weighted mean (all n = 1) of what remains
    assert room_while_open == 0 and s.clipped == 1
    np.testing.assert_allclose(
        merged.params["a"], np.array([1.0, 2.0]) + (3 * 1.0 + np.sqrt(10.0)) / 4, rtol=1e-6
    )
    assert s.dispatch_room(in_flight=0, concurrency=4) == 4 and s.next_round_id() == 2


def test_norm_bounded_state_round_trips_and_is_checked() -> None:
    # Prepare
    s = NormBounded(FedBuff(shapes=SHAPES, buffer_size=3), tolerance=4.0, window=5)
    s.accept(upd("t1", {"a": [1.0, 1.0]}), server_version=0)
    s.accept(upd("t2", {"a": [9.0, 9.0]}), server_version=0)
    state = s.state_dict()
    # Execute
    restored = NormBounded(FedBuff(shapes=SHAPES, buffer_size=3), tolerance=4.0, window=5)
    restored.load_state_dict(state)
    for strategy in (s, restored):
        strategy.accept(upd("t3", {"a": [1.0, 1.0]}), server_version=0)
    # Assert
    np.testing.assert_array_equal(
        restored.aggregate(params(), server_version=0).params["a"],
        s.aggregate(params(), server_version=0).params["a"],
    )
    with pytest.raises(StateLoadError, match="configuration"):
        NormBounded(FedBuff(shapes=SHAPES, buffer_size=3), tolerance=5.0, window=5).load_state_dict(
            state
        )
    broken = copy.deepcopy(state)
    broken["payload"]["own"]["energies"] = [1.0, True]
    with pytest.raises(StateLoadError, match="energies"):
        restored.load_state_dict(broken)
    with pytest.raises(StateLoadError, match="strategy_wrapper"):
        restored.load_state_dict(FedBuff(shapes=SHAPES, buffer_size=3).state_dict())
    with pytest.raises(StateLoadError, match="norm_bounded"):
        restored.load_state_dict({**state, "payload": {**state["payload"], "wrapper": "other"}})
