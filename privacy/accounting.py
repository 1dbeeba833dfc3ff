"""Epsilon from a mechanism history, computed by Opacus' own accountants.

A device's privacy loss is fully described by its *history*: the list of
``(noise_multiplier, sample_rate, steps)`` triples of the Poisson-subsampled
Gaussian mechanisms it ran. That is exactly what an Opacus accountant keeps in
``accountant.history``; we replay a history into a fresh Opacus accountant
instead of re-implementing the analysis, so our figures are Opacus' figures.

Composition is commutative, so a history is first put in *canonical form*:
entries with the same ``(noise_multiplier, sample_rate)`` are merged (steps
added) in order of first appearance. That makes the epsilon of 100 composed
tasks identical to one accountant run over the same steps, and keeps the PRV
accountant fast (its cost grows with the number of distinct entries).

A history may also hold :class:`~fedward.privacy.skellam.SkellamStep` entries
(distributed-DP fills): those are accounted by RDP only (the Skellam bound of
:mod:`fedward.privacy.skellam`, summed with Opacus' Gaussian curves at the
same orders); a PRV or GDP policy refuses them (``PolicyError``).

This is the only module of ``fedward.privacy`` that imports Opacus, and only when
an epsilon is first computed (importing Opacus takes over a second, and most
studies never account one). It does no I/O.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fedward.vocabulary import Accountant as Accountant  # re-exported: this module's API takes it

from .errors import PolicyError
from .skellam import SkellamStep

if TYPE_CHECKING:
    from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant

GDP_WARNING = (
    "the GDP accountant is an asymptotic approximation and can underestimate "
    "privacy expenditure (Gopi et al. 2021, arXiv 2106.02848); prefer RDP or PRV"
)


@dataclass(frozen=True, kw_only=True)
class MechanismStep:
    """``steps`` runs of a Gaussian mechanism with Poisson sampling rate ``sample_rate``."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        sigma, q, steps = self.noise_multiplier, self.sample_rate, self.steps
        if (
            isinstance(sigma, bool)
            or not isinstance(sigma, numbers.Real)
            or not math.isfinite(sigma)
        ):
            raise ValueError(f"noise_multiplier must be a finite number, got {sigma!r}")
        if sigma <= 0:
            raise ValueError(f"noise_multiplier must be > 0, got {sigma!r}")
        if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0 < q <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {q!r}")
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        # normalise numpy scalars so equality, hashing and JSON are plain Python
        object.__setattr__(self, "noise_multiplier", float(sigma))
        object.__setattr__(self, "sample_rate", float(q))
        object.__setattr__(self, "steps", int(steps))

    @property
    def key(self) -> tuple[float, float]:
        return (self.noise_multiplier, self.sample_rate)

    def as_tuple(self) -> tuple[float, float, int]:
        """The Opacus ``accountant.history`` entry."""
        return (self.noise_multiplier, self.sample_rate, self.steps)


Step = MechanismStep | SkellamStep
"""One history entry: DP-SGD / central Gaussian steps, or distributed-DP Skellam releases."""

History = Sequence[Step]


def merge_step(merged: dict[Hashable, Step], step: Step) -> None:
    """Add ``step`` into ``merged`` (key -> merged entry), summing the steps of equal keys."""
    if not isinstance(step, MechanismStep | SkellamStep):
        raise TypeError(f"history entries must be MechanismStep or SkellamStep, got {type(step)!r}")
    known = merged.get(step.key)
    merged[step.key] = step if known is None else replace(known, steps=known.steps + step.steps)


def canonical_history(history: Iterable[Step]) -> tuple[Step, ...]:
    """Merge entries with equal key (``(sigma, q)``, or a Skellam release's), first-appearance order."""
    merged: dict[Hashable, Step] = {}
    for step in history:
        merge_step(merged, step)
    return tuple(merged.values())


def _has_skellam(canonical: Sequence[Step]) -> bool:
    return any(isinstance(step, SkellamStep) for step in canonical)


def _check_delta(delta: float) -> None:
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def load_accountants() -> None:
    """Import Opacus' accountants now (seconds on a cold machine, once per process).

    For a caller about to fork a child that must answer within a time limit: the
    child then inherits the import instead of paying for it inside the limit.
    """
    import opacus.accountants  # noqa: F401


def _opacus_accountant(
    accountant: Accountant,
) -> RDPAccountant | PRVAccountant | GaussianAccountant:
    if not isinstance(accountant, Accountant):
        raise TypeError(f"accountant must be an Accountant, got {accountant!r}")
    from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant

    if accountant is Accountant.RDP:
        return RDPAccountant()
    if accountant is Accountant.PRV:
        return PRVAccountant()
    warnings.warn(GDP_WARNING, UserWarning, stacklevel=3)
    with warnings.catch_warnings():
        # Opacus warns in GaussianAccountant.__init__; ours above says the same once
        warnings.simplefilter("ignore", UserWarning)
        return GaussianAccountant()


def epsilon_for(history: Iterable[Step], *, delta: float, accountant: Accountant) -> float:
    """Epsilon at ``delta`` of ``history``, from a fresh Opacus accountant.

    The reference computation: the canonical history is written into
    ``accountant.history`` (the same triples Opacus records on each optimizer
    step) and ``get_epsilon(delta)`` is returned. An empty history is 0.
    GDP warns (it can underestimate) and needs a constant ``(sigma, q)``.
    """
    _check_delta(delta)
    canonical = canonical_history(history)
    if _has_skellam(canonical):
        _require_rdp_for_skellam(accountant)
        return EpsilonCalculator(max_cached_results=0).epsilon(
            canonical, delta=delta, accountant=accountant
        )
    opacus_accountant = _opacus_accountant(accountant)
    if not canonical:
        return 0.0
    if accountant is Accountant.GDP and len(canonical) > 1:
        raise PolicyError(
            "the GDP accountant needs one constant (noise_multiplier, sample_rate); "
            f"history has {len(canonical)} distinct pairs"
        )
    opacus_accountant.history = [
        step.as_tuple() for step in canonical if isinstance(step, MechanismStep)
    ]
    return float(opacus_accountant.get_epsilon(delta))


def _require_rdp_for_skellam(accountant: Accountant) -> None:
    if accountant is not Accountant.RDP:
        raise PolicyError(
            "a distributed-DP (Skellam) release is accounted by RDP only; the policy's "
            f"accountant is {Accountant(accountant).value!r}"
        )


class EpsilonCalculator:
    """Same figures as ``epsilon_for``, with caches for a ledger of many devices.

    - RDP: the per-step RDP curve of each ``(sigma, q)`` is computed once
      (Opacus' ``compute_rdp`` with ``steps=1``) and scaled by the step count,
      which is what ``compute_rdp`` itself does; the composed curve is summed
      in canonical order and converted with Opacus' ``get_privacy_spent``. The
      result is bit-for-bit what ``RDPAccountant.get_epsilon`` returns on the
      canonical history, at microseconds per call instead of ~10 ms.
    - PRV / GDP: results are cached by canonical history (devices with the same
      configuration share histories, so a fleet needs few distinct evaluations).

    Instances are independent (no module-level cache); a ledger owns one.
    """

    def __init__(self, *, max_cached_results: int = 65_536) -> None:
        if max_cached_results < 0:
            raise ValueError("max_cached_results must be >= 0")
        from opacus.accountants import RDPAccountant

        self._orders = list(RDPAccountant.DEFAULT_ALPHAS)
        self._unit_rdp: dict[Hashable, np.ndarray] = {}
        self._results: dict[Hashable, float] = {}
        self._max_cached = max_cached_results

    def epsilon(self, history: Iterable[Step], *, delta: float, accountant: Accountant) -> float:
        _check_delta(delta)
        if not isinstance(accountant, Accountant):
            raise TypeError(f"accountant must be an Accountant, got {accountant!r}")
        canonical = canonical_history(history)
        if not canonical:
            return 0.0
        if _has_skellam(canonical):
            _require_rdp_for_skellam(accountant)
        if accountant is Accountant.RDP:
            return self._rdp_epsilon(canonical, delta)
        key = (
            accountant,
            delta,
            tuple(s.as_tuple() for s in canonical if isinstance(s, MechanismStep)),
        )
        cached = self._results.get(key)
        if cached is None:
            cached = epsilon_for(canonical, delta=delta, accountant=accountant)
            if len(self._results) >= self._max_cached:
                self._results.pop(next(iter(self._results)))
            self._results[key] = cached
        elif accountant is Accountant.GDP:
            warnings.warn(GDP_WARNING, UserWarning, stacklevel=2)
        return cached

    def _rdp_epsilon(self, canonical: Sequence[Step], delta: float) -> float:
        from opacus.accountants.analysis import rdp as rdp_analysis

        curves = []
        for step in canonical:
            unit = self._unit_rdp.get(step.key)
            if unit is None and isinstance(step, SkellamStep):
                # Skellam's bound at each order (ceil for fractional orders), same order grid
                unit = step.with_steps(1).rdp(self._orders)
                self._unit_rdp[step.key] = unit
            elif unit is None:
                unit = rdp_analysis.compute_rdp(
                    q=step.sample_rate,
                    noise_multiplier=step.noise_multiplier,
                    steps=1,
                    orders=self._orders,
                )
                self._unit_rdp[step.key] = unit
            curves.append(unit * step.steps)
        eps, _ = rdp_analysis.get_privacy_spent(orders=self._orders, rdp=sum(curves), delta=delta)
        return float(eps)


def max_steps_within(
    budget_epsilon: float,
    *,
    delta: float,
    history: Iterable[MechanismStep],
    noise_multiplier: float,
    sample_rate: float,
    accountant: Accountant,
    calculator: EpsilonCalculator | None = None,
    limit: int = 10_000_000,
) -> int:
    """How many more steps of ``(noise_multiplier, sample_rate)`` fit in the budget.

    The largest ``k >= 0`` with ``epsilon(history + k steps) <= budget_epsilon``
    (epsilon grows with steps, so exponential then binary search). 0 means the
    budget cannot afford even one step; ``limit`` caps the search.
    """
    if not (math.isfinite(budget_epsilon) and budget_epsilon > 0):
        raise ValueError(f"budget_epsilon must be a positive finite number, got {budget_epsilon!r}")
    calc = calculator if calculator is not None else EpsilonCalculator()
    base = canonical_history(history)

    def fits(k: int) -> bool:
        extra = MechanismStep(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=k)
        return calc.epsilon((*base, extra), delta=delta, accountant=accountant) <= budget_epsilon

    if calc.epsilon(base, delta=delta, accountant=accountant) > budget_epsilon or not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    if hi > limit:
        if fits(limit):
            return limit
        hi = limit
    while hi - lo > 1:  # invariant: fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def history_to_state(history: Iterable[Step], *, accountant: Accountant) -> dict[str, Any]:
    """A JSON-serialisable Opacus accountant state (``{"history", "mechanism"}``).

    Gaussian steps only: an Opacus accountant cannot hold a Skellam release
    (``PolicyError``); the ledger's own state keeps those.
    """
    entries = []
    for step in history:
        if not isinstance(step, MechanismStep):
            raise PolicyError("an Opacus accountant state cannot hold a Skellam release")
        entries.append(list(step.as_tuple()))
    return {"mechanism": Accountant(accountant).value, "history": entries}


def history_from_state(
    state: Mapping[str, Any], *, accountant: Accountant
) -> tuple[MechanismStep, ...]:
    """Validate an Opacus accountant ``state_dict`` and return its history.

    Accepts Opacus' own ``state_dict()`` (tuples) and its JSON form (lists).
    """
    if not isinstance(state, Mapping) or "history" not in state or "mechanism" not in state:
        raise PolicyError("an accountant state needs 'history' and 'mechanism'")
    if state["mechanism"] != Accountant(accountant).value:
        raise PolicyError(
            f"accountant state is {state['mechanism']!r}, the task uses {accountant.value!r}"
        )
    steps = []
    for entry in state["history"]:
        if not isinstance(entry, Sequence) or len(entry) != 3:
            raise PolicyError(f"bad accountant history entry {entry!r}")
        sigma, q, n = entry
        try:
            steps.append(MechanismStep(noise_multiplier=sigma, sample_rate=q, steps=n))
        except ValueError as exc:
            raise PolicyError(f"bad accountant history entry {entry!r}: {exc}") from exc
    return tuple(steps)
