"""Issue 9 item 8: production DP noise comes from a CSPRNG, not torch's generator.

Opacus' ``secure_mode`` needs torchcsprng, which does not install here; the
equivalent (``fedward.privacy.noise``) is ChaCha20 keyed from ``os.urandom``.
These tests check it is what the device's DP-SGD actually uses, that its
values have the calibrated distribution, and that the coordinator's
client-level noise uses it too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.optimizers import DPOptimizer
from scipy import stats

from fedward.coordinator.study_spec import StudySpec, build_strategy
from fedward.edge.dp_training import DPTrainConfig, train_subset_dp, use_secure_noise
from fedward.privacy.central import urandom_normal
from fedward.privacy.noise import ChaChaNormal, secure_standard_normal
from fedward.tinytrain.models import ModelConfig, build_model, get_params

CONFIG = DPTrainConfig(
    noise_multiplier=1.5, max_grad_norm=1.0, sample_rate=0.25, steps=4, max_physical_batch_size=8
)


@pytest.fixture(scope="module")
def setup():
    config = ModelConfig(width=4, window=64)
    model = build_model(config, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, config.in_channels, config.window)).astype(np.float32)
    y = rng.integers(0, config.num_classes, 32)
    return model, get_params(model), x, y


def test_production_dp_sgd_never_draws_noise_from_torch(setup, monkeypatch):
    # Prepare: torch's normal sampler (what Opacus uses without secure mode) is forbidden
    model, base, x, y = setup
    names = tuple(base)[-2:]

    def forbidden(*args, **kwargs):
        raise AssertionError("DP noise drawn from torch's (non-cryptographic) generator")

    monkeypatch.setattr(torch, "normal", forbidden)

    # Execute: a production task (seed=None)
    result = train_subset_dp(
        model, base, names, x, y, config=CONFIG, accountant_state=None, seed=None
    )

    # Assert: it trained, with noise (the deltas are not those of a noiseless step)
    assert all(np.all(np.isfinite(v)) and np.any(v != 0) for v in result.delta.values())


def test_a_seeded_run_keeps_torch_noise_for_reproducible_simulations(setup):
    # Prepare
    model, base, x, y = setup
    names = tuple(base)[-2:]

    # Execute
    first = train_subset_dp(model, base, names, x, y, config=CONFIG, accountant_state=None, seed=3)
    again = train_subset_dp(model, base, names, x, y, config=CONFIG, accountant_state=None, seed=3)

    # Assert
    for name in names:
        np.testing.assert_array_equal(first.delta[name], again.delta[name])


def test_the_secure_optimizer_adds_exactly_the_csprng_noise():
    # Prepare: one parameter with a zero clipped gradient; a keyed (reproducible) source
    param = torch.nn.Parameter(torch.zeros(50_000))
    optimizer = DPOptimizer(
        torch.optim.SGD([param], lr=1.0),
        noise_multiplier=1.5,
        max_grad_norm=2.0,
        expected_batch_size=1,
        loss_reduction="sum",
    )
    use_secure_noise(optimizer, ChaChaNormal(key=bytes(range(32))))
    param.summed_grad = torch.zeros(50_000)

    # Execute
    optimizer.add_noise()

    # Assert: the same values the keyed stream gives, with std sigma * C
    expected = 3.0 * secure_standard_normal(ChaChaNormal(key=bytes(range(32))), (50_000,))
    np.testing.assert_allclose(param.grad.numpy(), expected.astype(np.float32), rtol=1e-6)
    assert stats.kstest(param.grad.numpy() / 3.0, "norm").pvalue > 1e-3


def test_keystream_normals_are_standard_and_never_repeat():
    # Prepare
    source = ChaChaNormal()

    # Execute
    first, second = source((100_000,)), source((100_000,))

    # Assert
    assert stats.kstest(first, "norm").pvalue > 1e-3
    assert abs(first.mean()) < 0.02 and first.std() == pytest.approx(1.0, abs=0.02)
    assert not np.array_equal(first, second)
    assert not np.array_equal(ChaChaNormal()((8,)), ChaChaNormal()((8,)))  # fresh keys


def test_the_coordinators_client_level_noise_is_the_csprng():
    # Prepare / Execute
    source = urandom_normal()
    spec = StudySpec(
        strategy="client_dp",
        client_dp={"clip_norm": 1.0, "noise_multiplier": 1.1},
        width=4,
        window=64,
    )
    strategy = build_strategy(spec, {"a": (2,)})

    # Assert
    assert isinstance(source, ChaChaNormal)
    assert isinstance(strategy._random_normal, ChaChaNormal)
