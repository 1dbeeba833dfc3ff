"""Issue 14 item 6: FTTE's server optimiser on the merged delta (SGD, momentum, Adam).

A toy federation on the real strategy: one tensor, each buffer's updates pull
it towards a target but with a large shared noise per buffer (non-IID devices
whose buffer happens to be skewed), so a plain server step follows the noise.
Adam (FedAdam) averages the merged deltas over merges and bounds each
coordinate's step. Its moments are saved state: a study stopped and restored
mid-run continues bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedward.coordinator.errors import StateLoadError
from fedward.coordinator.strategies import FTTE, ClientUpdate
from fedward.coordinator.strategies.ftte import ServerOptimizer
from tests.coordinator import test_ftte_energy_clip as energy_toy

SHAPES = {"w": (16,)}
TARGET = 2.0


def adam_ftte() -> FTTE:
    return FTTE(
        shapes=SHAPES,
        buffer_size=4,
        server_optimizer=ServerOptimizer.ADAM,
        server_adam_lr=0.05,
    )


def run(strategy: FTTE, merges: range, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Buffers of four updates: half the gap to the target plus the buffer's shared skew."""
    for merge in merges:
        rng = np.random.default_rng(merge)  # per merge, so a resumed run sees the same data
        skew = rng.normal(0, 1.5, size=16)
        for slot in range(4):
            step = 0.5 * (TARGET - params["w"]) + skew + rng.normal(0, 0.1, size=16)
            strategy.accept(
                ClientUpdate(
                    device_id=f"d{slot}",
                    task_id=f"t{merge}-{slot}",
                    base_version=merge,
                    subset_id="s",
                    delta={"w": step.astype(np.float32)},
                    num_samples=1,
                ),
                server_version=merge,
            )
        params = strategy.aggregate(params, server_version=merge).params
    return params


def start() -> dict[str, np.ndarray]:
    return {"w": np.zeros(16, dtype=np.float32)}


def test_adam_follows_the_target_where_a_plain_step_follows_each_buffers_skew() -> None:
    # Prepare
    sgd = FTTE(shapes=SHAPES, buffer_size=4)
    adam = adam_ftte()

    # Execute
    sgd_error = np.abs(run(sgd, range(200), start())["w"] - TARGET).mean()
    adam_error = np.abs(run(adam, range(200), start())["w"] - TARGET).mean()

    # Assert
    assert sgd_error > 0.5  # the plain step lands wherever the last skew pushed it
    assert adam_error < 0.25


def test_adam_moments_are_saved_state_and_a_restored_run_continues_exactly() -> None:
    # Prepare
    uninterrupted = run(adam_ftte(), range(60), start())
    first = adam_ftte()
    midway = run(first, range(30), start())
    saved = first.state_dict()

    # Execute
    restored = adam_ftte()
    restored.load_state_dict(saved)
    resumed = run(restored, range(30, 60), midway)

    # Assert
    np.testing.assert_array_equal(resumed["w"], uninterrupted["w"])


def test_a_state_without_moments_or_with_a_wrong_shape_is_refused() -> None:
    # Prepare
    strategy = adam_ftte()
    run(strategy, range(3), start())
    saved = strategy.state_dict()
    payload = dict(saved["payload"])
    broken = {
        **saved,
        "payload": {**payload, "server_moments": {"first": {}, "second": {"w": -np.ones(16)}}},
    }
    wrong_shape = {
        **saved,
        "payload": {**payload, "server_moments": {"first": {"w": np.zeros(3)}, "second": {}}},
    }

    # Execute / Assert
    for state in (broken, wrong_shape):
        with pytest.raises(StateLoadError):
            adam_ftte().load_state_dict(state)


def test_sgd_state_does_not_load_into_an_adam_strategy() -> None:
    # Prepare
    sgd = FTTE(shapes=SHAPES, buffer_size=4)
    run(sgd, range(2), start())

    # Execute / Assert
    with pytest.raises(StateLoadError):
        adam_ftte().load_state_dict(sgd.state_dict())


def toy_adam() -> FTTE:
    """Adam on the energy term's toy federation (one tensor, buffers of four).

    Adam moves a coordinate by about its learning rate per merge at most, and
    half b must travel 10 units in 60 merges: 0.2 (at 0.05 it gets 4.4 of the
    way; at 0.5 it overshoots on the honest run)."""
    return FTTE(
        shapes=energy_toy.SHAPES,
        buffer_size=4,
        staleness_exponent=0.0,
        server_optimizer=ServerOptimizer.ADAM,
        server_adam_lr=0.2,
    )


def test_adam_keeps_the_energy_terms_two_properties_on_its_toy_federation() -> None:
    # Execute: the honest energetic group (a quarter of each buffer), then every tenth
    # update pulling half a to -50 (a divergent device)
    honest = energy_toy.federate(toy_adam())
    poisoned = energy_toy.federate(toy_adam(), poison_every=10)

    fedbuff = energy_toy.federate(
        energy_toy.FedBuff(shapes=energy_toy.SHAPES, buffer_size=4), poison_every=10
    )

    # Assert: the group's half is learned; the poisoned half stays near its target
    # where FedBuff is dragged off
    assert energy_toy.error(honest, "b") < 0.5 and energy_toy.error(honest, "a") < 0.5
    assert energy_toy.error(poisoned, "a") < 0.5
    assert energy_toy.error(fedbuff, "a") > 2.0
