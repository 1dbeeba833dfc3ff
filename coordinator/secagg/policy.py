"""A study's secure-aggregation policy: how big a fill's cohort is, its threshold,
the fixed-point encoding, the phase timer, the energy histogram and distributed DP.

One fill is one SecAgg instance (``fedward.privacy.secagg``) whose survivors'
sum is one buffered merge. The policy turns the strategy's buffer size ``K``
into a cohort size and a threshold:

    m = max(ceil(K / (1 - expected_dropout)), min_cohort, max_colluders + 2)
    t = max(threshold_floor(m, max_colluders), K)      (threshold_floor: floor((m + c)/2) + 1)

so the fill merges at least ``K`` updates (what the buffer needs) and a server
helped by ``max_colluders`` Sybil devices that asks different devices different
questions still falls short of one device's update (``2t > m + c``). A fill
whose survivors fall below ``t`` at any phase aborts and nothing is released.

When the cohort is bound (``CohortBinding``):

- ``DISPATCH``: the coordinator picks a whole cohort of idle devices, sends each
  its task with the fill in it, and the fill's key phases run while its members
  train. A fill then moves at the pace of its slower members, and its fast
  members sit idle once they have masked.
- ``ARRIVAL``: devices are sent plain training tasks (the strategy's
  ``concurrency`` of them, as in a buffered row; a device that has trained and
  waits for its cohort holds no slot, a fill member does) and say when they are
  done (``Engine.secagg_ready``); the first ``m`` ready devices of a subset form
  the next fill. A fill then waits only for its protocol round trips, and its
  members' staleness differs: each member's public staleness weight
  ``(1 + tau_i)^-a`` (its base version against the version at the fill's opening)
  goes in its task and scales its own weight; the server step is damped only for
  the versions merged while the fill ran. Under distributed DP (every weight 1)
  the fill's base version is its members' median instead.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Any

from fedward.privacy.secagg import SecAggConfig, smallest_modulus_bits, threshold_floor
from fedward.privacy.secagg.errors import SecAggError

from ..errors import CoordinatorError

__all__ = ["CohortBinding", "SecAggPolicy", "SecAggPolicyError"]

MAX_ENERGY_BINS = 64  # mirrors fedward.protocol.messages.MAX_ENERGY_BINS (edges per task)


class SecAggPolicyError(CoordinatorError, ValueError):
    """A secure-aggregation policy that cannot run (the message says which field and why)."""


class CohortBinding(enum.StrEnum):
    """When a fill's cohort is fixed (the module docstring says what each costs)."""

    DISPATCH = "dispatch"  # whole cohorts dispatched together; keys exchanged while training
    ARRIVAL = "arrival"  # devices train first; the first m ready form the next fill


def _number(name: str, value: object, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SecAggPolicyError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise SecAggPolicyError(f"{name} must be > 0, got {value!r}")
    return float(value)


def _int(name: str, value: object, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SecAggPolicyError(f"{name} must be an int >= {low}, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class SecAggPolicy:
    """Secure aggregation of every merge of a study (frozen, keyword-only, validated).

    buffer_size: K, the updates one merge needs (the fill's survivors floor).
    expected_dropout: the fraction of a cohort expected to drop, in [0, 1): the
        cohort is sized ``ceil(K / (1 - expected_dropout))``.
    max_colluders: c, cohort members that may be the server's Sybils (default 1).
    min_cohort: the smallest cohort ever formed (devices refuse smaller ones).
    modulus_bits, scale, clip: the fixed-point encoding (each coordinate of
        ``w_i * Delta_i`` clipped to [-clip, clip], times scale) in Z_{2^b}, b bits
        per masked word on the wire. ``modulus_bits`` None (the default) picks b:
        the smallest b in [8, 64] for which ``SecAggConfig.check_cohort(cohort_size)``
        passes for this scale, clip, weights and count words
        (``fedward.privacy.secagg.smallest_modulus_bits``: a full cohort's sum
        cannot wrap), or, under distributed DP, ``ddp.bits`` (the DDP's own
        guarantee that the summed words fit those bits, ``sum_bound``); an int in
        [8, 64] pins b (refused if the cohort's sum could wrap).
        Under distributed DP the encoding is the DDP's: its power-of-two scale and
        ``coordinate_bound`` as the clip (so prepared values are encoded exactly),
        the weight 1 encoded as the integer 1.
    phase_timeout_s: how long each phase waits for the cohort's live members.
    masked_input_timeout_s: how long the MASKED_INPUT phase waits (members train
        while keys are exchanged, and mask once trained); None: ``phase_timeout_s``.
    energy_bins: strictly increasing natural-log energy edges of the masked energy
        histogram (``len + 1`` bins, ``fedward.coordinator.secagg.energy``); empty: no
        histogram, and FTTE's energy reference stays unset (every weight 1).
        Ignored (no histogram) under distributed DP, where every weight is 1.
    ddp: a ``fedward.privacy.secagg.ddp.DistributedDp`` (devices add Skellam
        shares, every weight is 1), or None. Its ``min_survivors`` may not exceed
        ``threshold - max_colluders``: colluders know their own noise shares.
    fills_in_flight: how many fills may be open at once (a device is in one at a time).
    training_budget: the most members still training (live, masked input not yet
        sent) across the open fills; a new fill opens only while its whole cohort fits
        under it, so members waiting for their fill's unmask phase free room for the
        next cohort. The same rule as a buffered strategy's ``concurrency``, which
        counts tasks being worked on. None: only ``fills_in_flight`` bounds the fills.
    norm_bound: L2 bound each device clips its own update to (None: no bound).
    straggler_grace: once the threshold's masked inputs are in, the masked-input
        phase waits this fraction of the time they took (since the fill opened)
        for members still training, then drops them (``Fill``); None: it waits for
        every live member or its timer. Cohorts are grouped by measured task time
        (``form_cohorts``), so with grouping most members arrive within the grace.
    group_by_speed: draw each cohort around a random seed device from the idle
        devices nearest it in measured task time (True, the default), or only by
        subset and class (False: the rule before measured speeds, kept to measure
        what grouping buys).
    cohort_binding: ``CohortBinding.DISPATCH`` (the default) or ``ARRIVAL`` (devices
        train first; cohorts form from ready devices; ``group_by_speed``,
        ``straggler_grace`` and ``masked_input_timeout_s`` then have nothing to wait
        for, and ``training_budget`` is refused: the strategy's concurrency bounds
        the devices at work).
    """

    buffer_size: int
    expected_dropout: float = 0.2
    max_colluders: int = 1
    min_cohort: int = 3
    modulus_bits: int | None = None
    scale: float = float(1 << 16)
    clip: float = 1.0
    phase_timeout_s: float = 60.0
    energy_bins: tuple[float, ...] = ()
    ddp: Any = None
    fills_in_flight: int = 1
    training_budget: int | None = None
    norm_bound: float | None = None
    masked_input_timeout_s: float | None = None
    straggler_grace: float | None = None
    group_by_speed: bool = True
    cohort_binding: CohortBinding = CohortBinding.DISPATCH

    def __post_init__(self) -> None:
        if not isinstance(self.cohort_binding, CohortBinding):
            raise SecAggPolicyError(
                f"cohort_binding must be a CohortBinding, got {self.cohort_binding!r}"
            )
        if self.cohort_binding is CohortBinding.ARRIVAL and self.training_budget is not None:
            raise SecAggPolicyError(
                "training_budget applies to cohorts bound at dispatch; with cohort_binding "
                "arrival the strategy's concurrency bounds the devices training: leave it None"
            )
        _int("buffer_size", self.buffer_size, low=1)
        dropout = _number("expected_dropout", self.expected_dropout, positive=False)
        if not 0 <= dropout < 1:
            raise SecAggPolicyError(f"expected_dropout must lie in [0, 1), got {dropout!r}")
        _int("max_colluders", self.max_colluders, low=0)
        _int("min_cohort", self.min_cohort, low=self.max_colluders + 2)
        bits = self.modulus_bits
        if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int)):
            raise SecAggPolicyError(f"modulus_bits must be None or an int in [8, 64], got {bits!r}")
        if bits is not None and not 8 <= bits <= 64:
            raise SecAggPolicyError(f"modulus_bits must be None or an int in [8, 64], got {bits!r}")
        _number("scale", self.scale)
        _number("clip", self.clip)
        _number("phase_timeout_s", self.phase_timeout_s)
        if self.masked_input_timeout_s is not None:
            _number("masked_input_timeout_s", self.masked_input_timeout_s)
        _int("fills_in_flight", self.fills_in_flight, low=1)
        if self.training_budget is not None:
            _int("training_budget", self.training_budget, low=1)
            if self.training_budget < self.cohort_size:
                raise SecAggPolicyError(
                    f"training_budget = {self.training_budget} is under the cohort size "
                    f"{self.cohort_size}: no fill could ever open; raise it or leave it None"
                )
        if self.norm_bound is not None:
            _number("norm_bound", self.norm_bound)
        if not isinstance(self.group_by_speed, bool):
            raise SecAggPolicyError(f"group_by_speed must be a bool, got {self.group_by_speed!r}")
        if self.straggler_grace is not None:
            _number("straggler_grace", self.straggler_grace, positive=False)
            if self.straggler_grace < 0:
                raise SecAggPolicyError(
                    f"straggler_grace must be >= 0 or None, got {self.straggler_grace!r}"
                )
        bins = self.energy_bins
        if not isinstance(bins, tuple) or len(bins) > MAX_ENERGY_BINS:
            raise SecAggPolicyError(f"energy_bins must be a tuple of at most {MAX_ENERGY_BINS}")
        edges = [_number("energy_bins", e, positive=False) for e in bins]
        if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise SecAggPolicyError(f"energy_bins must be strictly increasing, got {bins!r}")
        object.__setattr__(self, "energy_bins", tuple(edges))
        if self.ddp is not None:
            from fedward.privacy.secagg.ddp import DistributedDp

            if not isinstance(self.ddp, DistributedDp):
                raise SecAggPolicyError(
                    "ddp must be a fedward.privacy.secagg.ddp.DistributedDp or None, "
                    f"got {type(self.ddp).__name__}"
                )
            honest = self.threshold - self.max_colluders
            if self.ddp.min_survivors > honest:
                raise SecAggPolicyError(
                    f"ddp.min_survivors = {self.ddp.min_survivors} > threshold - max_colluders "
                    f"= {honest}: a released sum may hold fewer honest noise shares"
                )
        # fails here, not at the first dispatch: the encoding must hold a cohort's sum
        self.config(threshold=self.threshold)

    # -- the numbers every fill of the study uses ------------------------------------
    @property
    def cohort_size(self) -> int:
        """m: the buffer plus the expected dropouts, at least the cohort floors."""
        sized = math.ceil(self.buffer_size / (1.0 - self.expected_dropout) - 1e-9)
        return max(sized, self.min_cohort, self.max_colluders + 2, self.buffer_size)

    @property
    def threshold(self) -> int:
        """t: what the buffer needs, never below the colluder-safe floor of the cohort."""
        m = self.cohort_size
        t = max(threshold_floor(m, max_colluders=self.max_colluders), self.buffer_size)
        return min(t, m)

    def timeout_for(self, phase: str) -> float:
        """Seconds the uplink ``phase`` (a SecAggPhase value) waits before it closes."""
        # at arrival nobody trains during the masked-input phase: no longer timer
        longer = phase == "masked_input" and not self.at_arrival
        if longer and self.masked_input_timeout_s is not None:
            return float(self.masked_input_timeout_s)
        return float(self.phase_timeout_s)

    @property
    def fill_straggler_grace(self) -> float | None:
        """The grace a fill's masked-input phase gets: none for cohorts bound at arrival.

        Their members have trained already: the phase waits only for masking and one
        upload, and declaring a member dropped would throw away a finished update.
        """
        return None if self.at_arrival else self.straggler_grace

    @property
    def at_arrival(self) -> bool:
        """Whether cohorts form from devices that have finished training."""
        return self.cohort_binding is CohortBinding.ARRIVAL

    @property
    def histogram(self) -> bool:
        """Whether devices add the masked energy histogram (not under distributed DP)."""
        return self.ddp is None and bool(self.energy_bins)

    @property
    def count_words(self) -> int:
        """Masked count words: one per histogram bin, or a constant 1 without one."""
        return len(self.energy_bins) + 1 if self.histogram else 1

    def check_vector(self, length: int) -> None:
        """Refuse a masked vector of ``length`` model coordinates this policy cannot sum
        (under DDP: the summed words could leave the DDP's bits for a full cohort)."""
        if self.ddp is None:
            return
        try:
            self.ddp.check_cohort(cohort_size=self.cohort_size, d=length)
        except SecAggError as exc:
            raise SecAggPolicyError(f"distributed DP cannot run this fill: {exc}") from exc

    def config(self, *, threshold: int) -> SecAggConfig:
        """The SecAggConfig of a fill with threshold ``threshold`` (checked for the cohort)."""
        try:
            ddp = self.ddp
            encoding: dict[str, Any] = (
                {"scale": self.scale, "clip": self.clip, "max_weight": 1.0, "modulus_bits": 64}
                if ddp is None
                else ddp.secagg_config_fields()  # modulus_bits = ddp.bits, sum_bound
            )
            if self.modulus_bits is not None:
                encoding["modulus_bits"] = self.modulus_bits
            config = SecAggConfig(
                threshold=threshold,
                count_words=self.count_words,
                max_count=1,
                max_colluders=self.max_colluders,
                min_cohort=self.min_cohort,
                **encoding,
            )
            if self.modulus_bits is None and ddp is None:
                bits = smallest_modulus_bits(config, cohort_size=self.cohort_size)
                config = dataclasses.replace(config, modulus_bits=bits)
            config.check_cohort(self.cohort_size)
        except SecAggError as exc:
            raise SecAggPolicyError(f"the secure-aggregation policy cannot run: {exc}") from exc
        return config
