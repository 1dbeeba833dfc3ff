"""Configuration of one secure-aggregation instance (one buffer fill).

``SecAggConfig`` holds the numeric, privacy-critical parameters (threshold,
modulus, fixed-point scale and clipping, bounds of the extra coordinates);
``SecAggSession`` names one instance: its id, round, the fixed cohort and the
length of the shared index set. Both are frozen, keyword-only and validated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

import numpy as np

from .errors import ConfigError, OverflowRisk
from .prg import MAX_MODULUS_BITS, MIN_MODULUS_BITS, check_modulus_bits
from .quantize import check_headroom, max_abs_encoded, packed_size, word_dtype

#: Words appended to every input before masking: first the device weight w_i,
#: then ``SecAggConfig.count_words`` count words (each in [0, max_count]). The
#: server learns only their sums. A device's sample count is NOT one of them: a
#: per-device value that stays the same across fills is solvable from repeated
#: masked sums (issue 11); count words carry a one-hot coarse histogram (each
#: device adds 1 to one bin) or a constant 1.
WEIGHT_WORDS = 1
MAX_COUNT_WORDS = 1 << 12
MIN_SESSION_ID_BYTES = 16
MAX_SESSION_ID_BYTES = 64
MAX_DEVICE_ID_BYTES = 255
MAX_COHORT = (1 << 16) - 1


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class SecAggConfig:
    """Parameters shared by the server and every device of a cohort.

    threshold: t, the number of devices needed to unmask (t-of-n Shamir), <= n.
        For a cohort of n it must be at least ``threshold_floor(n, max_colluders)``
        = floor((n + c) / 2) + 1: a server that asks different devices different
        questions (one group for a victim's seed, another for its mask key) and
        is helped by c colluding devices, who answer both, needs 2t <= n + c
        answers in all, so t above that bound leaves it short. Also t >= c + 2,
        so any sum the server can unmask holds at least two honest inputs.
    max_colluders: c, the number of cohort members that may be Sybil devices of
        the server (or collude with it); the guarantee holds for at most c.
        Default 1: one device per cohort may be hostile. 0 only where enrolment
        rules out Sybils (e.g. attested hardware), which this block cannot check.
    min_cohort: a device refuses a session whose fixed cohort is smaller (the
        floor on n every device enforces itself; at least max_colluders + 2).
    modulus_bits: b, an int in [8, 64]; masked words live in Z_{2^b} (held in
        uint32 for b <= 32, uint64 above) and travel packed, b bits each
        (``quantize.words_to_bytes``). A cohort's sum must fit b bits
        (:meth:`check_cohort`); :func:`smallest_modulus_bits` finds the least b.
    scale, clip: fixed point: each coordinate of ``w_i * Delta_i`` is clipped to
        [-clip, clip] and encoded as round(x * scale).
    weight_scale: fixed-point scale of the weight coordinate (default: ``scale``).
    max_weight: a device weight must lie in [0, max_weight].
    count_words: number of masked count words after the weight word (>= 0).
        Every device sends exactly this many non-negative ints; the server
        learns only each word's sum over the survivors (``count_sums``). Meant
        for a one-hot histogram (a device's 1 in one bin) or a constant 1, never
        a per-device value that stays the same across fills.
    max_count: every count word must lie in [0, max_count]; the decoded sum of
        each is range-checked against survivors * max_count.
    sum_bound: None, or the largest magnitude (encoded units) a summed model
        coordinate reaches when the inputs are known to sum to less than
        n * round(clip * scale): distributed DP, whose rotated, noised sum stays
        within ``DistributedDp.value_bound`` = 2^(bits-1) - 1 except with
        probability <= 2^-30 (``DistributedDp.check_cohort``;
        ``DistributedDp.check_secagg`` requires this field to equal it). The
        headroom and range checks then use it instead of n * clip * scale, so
        a DDP fill runs in Z_{2^ddp.bits}. Left out of the plain form when None.
    """

    threshold: int
    scale: float
    clip: float
    modulus_bits: int = 32
    weight_scale: float | None = None
    max_weight: float = 1.0
    count_words: int = 1
    max_count: int = 1
    max_colluders: int = 1
    min_cohort: int = 3
    sum_bound: int | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.threshold) or self.threshold < 2:
            raise ConfigError(f"threshold must be an int >= 2, got {self.threshold!r}")
        check_modulus_bits(self.modulus_bits)
        _finite_positive("scale", self.scale)
        _finite_positive("clip", self.clip)
        if self.weight_scale is not None:
            _finite_positive("weight_scale", self.weight_scale)
        _finite_positive("max_weight", self.max_weight)
        if not _is_int(self.count_words) or not 0 <= self.count_words <= MAX_COUNT_WORDS:
            raise ConfigError(
                f"count_words must be an int in [0, {MAX_COUNT_WORDS}], got {self.count_words!r}"
            )
        if not _is_int(self.max_count) or self.max_count < 1:
            raise ConfigError(f"max_count must be an int >= 1, got {self.max_count!r}")
        if not _is_int(self.max_colluders) or self.max_colluders < 0:
            raise ConfigError(f"max_colluders must be an int >= 0, got {self.max_colluders!r}")
        if not _is_int(self.min_cohort) or self.min_cohort < self.max_colluders + 2:
            raise ConfigError(
                f"min_cohort must be an int >= max_colluders + 2 = {self.max_colluders + 2}, "
                f"got {self.min_cohort!r}"
            )
        if self.threshold < self.max_colluders + 2:
            raise ConfigError(
                f"threshold {self.threshold} < max_colluders + 2 = {self.max_colluders + 2}: an "
                "unmasked sum could hold a single honest input"
            )
        if self.value_bound < 1:
            raise ConfigError("clip * scale rounds to 0: the encoding has no resolution")
        if self.weight_bound < 1:
            raise ConfigError("max_weight * weight_scale rounds to 0: weights cannot be encoded")
        check_headroom(1, bound=self.value_bound, modulus_bits=self.modulus_bits, what="clip")
        if self.sum_bound is not None:
            if not _is_int(self.sum_bound) or self.sum_bound < self.value_bound:
                raise ConfigError(
                    f"sum_bound must be None or an int >= round(clip * scale) = "
                    f"{self.value_bound} (one input alone reaches that), got {self.sum_bound!r}"
                )
            check_headroom(
                1, bound=self.sum_bound, modulus_bits=self.modulus_bits, what="sum_bound"
            )

    @property
    def effective_weight_scale(self) -> float:
        return float(self.scale if self.weight_scale is None else self.weight_scale)

    @property
    def value_bound(self) -> int:
        """Largest magnitude of one encoded coordinate."""
        return max_abs_encoded(clip=self.clip, scale=self.scale)

    @property
    def weight_bound(self) -> int:
        return max_abs_encoded(clip=self.max_weight, scale=self.effective_weight_scale)

    @property
    def dtype(self) -> np.dtype:
        return word_dtype(self.modulus_bits)

    def coordinate_sum_bound(self, n_summands: int) -> int:
        """Largest magnitude of a sum of ``n_summands`` model coordinates (encoded units)."""
        bound = n_summands * self.value_bound
        return bound if self.sum_bound is None else min(bound, self.sum_bound)

    def packed_bytes(self, n_words: int) -> int:
        """Wire bytes of ``n_words`` masked words: ceil(n_words * modulus_bits / 8)."""
        return packed_size(n_words, modulus_bits=self.modulus_bits)

    @property
    def extra_words(self) -> int:
        """Words masked after the model coordinates: the weight word, then the count words."""
        return WEIGHT_WORDS + self.count_words

    def to_plain(self) -> dict[str, Any]:
        """JSON-ready form (str keys; int, float or None values) for the wire.

        ``sum_bound`` appears only when set, so a config without it keeps the
        plain form it had before the field existed.
        """
        plain = {f.name: getattr(self, f.name) for f in fields(self)}
        if plain["sum_bound"] is None:
            del plain["sum_bound"]
        return plain

    @classmethod
    def from_plain(cls, data: object) -> SecAggConfig:
        """Rebuild from :meth:`to_plain` output; ConfigError on any other shape.

        Exactly the field names (``sum_bound`` only when set: an int, never
        null); int fields must be ints (not bools or floats), float fields finite
        ints or floats (converted to float), ``weight_scale`` may be None; the
        result is then validated like any SecAggConfig.
        """
        names = {f.name for f in fields(cls)}
        if isinstance(data, Mapping) and "sum_bound" not in data:
            names.discard("sum_bound")
        plain = _exact_mapping(data, "SecAggConfig", names)
        kwargs: dict[str, Any] = {}
        if "sum_bound" in plain:
            if not _is_int(plain["sum_bound"]):
                raise ConfigError(
                    f"SecAggConfig.sum_bound must be an int (left out when unset), "
                    f"got {plain['sum_bound']!r}"
                )
            kwargs["sum_bound"] = plain["sum_bound"]
        for name in _CONFIG_INT_FIELDS:
            value = plain[name]
            if not _is_int(value):
                raise ConfigError(f"SecAggConfig.{name} must be an int, got {value!r}")
            kwargs[name] = value
        for name in _CONFIG_FLOAT_FIELDS:
            value = plain[name]
            if value is None and name == "weight_scale":
                kwargs[name] = None
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"SecAggConfig.{name} must be a number, got {value!r}")
            kwargs[name] = float(value)
        return cls(**kwargs)

    def check_cohort(self, n: int) -> None:
        """Validate the threshold and the modular headroom for a cohort of ``n`` devices.

        Raises ConfigError (threshold) or OverflowRisk: a sum of n inputs (model
        coordinates up to n * clip * scale, or ``sum_bound``; weights; count
        words) could leave [-2^(b-1), 2^(b-1) - 1] for b = modulus_bits.
        """
        if not _is_int(n) or n < max(2, self.min_cohort):
            raise ConfigError(
                f"a cohort needs at least min_cohort = {self.min_cohort} devices, got {n!r}"
            )
        if self.threshold > n:
            raise ConfigError(f"threshold {self.threshold} exceeds the cohort size {n}")
        floor = threshold_floor(n, max_colluders=self.max_colluders)
        if self.threshold < floor:
            raise ConfigError(
                f"threshold {self.threshold} < floor((n + c) / 2) + 1 = {floor} for n = {n} and "
                f"max_colluders c = {self.max_colluders}: a split unmask request with c colluders "
                "would unmask one device's input"
            )
        bits = self.modulus_bits
        if self.sum_bound is None:
            check_headroom(n, bound=self.value_bound, modulus_bits=bits, what="n * clip * scale")
        else:
            check_headroom(
                1, bound=self.coordinate_sum_bound(n), modulus_bits=bits, what="sum_bound"
            )
        check_headroom(n, bound=self.weight_bound, modulus_bits=bits, what="sum of weights")
        check_headroom(n, bound=self.max_count, modulus_bits=bits, what="sum of count words")

    def fingerprint(self) -> bytes:
        """SHA-256 of a canonical encoding; bound into every key derivation."""
        text = (
            f"t={self.threshold};bits={self.modulus_bits};scale={float(self.scale)!r};"
            f"clip={float(self.clip)!r};wscale={self.effective_weight_scale!r};"
            f"wmax={float(self.max_weight)!r};counts={self.count_words};cmax={self.max_count};"
            f"colluders={self.max_colluders};min_cohort={self.min_cohort}"
        )
        if self.sum_bound is not None:  # unset: the text (and every derived key) as before
            text += f";sum_bound={self.sum_bound}"
        return hashlib.sha256(text.encode()).digest()


def smallest_modulus_bits(config: SecAggConfig, *, cohort_size: int) -> int:
    """The least b in [8, 64] for which ``config`` with ``modulus_bits=b`` passes
    ``check_cohort(cohort_size)``: the cohort's sum (coordinates, weights, counts)
    fits b bits. ``config``'s own modulus_bits is ignored. Raises what check_cohort
    raises at b = 64 (OverflowRisk: no ring holds the sum; ConfigError: threshold).
    """
    last: Exception | None = None
    for bits in range(MIN_MODULUS_BITS, MAX_MODULUS_BITS + 1):
        try:
            candidate = dataclasses.replace(config, modulus_bits=bits)
            candidate.check_cohort(cohort_size)
        except OverflowRisk as exc:
            last = exc
            continue
        return bits
    raise last if last is not None else OverflowRisk("no modulus holds the sum")


_CONFIG_INT_FIELDS = (
    "threshold",
    "modulus_bits",
    "count_words",
    "max_count",
    "max_colluders",
    "min_cohort",
)
_CONFIG_FLOAT_FIELDS = ("scale", "clip", "weight_scale", "max_weight")


def _exact_mapping(data: object, what: str, names: set[str]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
        raise ConfigError(f"{what} plain form must be a mapping with str keys")
    if set(data) != names:
        missing, extra = sorted(names - set(data)), sorted(set(data) - names)
        raise ConfigError(f"{what} plain form lacks {missing} / has unknown {extra}")
    return data


def _from_hex(value: object, what: str) -> bytes:
    """Bytes from lowercase hex (the plain form); ConfigError for anything else."""
    if (
        not isinstance(value, str)
        or len(value) % 2
        or any(c not in "0123456789abcdef" for c in value)
    ):
        raise ConfigError(f"{what} must be lowercase hex of whole bytes")
    return bytes.fromhex(value)


def threshold_floor(n: int, *, max_colluders: int) -> int:
    """The smallest safe t for n devices with up to ``max_colluders`` colluders.

    Splitting the survivors into one group asked for a victim's seed shares and
    another asked for its key shares needs t answers in each; c colluders answer
    both, honest devices one, so the attack needs 2t - c <= n.
    """
    return (n + max_colluders) // 2 + 1


def digest_index_set(indices: Iterable[int], *, model_size: int) -> bytes:
    """SHA-256 naming the index set every cohort member masks (sorted, distinct, in range)."""
    if not _is_int(model_size) or model_size < 1:
        raise ConfigError(f"model_size must be an int >= 1, got {model_size!r}")
    values = list(indices)
    if not all(_is_int(i) or isinstance(i, np.integer) for i in values):
        raise ConfigError("index set entries must be ints")
    ordered = sorted(int(i) for i in values)
    if not ordered or len(set(ordered)) != len(ordered):
        raise ConfigError("index set must be non-empty and without repeats")
    if ordered[0] < 0 or ordered[-1] >= model_size:
        raise ConfigError(f"index set entries must lie in [0, {model_size})")
    h = hashlib.sha256(b"fedward.secagg.index-set.v1")
    h.update(model_size.to_bytes(8, "big") + len(ordered).to_bytes(8, "big"))
    h.update(np.asarray(ordered, dtype=">u8").tobytes())
    return h.digest()


def canonical_order(device_ids: Iterable[str]) -> tuple[str, ...]:
    """Device ids sorted by their UTF-8 bytes (the order used for mask signs and x)."""
    return tuple(sorted(device_ids, key=lambda d: d.encode("utf-8")))


def check_device_id(device_id: object) -> str:
    if not isinstance(device_id, str) or not device_id:
        raise ConfigError(f"device id must be a non-empty str, got {device_id!r}")
    if len(device_id.encode("utf-8")) > MAX_DEVICE_ID_BYTES:
        raise ConfigError("device id longer than 255 UTF-8 bytes")
    return device_id


@dataclass(frozen=True, kw_only=True)
class SecAggSession:
    """One SecAgg instance: one buffer fill of the coordinator.

    session_id: 16-64 unpredictable bytes chosen by the coordinator per instance.
    round_index: the coordinator's round / model version this fill belongs to.
    cohort: the devices fixed at dispatch (stored in canonical order).
    vector_length: number of model coordinates every device masks (the shared
        index set; the weight and count words are added on top, see
        :meth:`total_words`).
    index_set_digest: the 32-byte :func:`digest_index_set` of the shared index
        set, mandatory: it is bound into every key, so a device that masks
        another subset (which would leak its sparse coordinates, or mis-sum)
        fails loudly at the first share it opens.
    """

    session_id: bytes
    round_index: int
    cohort: tuple[str, ...]
    vector_length: int
    index_set_digest: bytes

    def __post_init__(self) -> None:
        sid = self.session_id
        if not isinstance(sid, bytes) or not (
            MIN_SESSION_ID_BYTES <= len(sid) <= MAX_SESSION_ID_BYTES
        ):
            raise ConfigError("session_id must be 16 to 64 bytes")
        if not _is_int(self.round_index) or self.round_index < 0:
            raise ConfigError(f"round_index must be an int >= 0, got {self.round_index!r}")
        if isinstance(self.cohort, str | bytes):
            raise ConfigError("cohort must be a collection of device ids, not a string")
        cohort = canonical_order(check_device_id(d) for d in self.cohort)
        if len(set(cohort)) != len(cohort):
            raise ConfigError("cohort contains duplicate device ids")
        if not 2 <= len(cohort) <= MAX_COHORT:
            raise ConfigError(f"cohort size must be in [2, {MAX_COHORT}], got {len(cohort)}")
        object.__setattr__(self, "cohort", cohort)
        if not _is_int(self.vector_length) or self.vector_length < 1:
            raise ConfigError(f"vector_length must be an int >= 1, got {self.vector_length!r}")
        if not isinstance(self.index_set_digest, bytes) or len(self.index_set_digest) != 32:
            raise ConfigError(
                "index_set_digest must be the 32-byte digest_index_set() of the shared index set"
            )

    @property
    def n(self) -> int:
        return len(self.cohort)

    def total_words(self, config: SecAggConfig) -> int:
        """Masked words per device: vector_length + 1 (weight) + config.count_words.

        A method taking the config (not a property) because the number of count
        words is a config parameter (bound into every key by its fingerprint),
        while the session names the instance and its index set.
        """
        return self.vector_length + config.extra_words

    def to_plain(self) -> dict[str, Any]:
        """JSON-ready form for the wire: bytes as lowercase hex, the cohort as a list."""
        return {
            "session_id": self.session_id.hex(),
            "round_index": self.round_index,
            "cohort": list(self.cohort),
            "vector_length": self.vector_length,
            "index_set_digest": self.index_set_digest.hex(),
        }

    @classmethod
    def from_plain(cls, data: object) -> SecAggSession:
        """Rebuild from :meth:`to_plain` output; ConfigError on any other shape.

        Exactly the five keys; hex strings lowercase; the cohort a list of str
        already in canonical order without repeats (what to_plain writes).
        """
        plain = _exact_mapping(data, "SecAggSession", {f.name for f in fields(cls)})
        cohort = plain["cohort"]
        if not isinstance(cohort, list | tuple) or not all(isinstance(d, str) for d in cohort):
            raise ConfigError("SecAggSession.cohort must be a list of device ids")
        if tuple(cohort) != canonical_order(cohort):
            raise ConfigError("SecAggSession.cohort must be in canonical order")
        for name in ("round_index", "vector_length"):
            if not _is_int(plain[name]):
                raise ConfigError(f"SecAggSession.{name} must be an int, got {plain[name]!r}")
        return cls(
            session_id=_from_hex(plain["session_id"], "SecAggSession.session_id"),
            round_index=plain["round_index"],
            cohort=tuple(cohort),
            vector_length=plain["vector_length"],
            index_set_digest=_from_hex(plain["index_set_digest"], "SecAggSession.index_set_digest"),
        )

    @cached_property
    def _positions(self) -> dict[str, int]:
        return {d: i + 1 for i, d in enumerate(self.cohort)}

    def x_of(self, device_id: str) -> int:
        """The Shamir evaluation point of a device: its 1-based canonical position."""
        try:
            return self._positions[device_id]
        except (KeyError, TypeError):
            raise ConfigError(f"device {device_id!r} is not in the cohort") from None
