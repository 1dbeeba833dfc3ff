"""Issue 14 item 5: a damped update must not move a tensor it alone trained at full size.

Each tensor is averaged over the updates that trained it. Under
``EnergyNormaliser.CONTRIBUTORS`` (the default) a damped update that is the only
one to train a tensor takes it whole, since its weight cancels; under
``UNDAMPED`` the sum is divided by the undamped weights, so the damping is an
absolute shrink there too; under ``HEAVIEST`` only where no undamped update
trained the tensor. A buffer with nothing damped merges bit for bit as before.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedward.coordinator.strategies import FTTE, ClientUpdate
from fedward.coordinator.strategies.base import weighted_mean
from fedward.coordinator.strategies.ftte import EnergyNormaliser

SHAPES = {"head": (4,), "deep": (4,)}


def update(task: str, delta: dict[str, float], *, device: str | None = None) -> ClientUpdate:
    return ClientUpdate(
        device_id=device or f"d-{task}",
        task_id=task,
        base_version=0,
        subset_id="s",
        delta={n: np.full(SHAPES[n], v, dtype=np.float32) for n, v in delta.items()},
        num_samples=1,
    )


def ftte(normaliser: EnergyNormaliser) -> FTTE:
    return FTTE(
        shapes=SHAPES,
        buffer_size=4,
        staleness_exponent=0.0,
        energy_window=0,
        energy_normaliser=normaliser,
    )


def merge(strategy: FTTE, buffer: list[ClientUpdate]) -> dict[str, np.ndarray]:
    params = {n: np.zeros(s, dtype=np.float32) for n, s in SHAPES.items()}
    for u in buffer:
        strategy.accept(u, server_version=0)
    return strategy.aggregate(params, server_version=0).params


def honest_buffer() -> list[ClientUpdate]:
    # three head-only updates and one that also trains the deep tensor, all of
    # ordinary energy: nothing is damped
    return [
        update("t1", {"head": 0.10}),
        update("t2", {"head": 0.12}),
        update("t3", {"head": 0.09}),
        update("t4", {"head": 0.11, "deep": 0.10}),
    ]


def poisoned_buffer() -> list[ClientUpdate]:
    # the only update that trains the deep tensor is divergent: energy far beyond the bound
    return [*honest_buffer()[:3], update("t4", {"head": 30.0, "deep": 30.0})]


@pytest.mark.parametrize("normaliser", [EnergyNormaliser.UNDAMPED, EnergyNormaliser.HEAVIEST])
def test_a_buffer_with_nothing_damped_merges_bit_for_bit_as_before(
    normaliser: EnergyNormaliser,
) -> None:
    # Prepare
    buffer = honest_buffer()

    # Execute
    before = merge(ftte(EnergyNormaliser.CONTRIBUTORS), buffer)
    after = merge(ftte(normaliser), buffer)

    # Assert
    for name in SHAPES:
        assert np.array_equal(before[name], after[name])


def test_a_damped_update_alone_on_a_tensor_is_shrunk_by_its_damping_under_undamped() -> None:
    # Prepare
    buffer = poisoned_buffer()
    strategy = ftte(EnergyNormaliser.UNDAMPED)
    g = strategy.weights(buffer, (0, 0, 0, 0))[3]  # damped weight (undamped weight is 1)

    # Execute
    contributors = merge(ftte(EnergyNormaliser.CONTRIBUTORS), buffer)
    undamped = merge(strategy, buffer)

    # Assert: the default takes the divergent deep delta whole; UNDAMPED takes g of it
    assert g < 0.01
    assert np.allclose(contributors["deep"], 30.0)
    assert np.allclose(undamped["deep"], 30.0 * g, rtol=1e-5)
    # the shared head is shrunk too: the damped mass now counts as "no change"
    assert float(undamped["head"][0]) < float(contributors["head"][0])


def test_heaviest_shrinks_only_the_tensor_that_no_undamped_update_trained() -> None:
    # Prepare
    buffer = poisoned_buffer()
    strategy = ftte(EnergyNormaliser.HEAVIEST)
    g = strategy.weights(buffer, (0, 0, 0, 0))[3]

    # Execute
    contributors = merge(ftte(EnergyNormaliser.CONTRIBUTORS), buffer)
    heaviest = merge(strategy, buffer)

    # Assert: the deep tensor as under UNDAMPED, the shared head exactly as before
    assert np.allclose(heaviest["deep"], 30.0 * g, rtol=1e-5)
    assert np.array_equal(heaviest["head"], contributors["head"])


def test_weighted_mean_refuses_a_normaliser_below_its_weight() -> None:
    # Prepare
    buffer = honest_buffer()[:2]

    # Execute / Assert
    with pytest.raises(ValueError, match="normaliser >= its weight"):
        weighted_mean(buffer, [1.0, 1.0], normalisers=[1.0, 0.5])
    with pytest.raises(ValueError, match="one normaliser and one floor"):
        weighted_mean(buffer, [1.0, 1.0], normalisers=[1.0])


def test_the_normaliser_survives_a_saved_state_and_only_a_non_default_is_in_the_config() -> None:
    # Prepare
    strategy = ftte(EnergyNormaliser.UNDAMPED)
    default = ftte(EnergyNormaliser.CONTRIBUTORS)

    # Execute
    restored = ftte(EnergyNormaliser.UNDAMPED)
    restored.load_state_dict(strategy.state_dict())

    # Assert
    assert strategy.config()["energy_normaliser"] == "undamped"
    assert "energy_normaliser" not in default.config()  # states saved before it still load
    with pytest.raises(Exception, match="config"):
        default.load_state_dict(strategy.state_dict())


# -- a toy nested federation: wearables train the head, one gateway per buffer also
# trains the deep tensor (as under ftte_nested, where only a few devices reach it)

NESTED_MERGES = 80


def nested_federate(strategy: FTTE, *, poison_every: int) -> dict[str, np.ndarray]:
    """Buffers of four: three head-only updates and one head+deep update. Every
    ``poison_every``-th gateway update is divergent (pulls both tensors to -50)."""
    rng = np.random.default_rng(11)
    params = {n: np.zeros(s, dtype=np.float32) for n, s in SHAPES.items()}
    for merge_no in range(NESTED_MERGES):
        for slot in range(4):
            names = ("head", "deep") if slot == 3 else ("head",)
            poison = slot == 3 and poison_every and merge_no % poison_every == 0
            goal = -50.0 if poison else 1.0
            delta = {
                n: (0.5 * (goal - params[n]) + rng.normal(0, 0.02, SHAPES[n])).astype(np.float32)
                for n in names
            }
            strategy.accept(
                ClientUpdate(
                    device_id=f"d{merge_no % 7}-{slot}",
                    task_id=f"t{merge_no}-{slot}",
                    base_version=merge_no,
                    subset_id="deep" if slot == 3 else "head",
                    delta=delta,
                    num_samples=1,
                ),
                server_version=merge_no,
            )
        params = strategy.aggregate(params, server_version=merge_no).params
    return params


def nested_ftte(normaliser: EnergyNormaliser) -> FTTE:
    return FTTE(shapes=SHAPES, buffer_size=4, staleness_exponent=0.0, energy_normaliser=normaliser)


@pytest.mark.parametrize("normaliser", [EnergyNormaliser.HEAVIEST, EnergyNormaliser.UNDAMPED])
def test_a_divergent_device_alone_on_the_deep_tensor_is_resisted(
    normaliser: EnergyNormaliser,
) -> None:
    # Execute: every fourth gateway update is divergent
    contributors = nested_federate(nested_ftte(EnergyNormaliser.CONTRIBUTORS), poison_every=4)
    robust = nested_federate(nested_ftte(normaliser), poison_every=4)

    # Assert: the default takes the divergent deep delta whole (its damping cancels);
    # the normaliser keeps the deep tensor near its target, and the head as well
    assert float(np.abs(contributors["deep"] - 1.0).max()) > 2.0
    assert float(np.abs(robust["deep"] - 1.0).max()) < 0.1
    assert float(np.abs(robust["head"] - 1.0).max()) < 0.1


def test_heaviest_is_the_default_on_an_honest_nested_fleet() -> None:
    # Execute
    contributors = nested_federate(nested_ftte(EnergyNormaliser.CONTRIBUTORS), poison_every=0)
    heaviest = nested_federate(nested_ftte(EnergyNormaliser.HEAVIEST), poison_every=0)

    # Assert: nothing divergent, so both learn both tensors, to the same values
    for name in SHAPES:
        assert float(np.abs(heaviest[name] - 1.0).max()) < 0.1
        assert np.allclose(heaviest[name], contributors[name], atol=1e-3)
