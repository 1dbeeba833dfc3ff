"""Client-level DP (DP-FedAvg, McMahan et al. 2018): clip updates, noise the aggregate.

Sample-level DP-SGD on a device protects one window of sensor data; client-level
DP protects a device's whole contribution. Each update ``Delta_i`` (a dict of
tensors, possibly only the device's trained subset) is clipped to L2 norm ``C``
over all its tensors together; the aggregate then gets Gaussian noise scaled to
``C``. Two places can add that noise:

- *central*: the server adds it after aggregating (``add_central_noise``). The
  server sees clipped individual updates: DP holds against everyone downstream
  of the server (released models), not against the server itself.
- *distributed*: with secure aggregation the server only sees the sum, so each
  device adds a share of the noise before masking
  (``distributed_noise_share``, the ``DistributedNoiseHook`` contract).

The accounting is the same Poisson-subsampled Gaussian mechanism as DP-SGD, one
"step" per merge, sample rate = cohort / population (``client_level_step``).

Randomness is injected as a ``RandomNormal`` callable. The default
(``urandom_normal``) is :class:`fedward.privacy.noise.ChaChaNormal`: a ChaCha20
keystream keyed from ``os.urandom``, each value the halved sum of four normals
against the floating-point attacks on Gaussian sampling (Mironov 2012; Jin et
al. 2022). ``seeded_normal`` (numpy PCG64, not a CSPRNG) is for tests and
simulations only. A discrete Gaussian over the integers is the further step a
fully hardened deployment would take.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np

from .accounting import MechanismStep
from .noise import csprng_normal

RandomNormal = Callable[[tuple[int, ...]], np.ndarray]
"""Returns an array of i.i.d. standard normals of the given shape."""

Delta = Mapping[str, np.ndarray]
"""``Delta_i`` above: tensors by name (not the wire ``fedward.protocol.messages.Update``)."""


def urandom_normal() -> RandomNormal:
    """The production standard-normal source: ChaCha20 keyed from the OS entropy pool."""
    return csprng_normal()


def seeded_normal(seed: int) -> RandomNormal:
    """A reproducible source for tests and simulations. Never for real noise."""
    generator = np.random.default_rng(seed)

    def draw(shape: tuple[int, ...]) -> np.ndarray:
        return generator.standard_normal(shape)

    return draw


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return float(value)


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def update_norm(update: Delta) -> float:
    """Global L2 norm over all tensors of an update (float64 accumulation)."""
    total = 0.0
    for name, value in update.items():
        arr = np.asarray(value)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"update tensor {name!r} has non-finite values")
        total += float(np.sum(np.square(arr, dtype=np.float64)))
    return math.sqrt(total)


def clip_update(delta: Delta, *, max_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """Scale ``delta`` so its global L2 norm is at most ``max_norm``.

    Returns the clipped copy (dtypes kept) and the original norm. The original
    norm is a per-device statistic: do not send it to the server unless the
    study documents that the server learns it.
    """
    clip = _positive("max_norm", max_norm)
    norm = update_norm(delta)
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    clipped = {
        name: (np.asarray(value) * scale).astype(np.asarray(value).dtype, copy=False)
        for name, value in delta.items()
    }
    return clipped, norm


def add_central_noise(
    aggregate: Delta,
    *,
    noise_multiplier: float,
    max_norm: float,
    num_clients: int,
    random_normal: RandomNormal | None = None,
) -> dict[str, np.ndarray]:
    """Noise the *mean* of ``num_clients`` clipped updates (central DP-FedAvg).

    Adds N(0, (noise_multiplier * max_norm / num_clients)^2) to every
    coordinate, i.e. N(0, (sigma C)^2) on the sum. ``num_clients`` must be the
    public denominator the mean was divided by (fixed before seeing who
    answered), not a data-dependent count. For a weighted mean
    ``sum_i a_i Delta_i`` with ``sum_i a_i = 1``, pass
    ``num_clients = floor(1 / max_i a_i)``: the sensitivity is ``max_i a_i * C``.
    """
    sigma = _positive("noise_multiplier", noise_multiplier)
    clip = _positive("max_norm", max_norm)
    n = _count("num_clients", num_clients)
    draw = random_normal if random_normal is not None else urandom_normal()
    std = sigma * clip / n
    return _add_noise(aggregate, std, draw)


class DistributedNoiseHook(Protocol):
    """How a device adds its share of client-level noise under secure aggregation.

    Called by the device after clipping its update and before masking it. Each
    of ``cohort_size`` devices adds N(0, (sigma C)^2 / cohort_size), so the
    unmasked *sum* carries N(0, (sigma C)^2): the same guarantee as central
    noise, without trusting the server with individual updates.

    ``cohort_size`` must be the number of shares that will surely be summed:
    the secure-aggregation threshold ``t``, not the dispatched cohort; if fewer
    devices survive, the sum has less noise than promised and the round must be
    abandoned. Colluding devices know their own shares: with ``c`` colluders
    the effective noise is ``sigma * sqrt((t - c) / t)``; size sigma for it.
    Secure aggregation works in a finite group, so real deployments quantise the
    share (discrete Gaussian or Skellam, Kairouz et al. 2021; Agarwal et al.
    2021); this continuous version is the reference the quantised one is
    tested against.
    """

    def __call__(
        self,
        shape: tuple[int, ...],
        *,
        noise_multiplier: float,
        max_norm: float,
        cohort_size: int,
        random_normal: RandomNormal,
    ) -> np.ndarray: ...


def distributed_noise_share(
    shape: tuple[int, ...],
    *,
    noise_multiplier: float,
    max_norm: float,
    cohort_size: int,
    random_normal: RandomNormal,
) -> np.ndarray:
    """One device's noise share: std ``noise_multiplier * max_norm / sqrt(cohort_size)``.

    Conforms to ``DistributedNoiseHook``. The share is added to the clipped
    update *sum* contribution (before any division by the cohort size).
    """
    sigma = _positive("noise_multiplier", noise_multiplier)
    clip = _positive("max_norm", max_norm)
    n = _count("cohort_size", cohort_size)
    noise = np.asarray(random_normal(tuple(shape)), dtype=np.float64)
    if noise.shape != tuple(shape):
        raise ValueError(f"random_normal returned shape {noise.shape}, wanted {tuple(shape)}")
    return noise * (sigma * clip / math.sqrt(n))


def client_level_step(
    *, noise_multiplier: float, cohort_size: int, population: int, merges: int
) -> MechanismStep:
    """The accountant entry of client-level DP: ``merges`` noisy aggregations.

    Sample rate = cohort / population assumes each device joins a merge
    independently with that probability (Poisson sampling). Asynchronous
    buffers (FedBuff) pick whoever answers first, which is not Poisson: the
    amplification is then optimistic, and the conservative choice is
    ``cohort_size == population`` (sample rate 1).
    """
    n = _count("cohort_size", cohort_size)
    pop = _count("population", population)
    if n > pop:
        raise ValueError("cohort_size cannot exceed population")
    return MechanismStep(
        noise_multiplier=_positive("noise_multiplier", noise_multiplier),
        sample_rate=n / pop,
        steps=_count("merges", merges),
    )


def patient_level_step(*, noise_multiplier: float, participations: int) -> MechanismStep:
    """The accountant entry of one device's merges under client-level DP, per patient.

    A device holds one patient, so client-level DP protects the patient. Each
    merge holding the device's (clipped) update is a Gaussian mechanism with
    noise multiplier ``z`` relative to the merge's sensitivity ``2C / K``
    (``fedward.coordinator.strategies.client_dp``); merges without its update
    do not read its data. No sampling amplification is claimed (sample rate 1):
    who fills an asynchronous buffer is not a Poisson sample, so
    ``client_level_step``'s cohort/population rate would be optimistic.
    """
    return MechanismStep(
        noise_multiplier=_positive("noise_multiplier", noise_multiplier),
        sample_rate=1.0,
        steps=_count("participations", participations),
    )


def _add_noise(aggregate: Delta, std: float, draw: RandomNormal) -> dict[str, np.ndarray]:
    noisy: dict[str, np.ndarray] = {}
    for name, value in aggregate.items():
        arr = np.asarray(value)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"aggregate tensor {name!r} has non-finite values")
        noise = np.asarray(draw(arr.shape), dtype=np.float64)
        if noise.shape != arr.shape:
            raise ValueError(f"random_normal returned shape {noise.shape}, wanted {arr.shape}")
        noisy[name] = (arr.astype(np.float64) + std * noise).astype(arr.dtype, copy=False)
    return noisy
