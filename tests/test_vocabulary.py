"""One definition per shared name: the accountant enum, the device classes, the update energy."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fedward.vocabulary
from fedward.coordinator.strategies import ClientUpdate
from fedward.privacy import accounting
from fedward.protocol import messages
from fedward.simulation import profiles


def test_accountant_and_device_class_are_each_one_enum_with_the_wire_values() -> None:
    # Assert: the accounting, the wire contract and the simulator name the same classes
    assert accounting.Accountant is messages.Accountant is fedward.vocabulary.Accountant
    assert profiles.DeviceClass is messages.DeviceClass
    # the values are what version-1 devices and stored studies already carry
    assert [a.value for a in messages.Accountant] == ["rdp", "prv", "gdp"]
    assert [c.value for c in messages.DeviceClass] == ["wearable", "phone", "gateway"]


def test_the_wire_accountant_is_the_one_the_accounting_takes() -> None:
    # Prepare: a strict wire field read from JSON
    dp = messages.DpParams.model_validate_json(
        json.dumps(
            {
                "noise_multiplier": 1.0,
                "max_grad_norm": 1.0,
                "sample_rate": 0.5,
                "delta": 1e-5,
                "accountant": "prv",
            }
        )
    )
    step = accounting.MechanismStep(noise_multiplier=1.0, sample_rate=0.5, steps=3)
    # Execute: the wire member goes straight to the accounting, no conversion
    eps = accounting.epsilon_for([step], delta=dp.delta, accountant=dp.accountant)
    # Assert: and an accounting member is a valid strict wire value
    assert dp.accountant is accounting.Accountant.PRV and eps > 0
    gdp = messages.DpParams(**(dp.model_dump() | {"accountant": accounting.Accountant.GDP}))
    assert gdp.accountant is accounting.Accountant.GDP
    with pytest.raises(ValueError):
        messages.DpParams(**(dp.model_dump() | {"accountant": "rdp"}))  # strict: members only


def test_update_energy_is_the_mean_square_per_trained_coordinate() -> None:
    # Prepare: two tensors, three coordinates, squares 1 + 1 + 9
    tensors = {"a": np.array([1.0, -1.0], np.float32), "b": np.array([3.0], np.float32)}
    # Execute
    energy = messages.update_energy(tensors)
    # Assert: the sum of squares in float64 over the coordinate count, as before the rename
    assert energy == 11 / 3
    assert energy == float(sum(np.square(t, dtype=np.float64).sum() for t in tensors.values())) / 3
    assert messages.update_energy({}) == 0.0
    update = ClientUpdate(
        device_id="d", task_id="t", base_version=0, subset_id="s", delta=tensors, num_samples=1
    )
    assert update.energy() == energy  # a strategy's fallback is the same function
