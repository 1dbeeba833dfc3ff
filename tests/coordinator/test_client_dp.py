"""Client-level DP merge: clipping, uniform mean, calibrated noise (Prepare / Execute / Assert)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from fedward.coordinator.errors import StrategyConfigError
from fedward.coordinator.strategies import ClientLevelDP, ClientUpdate
from fedward.coordinator.study_spec import StudySpec, build_strategy
from fedward.privacy.central import seeded_normal

SHAPES = {"a": (2,), "b": (1,)}


def zeros() -> dict[str, np.ndarray]:
    return {"a": np.zeros(2, dtype=np.float32), "b": np.zeros(1, dtype=np.float32)}


def upd(task: str, delta: dict[str, list[float] | np.ndarray], *, n: int = 1) -> ClientUpdate:
    return ClientUpdate(
        device_id=f"dev-{task}",
        task_id=task,
        base_version=0,
        subset_id="s",
        delta={k: np.asarray(v, dtype=np.float32) for k, v in delta.items()},
        num_samples=n,
    )


def test_without_noise_the_merge_is_the_uniform_mean_of_clipped_updates() -> None:
    # Prepare: one update far above the clip bound, one below; sample counts differ
    s = ClientLevelDP(
        shapes=SHAPES,
        buffer_size=2,
        clip_norm=1.0,
        noise_multiplier=1.0,
        random_normal=seeded_normal(0),
    )
    s.accept(
        upd("t1", {"a": [3.0, 4.0], "b": [0.0]}, n=100), server_version=0
    )  # norm 5 -> scaled by 1/5
    s.accept(upd("t2", {"a": [0.2, 0.0], "b": [0.4]}, n=1), server_version=0)
    # Execute: the noiseless part of the merge (z must be > 0, so the merge itself is noisy)
    mean, _ = s.clipped_mean(list(s._buffer))
    # Assert: sample counts are ignored (uniform weights), the big update counts as norm 1
    np.testing.assert_allclose(mean["a"], [(0.6 + 0.2) / 2, (0.8 + 0.0) / 2], rtol=1e-6)
    np.testing.assert_allclose(mean["b"], [0.2], rtol=1e-6)


def test_noise_has_the_calibrated_standard_deviation() -> None:
    # Prepare: zero updates so the merged step is pure noise; many coordinates
    shapes = {"w": (20_000,)}
    s = ClientLevelDP(
        shapes=shapes,
        buffer_size=4,
        clip_norm=2.0,
        noise_multiplier=1.5,
        random_normal=seeded_normal(1),
    )
    for i in range(4):
        s.accept(upd(f"t{i}", {"w": np.zeros(20_000)}), server_version=0)
    # Execute
    merged = s.aggregate({"w": np.zeros(20_000, dtype=np.float32)}, server_version=0)
    # Assert: std = z * 2C / K = 1.5 * 2 * 2 / 4 (a refilled buffer's sensitivity is 2C/K)
    assert np.std(merged.params["w"]) == pytest.approx(1.5, rel=0.03)
    assert abs(float(np.mean(merged.params["w"]))) < 0.03


def test_noise_is_calibrated_to_the_public_number_of_merged_updates() -> None:
    s = ClientLevelDP(
        shapes=SHAPES,
        buffer_size=2,
        clip_norm=1.0,
        noise_multiplier=1.0,
        random_normal=seeded_normal(0),
    )
    assert s.noise_std(2) == pytest.approx(1.0)
    assert s.noise_std(4) == pytest.approx(0.5)


def test_non_finite_updates_are_rejected_before_clipping() -> None:
    from fedward.coordinator.errors import RejectReason, UpdateRejected

    s = ClientLevelDP(
        shapes=SHAPES,
        buffer_size=2,
        clip_norm=1.0,
        noise_multiplier=1.0,
        random_normal=seeded_normal(0),
    )
    with pytest.raises(UpdateRejected) as err:
        s.accept(upd("t1", {"a": [np.inf, 0.0]}), server_version=0)
    assert err.value.reason is RejectReason.NON_FINITE


def test_bad_settings_are_refused() -> None:
    with pytest.raises(StrategyConfigError):
        ClientLevelDP(
            shapes=SHAPES,
            buffer_size=2,
            clip_norm=0.0,
            noise_multiplier=1.0,
            random_normal=seeded_normal(0),
        )
    with pytest.raises(StrategyConfigError):
        ClientLevelDP(
            shapes=SHAPES,
            buffer_size=2,
            clip_norm=1.0,
            noise_multiplier=-1.0,
            random_normal=seeded_normal(0),
        )
    with pytest.raises(StrategyConfigError, match="> 0"):  # z = 0 is not DP (issue 9)
        ClientLevelDP(
            shapes=SHAPES,
            buffer_size=2,
            clip_norm=1.0,
            noise_multiplier=0.0,
            random_normal=seeded_normal(0),
        )
    with pytest.raises(ValidationError):
        StudySpec(
            strategy="client_dp",
            client_dp={"clip_norm": 1.0, "noise_multiplier": 0.0},
            width=4,
            window=64,
        )


def test_a_study_chooses_client_dp_with_its_settings_only() -> None:
    spec = StudySpec(
        strategy="client_dp",
        client_dp={"clip_norm": 1.0, "noise_multiplier": 1.1},
        width=4,
        window=64,
    )
    strategy = build_strategy(spec, {"a": (2,)}, random_normal=seeded_normal(0))
    assert isinstance(strategy, ClientLevelDP) and strategy.noise_multiplier == 1.1
    with pytest.raises(ValidationError):
        StudySpec(strategy="client_dp", width=4, window=64)
    with pytest.raises(ValidationError):
        StudySpec(
            strategy="ftte",
            client_dp={"clip_norm": 1.0, "noise_multiplier": 1.0},
            width=4,
            window=64,
        )
