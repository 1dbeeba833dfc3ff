"""Merging a secure-aggregation fill's sum: a strategy wrapper around any buffered strategy.

With secure aggregation the server never holds one update: a fill's only
output is ``AggregateResult`` (sums over its survivors). ``SecureAggregated``
merges that sum with the inner strategy's server step::

    mean  = sum_i w_i Delta_i / sum_i w_i        (w_i in [0, 1], computed on each device)
    tau   = server version at the merge - the fill's base version   (public: one per fill)
    s     = (1 + tau) ^ -a                        (a: the inner's staleness exponent, 0.5
                                                   for FedBuff, FTTE's ``staleness_exponent``)
    w    <- w + eta_g * s * mean                  (eta_g: the inner's ``server_lr``)

With FTTE's server momentum or Adam (``StudySpec.server_optimizer``) the last line
is that optimiser's step with ``s * mean``: its moments average merged means
over fills, never one device's update.

Staleness scales the server step (one base version per fill makes it the same
for every member, and it is public anyway); with cohorts bound at arrival the
members' bases differ, and each member's public ``(1 + tau_i)^-a`` against the
fill's opening also scales its own weight, on the device. No
per-device statistic exists: ``MergeResult.weights`` is empty and every
survivor has the fill's staleness. Under distributed DP the sum is the
survivors' rotated, noised vectors; ``fedward.privacy.secagg.ddp.recover``
undoes the rotation and the mean is over the survivors (every weight is 1).

FTTE's energy term moves to the devices: each computes its damping
``g = 1/(1 + beta * max(0, q/ref - tol))`` from the public reference its task
carries; the reference is this wrapper's state, re-derived after each merge
from the fill's masked energy histogram (the median bin,
``fedward.coordinator.secagg.energy``). Plaintext updates are refused: a study
under secure aggregation only ever merges fills.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedward.privacy.secagg import AggregateResult
from fedward.privacy.secagg.layout import VectorLayout
from fedward.tinytrain.models import Params

from ..errors import (
    CoordinatorError,
    NotReadyError,
    RejectReason,
    StateLoadError,
    StrategyConfigError,
    UpdateRejected,
)
from .base import ClientUpdate, MergeResult, Strategy, apply_step
from .ftte import FTTE, ServerOptimizer
from .wrapper import StrategyWrapper

__all__ = ["FillAggregate", "FillMergeError", "SecureAggregated"]

DEFAULT_STALENESS_EXPONENT = 0.5  # FedBuff's 1/sqrt(1 + tau)


class FillMergeError(CoordinatorError):
    """A fill's sum cannot be merged (no weight in it, a DDP recovery that failed)."""


@dataclass(frozen=True, kw_only=True)
class FillAggregate:
    """What a finished fill hands the strategy: its sums and the public facts around them."""

    fill_id: str
    result: AggregateResult
    layout: VectorLayout
    task_ids: tuple[str, ...]  # the survivors' tasks, in the order of result.survivors
    base_version: int
    session_seed: bytes  # the session id: the DDP rotation's seed
    # the next energy reference, from the fill's masked histogram (None: keep the current)
    energy_reference: float | None = None
    ddp: Any = None


def _innermost(strategy: Strategy) -> Strategy:
    while isinstance(strategy, StrategyWrapper):
        strategy = strategy.inner
    return strategy


class SecureAggregated(StrategyWrapper):
    """Merges fills' sums with the inner strategy's server step and staleness exponent."""

    wrapper = "secure_aggregated"

    def __init__(self, inner: Strategy, *, staleness_exponent: float | None = None) -> None:
        super().__init__(inner)
        base = _innermost(inner)
        exponent = (
            staleness_exponent
            if staleness_exponent is not None
            else getattr(base, "staleness_exponent", DEFAULT_STALENESS_EXPONENT)
        )
        if not (math.isfinite(exponent) and exponent >= 0):
            raise StrategyConfigError("staleness_exponent must be a finite number >= 0")
        self.staleness_exponent = float(exponent)
        self.server_lr = float(getattr(base, "server_lr", 1.0))
        # FTTE's energy numbers, sent to devices; other strategies damp nothing (beta 0)
        self.energy_tolerance = float(getattr(base, "energy_tolerance", 10.0))
        self.energy_beta = float(getattr(base, "energy_beta", 0.0))
        self.energy_reference: float | None = None
        self.fills_merged = 0

    # -- plaintext updates never enter ---------------------------------------------
    @property
    def pending(self) -> int:
        return 0

    def accept(self, update: ClientUpdate, *, server_version: int) -> None:
        raise UpdateRejected(
            RejectReason.MALFORMED,
            "this study merges secure-aggregation fills only; a plaintext update is refused",
        )

    def ready(self) -> bool:
        return False

    def aggregate(self, params: Mapping[str, np.ndarray], *, server_version: int) -> MergeResult:
        raise NotReadyError("a secure-aggregation study merges fills (merge_fill), not a buffer")

    # -- a fill's sum ----------------------------------------------------------------
    def age_factor(self, *, staleness: int) -> float:
        """(1 + tau)^-a: a fill's step damping, and an arrival-bound member's own weight."""
        return float((1.0 + staleness) ** -self.staleness_exponent)

    def step_scale(self, *, staleness: int) -> float:
        """eta_g * (1 + tau)^-a: the server step of a fill of staleness ``tau``."""
        return self.server_lr * self.age_factor(staleness=staleness)

    def fill_mean(self, aggregate: FillAggregate) -> np.ndarray:
        """The fill's weighted mean update over its index set (float64)."""
        result, survivors = aggregate.result, len(aggregate.result.survivors)
        if survivors < 1:
            raise FillMergeError(f"fill {aggregate.fill_id} has no survivors")
        if aggregate.ddp is not None:
            from fedward.privacy.secagg import ddp as distributed

            try:
                summed = distributed.recover(
                    result.weighted_sum,
                    ddp=aggregate.ddp,
                    session_seed=aggregate.session_seed,
                    d=aggregate.layout.vector_length,
                )
            except Exception as exc:  # its own error types: refuse the merge, loudly
                raise FillMergeError(
                    f"fill {aggregate.fill_id}: DDP recovery failed: {exc}"
                ) from exc
            return np.asarray(summed, dtype=np.float64) / survivors
        if not (math.isfinite(result.weight_sum) and result.weight_sum > 0):
            raise FillMergeError(f"fill {aggregate.fill_id} carries no weight")
        return np.asarray(result.weighted_sum, dtype=np.float64) / result.weight_sum

    def merge_fill(
        self, params: Mapping[str, np.ndarray], *, aggregate: FillAggregate, server_version: int
    ) -> MergeResult:
        """One server step with the fill's mean; the energy reference from its histogram."""
        staleness = server_version - aggregate.base_version
        if staleness < 0:
            raise FillMergeError(f"fill {aggregate.fill_id} is based on a future version")
        mean = aggregate.layout.unflatten(self.fill_mean(aggregate))
        optimised = self._optimised_step()
        if optimised is None:
            new_params = apply_step(params, mean, lr=self.step_scale(staleness=staleness))
        else:  # FTTE's server optimiser on the staleness-scaled mean (it applies server_lr)
            age = self.age_factor(staleness=staleness)
            new_params = optimised(params, {n: v * age for n, v in mean.items()})
        reference = aggregate.energy_reference
        survivors = aggregate.result.survivors
        self.fills_merged += 1
        if reference is not None:
            self.energy_reference = reference
        return MergeResult(
            params=new_params,
            task_ids=aggregate.task_ids,
            device_ids=tuple(survivors),
            weights=(),  # no per-device weight exists on the server
            staleness=(staleness,) * len(survivors),
            coverage=dict.fromkeys(aggregate.layout.names, len(survivors)),
        )

    def _optimised_step(self) -> Callable[[Mapping[str, np.ndarray], Params], Params] | None:
        """The inner FTTE's momentum or Adam step, or None for the plain step (SGD)."""
        base = _innermost(self.inner)
        if isinstance(base, FTTE) and base.server_optimizer is not ServerOptimizer.SGD:
            return base.server_step
        return None

    # -- saved state ---------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"staleness_exponent": self.staleness_exponent}

    def own_state(self) -> dict[str, Any]:
        return {"energy_reference": self.energy_reference, "fills_merged": self.fills_merged}

    def restore_own(self, own: Mapping[str, Any]) -> tuple[float | None, int]:
        reference, merged = own.get("energy_reference"), own.get("fills_merged")
        if reference is not None and (
            isinstance(reference, bool)
            or not isinstance(reference, int | float)
            or not (math.isfinite(reference) and reference > 0)
        ):
            raise StateLoadError("secure aggregation state: energy_reference must be > 0 or None")
        if isinstance(merged, bool) or not isinstance(merged, int) or merged < 0:
            raise StateLoadError("secure aggregation state: fills_merged must be an int >= 0")
        return (None if reference is None else float(reference)), merged

    def assign_own(self, checked: tuple[float | None, int]) -> None:
        self.energy_reference, self.fills_merged = checked
