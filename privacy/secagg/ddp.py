"""Distributed differential privacy inside secure aggregation: every device adds its noise share.

No trusted server noise anywhere: each device runs :func:`prepare` on its own
update before :meth:`~fedward.privacy.secagg.SecAggClient.mask_input`, and the
coordinator only ever sees the masked sum, which already carries the noise.
The pipeline (Kairouz, Liu, Steinke, ICML 2021 "The distributed discrete
Gaussian mechanism"; Agarwal, Kairouz, Liu, NeurIPS 2021 "The Skellam mechanism"):

1. **L2 clip** to ``l2_clip`` (client-level: the device's whole update is the unit).
2. **Randomized Hadamard rotation**: zero-pad to :func:`padded_length` (a power
   of two), flip signs with a keystream keyed by the *public* per-session seed
   (every cohort member uses the same rotation, so the sum of rotated vectors is
   the rotation of the sum), then the orthonormal fast Walsh-Hadamard transform,
   O(d log d) in numpy. It spreads a spiky update over all coordinates, so each
   coordinate stays small and few bits suffice.
3. **Scale** by ``scale`` (a power of two) and **conditional stochastic
   rounding**: round each coordinate up with probability its fractional part,
   again (fresh uniforms) while the rounded vector's L2 norm exceeds
   :meth:`DistributedDp.rounded_l2_bound`; that bound is the sensitivity the
   accountant uses, so rounding can never raise it.
4. **Skellam share**: add ``Poisson(mu/2) - Poisson(mu/2)`` independently per
   coordinate, ``mu = (noise_multiplier * l2_clip * scale)^2 / min_survivors``,
   drawn from a ChaCha20 keystream keyed by 32 fresh bytes of ``random_bytes``
   (never numpy's generator). Skellam is closed under summation, so the sum over
   any k >= ``min_survivors`` devices carries exactly Skellam(k * mu) noise,
   at least the target central variance (noise_multiplier * l2_clip)^2 in
   model units. Colluding devices know their own shares, so ``min_survivors``
   must count *honest* survivors: at most ``threshold - max_colluders``.

The returned values are integers divided by a power-of-two scale, so they are
exact in float64 and SecAgg's fixed-point encoding (same scale, weight 1,
per-coordinate clip :attr:`DistributedDp.coordinate_bound`) reproduces them
exactly. :func:`recover` undoes the scale and the rotation on the unmasked sum.

Bits and overflow: every coordinate of the summed integer vector must lie in
[-(2^(bits-1) - 1), 2^(bits-1) - 1]. :meth:`DistributedDp.check_cohort` bounds
the probability that it does not, for a cohort of n, by a union bound over the
coordinates of three parts: the rotated signal (Hoeffding over the random
signs: P(|y_i| >= a) <= 2 exp(-a^2 D / (2 (n l2_clip scale)^2))), the
rounding (at most 1 per device, so n), and the noise (Chernoff bound on
Skellam(n mu): P(|X| >= m) <= 2 exp(-(m asinh(m/mu) - sqrt(mu^2 + m^2) + mu))),
and refuses (OverflowRisk) a configuration whose bound exceeds
:data:`MAX_OVERFLOW_PROBABILITY`. ``bits`` is the width the summed words are
guaranteed to fit, so SecAgg runs a DDP fill in Z_{2^bits} (``modulus_bits =
bits``, ``sum_bound = value_bound``: :meth:`DistributedDp.secagg_config_fields`)
and each masked word travels as ``bits`` bits. A sum that leaves the range then
wraps modulo 2^bits (probability <= 2^-30 per fill, the event the bound
covers): it is a wrong sum, never a disclosure, since the masks are unaffected.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from ..skellam import SkellamStep
from ..skellam import epsilon as skellam_epsilon
from .config import SecAggConfig, SecAggSession
from .errors import ConfigError, OverflowRisk, ProtocolViolation

__all__ = [
    "MAX_OVERFLOW_PROBABILITY",
    "DistributedDp",
    "padded_length",
    "poisson",
    "prepare",
    "recover",
    "rotate",
    "skellam",
    "unrotate",
]

RandomBytes = Callable[[int], bytes]

#: A configuration is refused when the probability that some coordinate of the
#: summed vector leaves the ``bits`` range in one fill may exceed this (2^-30).
MAX_OVERFLOW_PROBABILITY = 2.0**-30
MIN_BITS = 8
MAX_BITS = 30
#: Conditional rounding re-draws while the norm exceeds the bound; each draw
#: exceeds it with probability <= rounding_beta, so 1000 draws never all fail.
MAX_ROUNDING_ATTEMPTS = 1000
#: Above this mean the Poisson sampler uses Hormann's PTRS, below it inversion.
PTRS_THRESHOLD = 10.0
_ROTATION_LABEL = b"fedward.privacy.secagg.ddp.rotation.v1"
_NOISE_NONCE = b"fedward-ddp\x00"
_KEY_BYTES = 32


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    return float(value)


def padded_length(d: int) -> int:
    """The Hadamard length for a vector of ``d`` coordinates: the next power of two >= d."""
    if not _is_int(d) or d < 1:
        raise ConfigError(f"vector length must be an int >= 1, got {d!r}")
    return 1 << (d - 1).bit_length()


@dataclass(frozen=True, kw_only=True)
class DistributedDp:
    """Parameters of distributed DP for one fill; the same on every device and the server.

    l2_clip: each device's update is clipped to this L2 norm (model units).
    noise_multiplier: z; the summed noise has stddev at least z * l2_clip per
        coordinate (model units) whenever >= min_survivors honest devices are in it.
    bits: width of one summed coordinate (16-20 typical), including the sign.
    scale: the fixed-point scale gamma: values are integers / scale; a power of
        two (so they are exact in float64 and in SecAgg's encoding).
    min_survivors: the fewest honest devices whose shares are in a released sum
        (the coordinator sets threshold - max_colluders, or less).
    rounding_beta: the conditional-rounding parameter beta in (0, 1): the norm
        bound after rounding is chosen so one rounding exceeds it with
        probability <= beta (Kairouz et al. 2021 use exp(-0.5)).
    """

    l2_clip: float
    noise_multiplier: float
    bits: int
    scale: float
    min_survivors: int
    rounding_beta: float = math.exp(-0.5)

    def __post_init__(self) -> None:
        object.__setattr__(self, "l2_clip", _positive("l2_clip", self.l2_clip))
        object.__setattr__(
            self, "noise_multiplier", _positive("noise_multiplier", self.noise_multiplier)
        )
        if not _is_int(self.bits) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise ConfigError(f"bits must be an int in [{MIN_BITS}, {MAX_BITS}], got {self.bits!r}")
        scale = _positive("scale", self.scale)
        mantissa, _ = math.frexp(scale)
        if mantissa != 0.5:
            raise ConfigError(
                f"scale must be a power of two (values are integers / scale, exact in float64), "
                f"got {self.scale!r}"
            )
        object.__setattr__(self, "scale", scale)
        if not _is_int(self.min_survivors) or self.min_survivors < 1:
            raise ConfigError(f"min_survivors must be an int >= 1, got {self.min_survivors!r}")
        beta = _positive("rounding_beta", self.rounding_beta)
        if beta >= 1:
            raise ConfigError(f"rounding_beta must be in (0, 1), got {self.rounding_beta!r}")
        object.__setattr__(self, "rounding_beta", beta)
        if self.local_variance <= 0 or not math.isfinite(self.local_variance):
            raise ConfigError("noise_multiplier * l2_clip * scale gives no usable noise")

    # -- derived figures (integer units: model units times scale) -----------------

    @property
    def value_bound(self) -> int:
        """Largest magnitude of one summed coordinate in integer units: 2^(bits-1) - 1."""
        return (1 << (self.bits - 1)) - 1

    @property
    def coordinate_bound(self) -> float:
        """``value_bound / scale``: the per-coordinate clip SecAgg must use with this scale.

        :func:`prepare` never returns a larger magnitude (it raises instead), so
        SecAgg's clip never alters a prepared value.
        """
        return self.value_bound / self.scale

    @property
    def central_variance(self) -> float:
        """The Skellam variance mu (integer units) of the noise in a sum of min_survivors."""
        return (self.noise_multiplier * self.l2_clip * self.scale) ** 2

    @property
    def local_variance(self) -> float:
        """Each device's Skellam share variance: central_variance / min_survivors."""
        return self.central_variance / self.min_survivors

    def rounded_l2_bound(self, d: int) -> float:
        """L2 bound (integer units) of a device's rounded vector: the accountant's Delta_2.

        min(c + sqrt(D), sqrt(c^2 + D/4 + sqrt(2 ln(1/beta)) (c + sqrt(D)/2))) with
        c = l2_clip * scale and D = padded_length(d) (Kairouz et al. 2021): the
        first term holds always (each coordinate moves by < 1), the second with
        probability >= 1 - beta per rounding, enforced by re-rounding.
        """
        big_d = padded_length(d)
        c = self.l2_clip * self.scale
        always = c + math.sqrt(big_d)
        likely = math.sqrt(
            c * c
            + big_d / 4.0
            + math.sqrt(2.0 * math.log(1.0 / self.rounding_beta)) * (c + math.sqrt(big_d) / 2.0)
        )
        return min(always, likely)

    def sensitivities(self, d: int) -> tuple[float, float]:
        """(Delta_1, Delta_2) of one device's integer vector (add/remove one device).

        Delta_2 is :meth:`rounded_l2_bound`; an integer vector has
        |x|_1 <= sqrt(D) |x|_2 and |x|_1 <= |x|_2^2, so Delta_1 = Delta_2 * min(sqrt(D), Delta_2).
        """
        delta_2 = self.rounded_l2_bound(d)
        return delta_2 * min(math.sqrt(padded_length(d)), delta_2), delta_2

    def release_step(self, d: int, *, fills: int = 1) -> SkellamStep:
        """The ledger entry of ``fills`` releases of one device's update of length ``d``.

        Sensitivities from :meth:`sensitivities`, variance the guaranteed
        :attr:`central_variance` (the noise of min_survivors honest devices).
        """
        delta_1, delta_2 = self.sensitivities(d)
        return SkellamStep(
            l1_sensitivity=delta_1,
            l2_sensitivity=delta_2,
            variance=self.central_variance,
            steps=fills,
        )

    def epsilon(self, d: int, *, fills: int, delta: float) -> float:
        """A device's epsilon at ``delta`` after ``fills`` fills of this configuration."""
        return skellam_epsilon([self.release_step(d, fills=fills)], delta=delta)

    def overflow_probability(self, *, cohort_size: int, d: int) -> float:
        """Upper bound on P(some summed coordinate leaves [-value_bound, value_bound]).

        For a sum of up to ``cohort_size`` devices (all of them surviving is the
        worst case: most signal, most noise); see the module docstring.
        """
        n = _cohort(cohort_size)
        big_d = padded_length(d)
        room = self.value_bound - n  # rounding moves each device's coordinate by < 1
        if room <= 0:
            return 1.0
        signal_norm = n * self.l2_clip * self.scale
        noise_var = n * self.local_variance
        best = 1.0
        steps = 512
        for i in range(1, steps):
            a = room * i / steps
            p_signal = 2.0 * math.exp(-(a * a) * big_d / (2.0 * signal_norm * signal_norm))
            p_noise = _skellam_tail(room - a, noise_var)
            best = min(best, p_signal + p_noise)
        return min(1.0, big_d * best)

    def check_cohort(self, *, cohort_size: int, d: int) -> None:
        """Refuse (OverflowRisk) a cohort/length this configuration cannot hold; ConfigError
        if the cohort is smaller than min_survivors (the target noise could not be reached)."""
        n = _cohort(cohort_size)
        if n < self.min_survivors:
            raise ConfigError(
                f"cohort of {n} < min_survivors {self.min_survivors}: the sum could never carry "
                "the target noise"
            )
        p = self.overflow_probability(cohort_size=n, d=d)
        if p > MAX_OVERFLOW_PROBABILITY:
            raise OverflowRisk(
                f"distributed DP with bits={self.bits}, scale={self.scale!r}: a sum of {n} "
                f"devices over {padded_length(d)} coordinates may leave the {self.bits}-bit range "
                f"(overflow probability bound {p:.3g} > {MAX_OVERFLOW_PROBABILITY:.3g}); lower "
                "scale, or raise bits (see DistributedDp.largest_scale)"
            )

    def check_secagg(self, config: SecAggConfig, *, session: SecAggSession, d: int) -> None:
        """Refuse a fill whose SecAgg parameters would break this DDP (both sides call it).

        ConfigError unless: the session masks padded_length(d) words; SecAgg
        uses this scale and a clip that holds every prepared value (so it never
        clips one); weight 1 fits; min_survivors <= threshold - max_colluders
        (any released sum holds that many honest shares); SecAgg's ``sum_bound``,
        if set, is this DDP's ``value_bound`` (the bound check_cohort vouches for,
        never a tighter one). Then check_cohort.
        """
        if session.vector_length != padded_length(d):
            raise ConfigError(
                f"a DDP fill masks padded_length(d) = {padded_length(d)} words, the session "
                f"has vector_length {session.vector_length}"
            )
        if float(config.scale) != self.scale:
            raise ConfigError(f"SecAgg scale {config.scale!r} != the DDP scale {self.scale!r}")
        if config.value_bound < self.value_bound:
            raise ConfigError(
                "SecAgg's clip would clip prepared values: use clip = ddp.coordinate_bound"
            )
        if config.max_weight < 1.0:
            raise ConfigError("a DDP input has weight 1: SecAgg's max_weight must be >= 1")
        if config.sum_bound is not None and config.sum_bound != self.value_bound:
            raise ConfigError(
                f"SecAgg's sum_bound {config.sum_bound} is not the DDP's value_bound "
                f"{self.value_bound} = 2^(bits-1) - 1, the only sum bound this DDP vouches for"
            )
        honest = config.threshold - config.max_colluders
        if self.min_survivors > honest:
            raise ConfigError(
                f"min_survivors {self.min_survivors} > threshold - max_colluders = {honest}: a "
                "released sum could hold fewer honest noise shares than calibrated"
            )
        self.check_cohort(cohort_size=session.n, d=d)

    def secagg_config_fields(self) -> dict[str, Any]:
        """The SecAggConfig fields a fill of this DDP uses: its scale, ``coordinate_bound``
        as the clip, weight 1 encoded as the integer 1, and Z_{2^bits} with
        ``sum_bound = value_bound`` (the sum fits ``bits`` bits; see check_cohort)."""
        return {
            "scale": self.scale,
            "clip": self.coordinate_bound,
            "weight_scale": 1.0,
            "max_weight": 1.0,
            "modulus_bits": self.bits,
            "sum_bound": self.value_bound,
        }

    @classmethod
    def largest_scale(
        cls,
        *,
        l2_clip: float,
        noise_multiplier: float,
        bits: int,
        min_survivors: int,
        cohort_size: int,
        d: int,
        rounding_beta: float = math.exp(-0.5),
    ) -> DistributedDp:
        """The configuration with the largest power-of-two scale that passes check_cohort.

        A larger scale means finer rounding (less rounding error relative to the
        signal); the noise in model units does not depend on the scale.
        ConfigError/OverflowRisk if even scale 2^-30 does not fit.
        """

        def build(exponent: int) -> DistributedDp:
            return cls(
                l2_clip=l2_clip,
                noise_multiplier=noise_multiplier,
                bits=bits,
                scale=math.ldexp(1.0, exponent),
                min_survivors=min_survivors,
                rounding_beta=rounding_beta,
            )

        def fits(exponent: int) -> bool:
            try:
                build(exponent).check_cohort(cohort_size=cohort_size, d=d)
            except OverflowRisk:
                return False
            return True

        lo = -30
        if not fits(lo):
            build(lo).check_cohort(cohort_size=cohort_size, d=d)  # raises with the reason
        hi = lo
        while hi < 60 and fits(hi + 1):
            hi += 1
        return build(hi)

    @classmethod
    def for_fill(
        cls,
        *,
        l2_clip: float,
        noise_multiplier: float,
        bits: int,
        threshold: int,
        max_colluders: int,
        cohort_size: int,
        d: int,
    ) -> DistributedDp:
        """The configuration of one fill: honest survivors t - c, the largest scale that fits.

        ``threshold`` and ``max_colluders`` are the fill's SecAggConfig's; ``d``
        the shared index set's length (before padding).
        """
        if not _is_int(threshold) or not _is_int(max_colluders) or threshold - max_colluders < 1:
            raise ConfigError("threshold - max_colluders must be an int >= 1")
        return cls.largest_scale(
            l2_clip=l2_clip,
            noise_multiplier=noise_multiplier,
            bits=bits,
            min_survivors=threshold - max_colluders,
            cohort_size=cohort_size,
            d=d,
        )

    # -- plain form for the wire ------------------------------------------------------

    def to_plain(self) -> dict[str, Any]:
        """JSON-ready form (str keys, int/float values)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_plain(cls, data: object) -> DistributedDp:
        """Rebuild from :meth:`to_plain` output; ConfigError on any other shape."""
        names = {f.name for f in fields(cls)}
        if not isinstance(data, Mapping) or set(data) != names:
            raise ConfigError(
                f"DistributedDp plain form must have exactly the keys {sorted(names)}"
            )
        kwargs: dict[str, Any] = {}
        for name in names:
            value = data[name]
            if name in ("bits", "min_survivors"):
                if not _is_int(value):
                    raise ConfigError(f"DistributedDp.{name} must be an int, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"DistributedDp.{name} must be a number, got {value!r}")
            kwargs[name] = value
        return cls(**kwargs)


def _cohort(n: object) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"cohort_size must be an int >= 1, got {n!r}")
    return n


def _skellam_tail(m: float, variance: float) -> float:
    """Chernoff bound on P(|X| >= m) for X ~ Skellam with variance ``variance`` (mean 0)."""
    if m <= 0:
        return 1.0
    exponent = m * math.asinh(m / variance) - math.sqrt(variance * variance + m * m) + variance
    return min(1.0, 2.0 * math.exp(-exponent))


# -- keystreams --------------------------------------------------------------------------


class _Uniforms:
    """Uniforms in (0, 1) (53 random bits each) from one ChaCha20 keystream, read in order."""

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != _KEY_BYTES:
            raise ConfigError("random_bytes returned the wrong number of bytes")
        nonce = bytes(4) + _NOISE_NONCE  # block counter 0; the key is fresh per prepare()
        self._encryptor = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()

    def draw(self, count: int) -> np.ndarray:
        words = np.frombuffer(self._encryptor.update(bytes(8 * count)), dtype="<u8")
        uniforms: np.ndarray = ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
        return uniforms


def _signs(session_seed: bytes, big_d: int) -> np.ndarray:
    """The rotation's public +-1 diagonal, from a keystream keyed by the session seed."""
    if not isinstance(session_seed, bytes) or not session_seed:
        raise ConfigError("session_seed must be non-empty bytes (the public session id)")
    h = hashlib.sha256(_ROTATION_LABEL)
    h.update(len(session_seed).to_bytes(4, "big") + session_seed)
    cipher = Cipher(algorithms.ChaCha20(h.digest(), bytes(16)), mode=None).encryptor()
    raw = np.frombuffer(cipher.update(bytes(-(-big_d // 8))), dtype=np.uint8)
    bits = np.unpackbits(raw)[:big_d].astype(np.float64)
    signs: np.ndarray = 1.0 - 2.0 * bits
    return signs


def _fwht(vector: np.ndarray) -> np.ndarray:
    """Unnormalised fast Walsh-Hadamard transform (Sylvester order) of a 2^k vector."""
    n = vector.shape[0]
    out = np.array(vector, dtype=np.float64)
    h = 1
    while h < n:
        blocks = out.reshape(-1, 2, h)
        top, bottom = blocks[:, 0, :], blocks[:, 1, :]
        out = np.stack((top + bottom, top - bottom), axis=1).reshape(n)
        h *= 2
    return out


def rotate(vector: np.ndarray, *, session_seed: bytes) -> np.ndarray:
    """H D x / sqrt(D) of ``vector`` zero-padded to padded_length (orthonormal)."""
    arr = np.asarray(vector, dtype=np.float64)
    if arr.ndim != 1:
        raise ProtocolViolation("expected a vector")
    big_d = padded_length(arr.shape[0])
    padded = np.zeros(big_d)
    padded[: arr.shape[0]] = arr
    rotated: np.ndarray = _fwht(_signs(session_seed, big_d) * padded) / math.sqrt(big_d)
    return rotated


def unrotate(rotated: np.ndarray, *, session_seed: bytes, d: int) -> np.ndarray:
    """The inverse of :func:`rotate`: D H y / sqrt(D), truncated to ``d`` coordinates."""
    arr = np.asarray(rotated, dtype=np.float64)
    big_d = padded_length(d)
    if arr.shape != (big_d,):
        raise ProtocolViolation(f"expected {big_d} rotated coordinates, got shape {arr.shape}")
    restored = _signs(session_seed, big_d) * _fwht(arr) / math.sqrt(big_d)
    truncated: np.ndarray = restored[:d]
    return truncated


# -- exact integer noise ------------------------------------------------------------------


def _poisson_inversion(lam: float, count: int, uniforms: _Uniforms) -> np.ndarray:
    """Poisson(lam) by inversion with sequential search (lam < PTRS_THRESHOLD)."""
    u = uniforms.draw(count)
    out = np.zeros(count, dtype=np.int64)
    pmf = math.exp(-lam)
    cdf = pmf
    k = 0
    active = np.flatnonzero(u > cdf)
    # the cdf reaches 1 - 2^-53 long before this cap (P(X > cap) < 1e-30 for lam < 10)
    cap = 100
    while active.size and k < cap:
        out[active] += 1
        k += 1
        pmf *= lam / k
        cdf += pmf
        active = active[u[active] > cdf]
    return out


def _poisson_ptrs(lam: float, count: int, uniforms: _Uniforms) -> np.ndarray:
    """Poisson(lam) by Hormann's transformed rejection with squeeze (PTRS, 1993), lam >= 10.

    Each candidate is accepted or rejected exactly as in the published
    algorithm; rejected ones are re-drawn from the same keystream.
    """
    slam, loglam = math.sqrt(lam), math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    log_invalpha = math.log(1.1239 + 1.1328 / (b - 3.4))
    vr = 0.9277 - 3.6224 / (b - 2.0)
    out = np.empty(count, dtype=np.int64)
    pending = np.arange(count)
    while pending.size:
        m = pending.size
        big_u = uniforms.draw(m) - 0.5
        v = uniforms.draw(m)
        us = 0.5 - np.abs(big_u)  # > 0: uniforms lie strictly inside (0, 1)
        k = np.floor((2.0 * a / us + b) * big_u + lam + 0.43)
        done = (us >= 0.07) & (v <= vr)
        maybe = ~done & (k >= 0) & ~((us < 0.013) & (v > us))
        idx = np.flatnonzero(maybe)
        if idx.size:
            kk = k[idx]
            log_fact = np.fromiter((math.lgamma(x + 1.0) for x in kk), np.float64, idx.size)
            lhs = np.log(v[idx]) + log_invalpha - np.log(a / (us[idx] * us[idx]) + b)
            rhs = -lam + kk * loglam - log_fact
            done[idx] = lhs <= rhs
        out[pending[done]] = k[done].astype(np.int64)
        pending = pending[~done]
    return out


def poisson(lam: float, count: int, *, uniforms: _Uniforms) -> np.ndarray:
    """``count`` independent Poisson(lam) draws (int64) from keystream uniforms."""
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam):
        raise ConfigError(f"Poisson mean must be a finite number, got {lam!r}")
    if lam < 0:
        raise ConfigError(f"Poisson mean must be >= 0, got {lam!r}")
    if lam == 0:
        return np.zeros(count, dtype=np.int64)
    if lam < PTRS_THRESHOLD:
        return _poisson_inversion(float(lam), count, uniforms)
    return _poisson_ptrs(float(lam), count, uniforms)


def skellam(variance: float, count: int, *, uniforms: _Uniforms) -> np.ndarray:
    """``count`` Skellam draws with the given variance: Poisson(v/2) - Poisson(v/2)."""
    half = float(variance) / 2.0
    plus = poisson(half, count, uniforms=uniforms)
    minus = poisson(half, count, uniforms=uniforms)
    difference: np.ndarray = plus - minus
    return difference


def noise_uniforms(random_bytes: RandomBytes) -> _Uniforms:
    """A fresh keystream of uniforms keyed by 32 bytes of ``random_bytes`` (for tests/tools)."""
    return _Uniforms(random_bytes(_KEY_BYTES))


# -- the device and server steps -------------------------------------------------------------


def prepare(
    vector: np.ndarray,
    *,
    ddp: DistributedDp,
    session_seed: bytes,
    random_bytes: RandomBytes,
) -> np.ndarray:
    """A device's distributed-DP input: clip, rotate, scale, round, add its Skellam share.

    ``vector`` is the device's update over the shared index set (length d);
    ``session_seed`` the public per-session bytes every cohort member uses (the
    SecAgg session id); ``random_bytes`` the device's CSPRNG (``os.urandom``),
    of which 32 bytes key this input's rounding and noise. Returns
    ``padded_length(d)`` float64 values, each an integer divided by
    ``ddp.scale`` with magnitude <= ``ddp.coordinate_bound``: mask it with
    SecAgg at weight 1 (SecAggSession.vector_length = padded_length(d)).
    Raises OverflowRisk in the (<= MAX_OVERFLOW_PROBABILITY) event that a
    value would exceed the bound: the device then sits this fill out.
    """
    if not isinstance(ddp, DistributedDp):
        raise ConfigError("ddp must be a DistributedDp")
    arr = np.asarray(vector, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise ProtocolViolation(f"update must be a non-empty vector, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ProtocolViolation("update contains non-finite values")
    d = arr.shape[0]
    big_d = padded_length(d)
    norm = float(np.linalg.norm(arr))
    if norm > ddp.l2_clip:
        arr = arr * (ddp.l2_clip / norm)
    scaled = rotate(arr, session_seed=session_seed) * ddp.scale
    uniforms = _Uniforms(random_bytes(_KEY_BYTES))
    bound_sq = ddp.rounded_l2_bound(d) ** 2
    low = np.floor(scaled)
    frac = scaled - low
    for _ in range(MAX_ROUNDING_ATTEMPTS):
        rounded = low + (uniforms.draw(big_d) < frac)
        if float(np.dot(rounded, rounded)) <= bound_sq:
            break
    else:  # pragma: no cover - probability <= beta^1000
        raise OverflowRisk("conditional rounding did not meet its norm bound")
    noisy = rounded + skellam(ddp.local_variance, big_d, uniforms=uniforms)
    if float(np.max(np.abs(noisy))) > ddp.value_bound:
        raise OverflowRisk(
            f"a prepared coordinate exceeds the {ddp.bits}-bit bound (probability <= "
            f"{MAX_OVERFLOW_PROBABILITY:.3g} for a configuration that passed check_cohort)"
        )
    prepared: np.ndarray = noisy / ddp.scale
    return prepared


def recover(summed: np.ndarray, *, ddp: DistributedDp, session_seed: bytes, d: int) -> np.ndarray:
    """The noisy SUM of the survivors' clipped updates (length d, model units).

    ``summed`` is SecAgg's decoded weighted sum of the prepared vectors (length
    padded_length(d)); it is unscaled, inverse-rotated and truncated. Divide by
    the number of survivors for the mean. The noise in it has variance
    (survivors / min_survivors) * (noise_multiplier * l2_clip)^2 per coordinate.
    """
    if not isinstance(ddp, DistributedDp):
        raise ConfigError("ddp must be a DistributedDp")
    arr = np.asarray(summed, dtype=np.float64)
    big_d = padded_length(d)
    if arr.shape != (big_d,):
        raise ProtocolViolation(f"expected a sum of {big_d} coordinates, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ProtocolViolation("the sum contains non-finite values")
    integers = np.rint(arr * ddp.scale)  # exact already; rint removes any float residue
    total: np.ndarray = unrotate(integers, session_seed=session_seed, d=d) / ddp.scale
    return total
