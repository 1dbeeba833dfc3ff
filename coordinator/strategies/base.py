"""The strategy interface: pure objects that accept, buffer and merge updates.

A strategy never does I/O, never reads a clock and never draws random numbers:
the engine (real time) and the simulator (virtual time) drive it through the
same three calls::

    strategy.accept(update, server_version=v)   # validate + buffer, or raise UpdateRejected
    strategy.ready()                            # enough buffered to merge?
    strategy.aggregate(params, server_version=v) -> MergeResult

Sparse, nested subsets are first class: an update carries only the tensors its
device trained, and every merge normalises each tensor by the weight of the
updates that actually trained it (``coverage``), so a tensor trained by one
gateway is not diluted by ten wearables that never touched it.

``schedule`` tells the driver how to dispatch work: SYNCHRONOUS strategies are
given a cohort and wait for it; BUFFERED ones keep a fixed number of tasks in
flight and merge whenever ``ready()``.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fedward.protocol.messages import squared_norm

from ..errors import (
    NotReadyError,
    RejectReason,
    StateLoadError,
    StrategyConfigError,
    UpdateRejected,
)

Params = dict[str, np.ndarray]
STATE_FORMAT = 1


class Schedule(enum.StrEnum):
    SYNCHRONOUS = "synchronous"
    BUFFERED = "buffered"


class StrategyName(enum.StrEnum):
    FEDAVG = "fedavg"
    FEDBUFF = "fedbuff"
    FEDASYNC = "fedasync"
    FTTE = "ftte"
    CLIENT_DP = "client_dp"  # uniform buffered mean with client-level DP


@dataclass(frozen=True, kw_only=True)
class ClientUpdate:
    """One device's contribution, as the strategy sees it (already decoded)."""

    device_id: str
    task_id: str
    base_version: int
    subset_id: str
    delta: Mapping[str, np.ndarray]
    num_samples: int
    # Mean squared update value per trained coordinate, as reported by the device
    # (the only per-device statistic FTTE's weighting needs; with secure
    # aggregation on it is what the server learns about an individual update).
    update_msq: float | None = None
    # Filled by the driver for strategies with ``needs_base_params`` (FedAsync).
    base_params: Mapping[str, np.ndarray] | None = None

    def mean_square(self) -> float:
        if self.update_msq is not None:
            return float(self.update_msq)
        total = squared_norm(self.delta)
        count = sum(v.size for v in self.delta.values())
        return total / max(count, 1)


@dataclass(frozen=True)
class MergeResult:
    params: Params
    task_ids: tuple[str, ...]
    device_ids: tuple[str, ...]
    weights: tuple[float, ...]
    staleness: tuple[int, ...]
    coverage: dict[str, int] = field(default_factory=dict)  # tensor -> how many updates trained it


def validate_update(
    update: ClientUpdate,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    server_version: int,
    max_staleness: int | None,
) -> None:
    """Raise ``UpdateRejected`` for anything that could poison the model."""
    if not update.delta:
        raise UpdateRejected(RejectReason.MISSING_TENSOR, "update carries no tensors")
    for name, value in update.delta.items():
        if name not in shapes:
            raise UpdateRejected(RejectReason.UNEXPECTED_TENSOR, name)
        if not isinstance(value, np.ndarray) or tuple(value.shape) != tuple(shapes[name]):
            got = getattr(value, "shape", type(value).__name__)
            raise UpdateRejected(RejectReason.SHAPE_MISMATCH, f"{name}: {got} != {shapes[name]}")
        if not np.isfinite(value).all():
            raise UpdateRejected(RejectReason.NON_FINITE, name)
    if (
        isinstance(update.num_samples, bool)
        or not isinstance(update.num_samples, int)
        or update.num_samples < 1
    ):
        raise UpdateRejected(RejectReason.BAD_SAMPLE_COUNT, repr(update.num_samples))
    if update.update_msq is not None and not (
        np.isfinite(update.update_msq) and update.update_msq >= 0
    ):
        raise UpdateRejected(RejectReason.MALFORMED, "update_msq must be finite and >= 0")
    if not 0 <= update.base_version <= server_version:
        raise UpdateRejected(
            RejectReason.MALFORMED, f"base version {update.base_version} > {server_version}"
        )
    if max_staleness is not None and server_version - update.base_version > max_staleness:
        raise UpdateRejected(
            RejectReason.TOO_STALE, f"staleness {server_version - update.base_version}"
        )


def weighted_mean(
    updates: Iterable[ClientUpdate], weights: Iterable[float]
) -> tuple[Params, dict[str, int]]:
    """Per-tensor weighted mean over the updates that trained each tensor."""
    sums: dict[str, np.ndarray] = {}
    totals: dict[str, float] = {}
    coverage: dict[str, int] = {}
    for update, w in zip(updates, weights, strict=True):
        for name, value in update.delta.items():
            if name not in sums:
                sums[name] = np.zeros(value.shape, dtype=np.float64)
                totals[name] = 0.0
                coverage[name] = 0
            sums[name] += w * value
            totals[name] += w
            coverage[name] += 1
    means = {n: (sums[n] / totals[n]).astype(np.float32) for n in sums if totals[n] > 0}
    return means, coverage


def apply_step(
    params: Mapping[str, np.ndarray], step: Mapping[str, np.ndarray], *, lr: float
) -> Params:
    new = {n: v.copy() for n, v in params.items()}
    for name, value in step.items():
        new[name] = (new[name] + np.float32(lr) * value).astype(np.float32)
    return new


class Strategy(ABC):
    """Base class: validation, a buffer, and a checked ``state_dict``."""

    name: ClassVar[StrategyName]
    schedule: ClassVar[Schedule]
    needs_base_params: ClassVar[bool] = False

    def __init__(
        self, *, shapes: Mapping[str, tuple[int, ...]], max_staleness: int | None = None
    ) -> None:
        if max_staleness is not None and max_staleness < 0:
            raise ValueError("max_staleness must be >= 0")
        self.shapes = {n: tuple(s) for n, s in shapes.items()}
        self.max_staleness = max_staleness
        self._buffer: list[ClientUpdate] = []

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def accept(self, update: ClientUpdate, *, server_version: int) -> None:
        validate_update(
            update, self.shapes, server_version=server_version, max_staleness=self.max_staleness
        )
        if any(u.task_id == update.task_id for u in self._buffer):
            raise UpdateRejected(RejectReason.DUPLICATE, update.task_id)
        if self.needs_base_params and update.base_params is None:
            raise UpdateRejected(
                RejectReason.MALFORMED, "this strategy needs the update's base model"
            )
        self._check_admission(update)
        self._buffer.append(update)

    def _check_admission(self, update: ClientUpdate) -> None:
        """Hook for strategy-specific admission rules (cohorts); default admits all."""
        return None

    @abstractmethod
    def ready(self) -> bool: ...

    def aggregate(self, params: Mapping[str, np.ndarray], *, server_version: int) -> MergeResult:
        if not self.ready():
            raise NotReadyError(f"{self.name} is not ready to merge ({self.pending} buffered)")
        buffer, self._buffer = self._buffer, []
        staleness = tuple(server_version - u.base_version for u in buffer)
        new_params, weights, coverage = self._merge(params, buffer, staleness)
        return MergeResult(
            params=new_params,
            task_ids=tuple(u.task_id for u in buffer),
            device_ids=tuple(u.device_id for u in buffer),
            weights=tuple(float(w) for w in weights),
            staleness=staleness,
            coverage=coverage,
        )

    @abstractmethod
    def _merge(
        self,
        params: Mapping[str, np.ndarray],
        buffer: list[ClientUpdate],
        staleness: tuple[int, ...],
    ) -> tuple[Params, list[float], dict[str, int]]: ...

    # -- saved state -----------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"max_staleness": self.max_staleness}

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "strategy": self.name.value,
            "config": self.config(),
            "buffer": [
                {
                    "device_id": u.device_id,
                    "task_id": u.task_id,
                    "base_version": u.base_version,
                    "subset_id": u.subset_id,
                    "num_samples": u.num_samples,
                    "update_msq": u.update_msq,
                    "delta": {n: v.copy() for n, v in u.delta.items()},
                }
                for u in self._buffer
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise StateLoadError(f"unsupported strategy state format {state.get('format')!r}")
        if state.get("strategy") != self.name.value:
            raise StateLoadError(f"state is for {state.get('strategy')!r}, not {self.name.value!r}")
        if state.get("config") != self.config():
            raise StateLoadError("strategy configuration differs from the saved state")
        buffer = []
        for item in state["buffer"]:
            update = ClientUpdate(
                device_id=item["device_id"],
                task_id=item["task_id"],
                base_version=int(item["base_version"]),
                subset_id=item["subset_id"],
                num_samples=int(item["num_samples"]),
                update_msq=item["update_msq"],
                delta={n: np.asarray(v, dtype=np.float32) for n, v in item["delta"].items()},
            )
            try:
                validate_update(
                    update, self.shapes, server_version=update.base_version, max_staleness=None
                )
            except UpdateRejected as exc:
                raise StateLoadError(
                    f"saved buffer entry {update.task_id} is invalid: {exc}"
                ) from exc
            buffer.append(update)
        self._buffer = buffer


class BufferedStrategy(Strategy):
    """A strategy that merges whenever ``buffer_size`` updates are buffered,
    then takes a server step of size ``server_lr`` (FedBuff, FTTE)."""

    schedule = Schedule.BUFFERED

    def __init__(
        self,
        *,
        shapes: Mapping[str, tuple[int, ...]],
        buffer_size: int,
        server_lr: float = 1.0,
        max_staleness: int | None = None,
    ) -> None:
        super().__init__(shapes=shapes, max_staleness=max_staleness)
        if buffer_size < 1:
            raise StrategyConfigError("buffer_size must be >= 1")
        if not server_lr > 0:
            raise StrategyConfigError("server_lr must be > 0")
        self.buffer_size = buffer_size
        self.server_lr = server_lr

    def ready(self) -> bool:
        return self.pending >= self.buffer_size

    def config(self) -> dict[str, Any]:
        return {**super().config(), "buffer_size": self.buffer_size, "server_lr": self.server_lr}
