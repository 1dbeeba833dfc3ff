"""A secure-aggregation fill of an FTTE study steps with FTTE's server optimiser.

The optimiser needs only merged means, which is all a fill reveals: its moments
average fills' means, so Adam runs under secure aggregation without seeing one
update. Checked against a slow reference written out here, and across a save.
"""

from __future__ import annotations

import numpy as np

from fedward.coordinator.strategies import FTTE, FillAggregate, SecureAggregated
from fedward.coordinator.strategies.ftte import ServerOptimizer
from fedward.privacy.secagg import AggregateResult
from fedward.privacy.secagg.layout import VectorLayout

SHAPES = {"head.bias": (3,), "head.weight": (3, 2)}
LR, EPS, BETA1, BETA2 = 0.003, 1e-3, 0.9, 0.99


def _secure(optimizer: ServerOptimizer) -> SecureAggregated:
    inner = FTTE(
        shapes=SHAPES,
        buffer_size=2,
        server_optimizer=optimizer,
        server_adam_lr=LR,
        server_adam_eps=EPS,
        server_adam_beta2=BETA2,
        server_momentum=BETA1,
    )
    return SecureAggregated(inner)


def _fill(vector: np.ndarray, *, base: int, fill: str) -> FillAggregate:
    layout = VectorLayout.for_subset(SHAPES, SHAPES)
    result = AggregateResult(
        weighted_sum=vector * 2.0,  # two survivors of weight 1: the mean is `vector`
        weight_sum=2.0,
        count_sums=(),
        encoded_sum=np.zeros(1, np.uint32),
        survivors=("a", "b"),
        dropouts=(),
    )
    return FillAggregate(
        fill_id=fill,
        result=result,
        layout=layout,
        task_ids=("t1", "t2"),
        base_version=base,
        session_seed=b"\x00" * 32,
    )


def _params() -> dict[str, np.ndarray]:
    return {n: np.zeros(s, np.float32) for n, s in SHAPES.items()}


def test_two_fills_step_with_adam_as_a_slow_reference_says():
    # Prepare
    secure = _secure(ServerOptimizer.ADAM)
    means = [np.linspace(-1, 1, 9), np.linspace(2, -2, 9)]
    layout = VectorLayout.for_subset(SHAPES, SHAPES)
    # Execute: the second fill is one version stale
    params = _params()
    for version, mean in enumerate(means):
        params = secure.merge_fill(
            params, aggregate=_fill(mean, base=0, fill=f"f{version}"), server_version=version
        ).params
    # Assert: Adam (no bias correction, as FTTE's) on the staleness-scaled means
    m = np.zeros(9)
    v = np.zeros(9)
    w = np.zeros(9)
    for staleness, mean in enumerate(means):
        d = mean * (1.0 + staleness) ** -secure.staleness_exponent
        m = BETA1 * m + (1 - BETA1) * d
        v = BETA2 * v + (1 - BETA2) * d * d
        w = w + LR * m / (np.sqrt(v) + EPS)
    expected = layout.unflatten(w)
    for name in SHAPES:
        np.testing.assert_allclose(params[name], expected[name], rtol=1e-5, atol=1e-7)


def test_the_plain_step_is_unchanged_without_an_optimiser():
    secure = _secure(ServerOptimizer.SGD)
    mean = np.linspace(-1, 1, 9)
    out = secure.merge_fill(_params(), aggregate=_fill(mean, base=0, fill="f"), server_version=3)
    flat = VectorLayout.for_subset(SHAPES, SHAPES).unflatten(mean * 4.0**-0.5)
    for name in SHAPES:
        np.testing.assert_allclose(out.params[name], flat[name], rtol=1e-6)


def test_the_moments_survive_a_save_and_restore():
    # Prepare: one fill merged, state saved, a second fill on the original and a restored copy
    first, second = np.linspace(-1, 1, 9), np.linspace(0.5, -0.5, 9)
    secure = _secure(ServerOptimizer.ADAM)
    params = secure.merge_fill(
        _params(), aggregate=_fill(first, base=0, fill="f0"), server_version=0
    ).params
    restored = _secure(ServerOptimizer.ADAM)
    restored.load_state_dict(secure.state_dict())
    # Execute
    a = secure.merge_fill(params, aggregate=_fill(second, base=1, fill="f1"), server_version=1)
    b = restored.merge_fill(params, aggregate=_fill(second, base=1, fill="f1"), server_version=1)
    # Assert
    for name in SHAPES:
        np.testing.assert_array_equal(a.params[name], b.params[name])
