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

``schedule`` says how work is dispatched, and the strategy itself answers the
driver's schedule questions (``dispatch_room``, ``next_round_id``,
``tasks_dispatched``, ``task_failed``, ``check_in_flight``): SYNCHRONOUS
strategies ask for a cohort and wait for it; BUFFERED ones keep a fixed
number of tasks in flight and merge whenever ``ready()``. The driver never
asks which strategy it holds.

The interface is closed: :class:`Strategy` is every method the driver calls.
:class:`StrategyBase` implements it with validation and a buffer (FedAvg,
FedAsync, and through :class:`BufferedStrategy` FedBuff, FTTE and client-level
DP); :class:`StrategyWrapper` implements it by delegating to any inner
strategy, so a wrapper (``NormBounded``) wraps any strategy, wrappers
included, and is itself a strategy.

Saved state: one envelope (``fedward.saved_state``) per strategy, kind
``STRATEGY_KIND``, whose payload holds the strategy's name, configuration
and its buffer, itself an envelope of kind ``BUFFER_KIND`` (the store finds
buffers by that kind to keep their tensors out of the JSON). A wrapper's
payload holds its own part and the inner strategy's envelope.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedward.protocol.messages import update_energy
from fedward.saved_state import open_envelope, seal
from fedward.tinytrain.models import Params

from ..errors import (
    NotReadyError,
    RejectReason,
    StateLoadError,
    StrategyConfigError,
    UpdateRejected,
)

STRATEGY_KIND = "fedward.coordinator.strategy"
# 1: a flat dict; 2: a buffered update's statistic saved as "update_energy" (was
# "update_msq") and FTTE's parameters energy_* (were variance_*); 3: the
# saved-state envelope, the buffer an envelope of its own.
STRATEGY_FORMAT = 3
BUFFER_KIND = "fedward.coordinator.update_buffer"
BUFFER_FORMAT = 1


class Schedule(enum.StrEnum):
    SYNCHRONOUS = "synchronous"
    BUFFERED = "buffered"


class StrategyName(enum.StrEnum):
    FEDAVG = "fedavg"
    FEDBUFF = "fedbuff"
    FEDASYNC = "fedasync"
    FTTE = "ftte"
    CLIENT_DP = "client_dp"  # uniform buffered mean with client-level DP


UNCOUNTED = 1
"""``ClientUpdate.num_samples`` of an update that reports no count (every DP update):
it then weighs as one sample, so count-weighted merges are uniform over such updates."""


@dataclass(frozen=True, kw_only=True)
class ClientUpdate:
    """One device's contribution, as the strategy sees it (already decoded)."""

    device_id: str
    task_id: str
    base_version: int
    subset_id: str
    delta: Mapping[str, np.ndarray]
    # The device's sample count, or UNCOUNTED: a DP update sends none (an exact count
    # is a release the accountant does not cover), so sample weighting becomes uniform.
    num_samples: int
    # The update's energy (``fedward.protocol.messages.update_energy``: mean
    # squared value per trained coordinate) as measured at ingest or reported by
    # the device; None = compute it from ``delta``. It is the only per-device
    # statistic FTTE's energy term needs; with secure aggregation on it is what
    # the server learns about an individual update.
    update_energy: float | None = None
    # Filled by the driver for strategies with ``needs_base_params`` (FedAsync).
    base_params: Mapping[str, np.ndarray] | None = None

    def energy(self) -> float:
        """``update_energy``, computed from ``delta`` when it was not given."""
        if self.update_energy is not None:
            return float(self.update_energy)
        return update_energy(self.delta)


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
    if update.update_energy is not None and not (
        np.isfinite(update.update_energy) and update.update_energy >= 0
    ):
        raise UpdateRejected(RejectReason.MALFORMED, "update_energy must be finite and >= 0")
    if not 0 <= update.base_version <= server_version:
        raise UpdateRejected(
            RejectReason.MALFORMED, f"base version {update.base_version} > {server_version}"
        )
    if max_staleness is not None and server_version - update.base_version > max_staleness:
        raise UpdateRejected(
            RejectReason.TOO_STALE, f"staleness {server_version - update.base_version}"
        )


def weighted_mean(
    updates: Iterable[ClientUpdate],
    weights: Iterable[float],
    *,
    normalisers: Iterable[float] | None = None,
    floors: Iterable[float] | None = None,
) -> tuple[Params, dict[str, int]]:
    """Per-tensor weighted mean over the updates that trained each tensor.

    Each tensor's sum of ``w_i * delta_i`` is divided by the larger of the sum of
    ``normalisers`` (default: the weights themselves) and the largest of ``floors``
    (default: none), both over the updates that trained it. A normaliser or a floor
    above an update's weight shrinks its pull even where it alone trained a tensor
    (FTTE's ``EnergyNormaliser``).
    """
    weights = list(weights)
    norms = weights if normalisers is None else list(normalisers)
    lows = [0.0] * len(weights) if floors is None else list(floors)
    if len(norms) != len(weights) or len(lows) != len(weights):
        raise ValueError("weighted_mean needs one normaliser and one floor per update")
    if any(n < w for n, w in zip(norms, weights, strict=True)):
        raise ValueError("weighted_mean needs each normaliser >= its weight")
    sums: dict[str, np.ndarray] = {}
    totals: dict[str, float] = {}
    highest: dict[str, float] = {}
    coverage: dict[str, int] = {}
    for update, w, norm, low in zip(updates, weights, norms, lows, strict=True):
        for name, value in update.delta.items():
            if name not in sums:
                sums[name] = np.zeros(value.shape, dtype=np.float64)
                totals[name] = 0.0
                highest[name] = 0.0
                coverage[name] = 0
            with np.errstate(over="ignore"):  # caught below
                product = w * value  # float32 (numpy 2 keeps the array's dtype)
            if not np.isfinite(product).all():
                # a large weight times a large finite value overflowed float32: redo it in
                # float64. Only then, so every result measured before stays bit for bit.
                product = w * value.astype(np.float64)
            sums[name] += product
            totals[name] += norm
            highest[name] = max(highest[name], low)
            coverage[name] += 1
    denominators = {n: max(totals[n], highest[n]) for n in sums}
    means = {n: (sums[n] / denominators[n]).astype(np.float32) for n in sums if denominators[n] > 0}
    return means, coverage


def apply_step(
    params: Mapping[str, np.ndarray], step: Mapping[str, np.ndarray], *, lr: float
) -> Params:
    new = {n: v.copy() for n, v in params.items()}
    for name, value in step.items():
        new[name] = (new[name] + np.float32(lr) * value).astype(np.float32)
    return new


class Strategy(ABC):
    """The closed interface: every call a driver (engine, simulator) makes.

    Implementations: :class:`StrategyBase` (validation and a buffer) and
    :class:`StrategyWrapper` (delegates to an inner strategy). The schedule
    hooks default to the buffered schedule; synchronous strategies override
    them.
    """

    # Read-only facts (class attributes on concrete strategies, delegated by wrappers).
    @property
    @abstractmethod
    def name(self) -> StrategyName: ...

    @property
    @abstractmethod
    def schedule(self) -> Schedule: ...

    @property
    def needs_base_params(self) -> bool:
        """Whether the driver must attach the update's base model (FedAsync mixes with it)."""
        return False

    @property
    @abstractmethod
    def shapes(self) -> Mapping[str, tuple[int, ...]]:
        """Tensor name -> shape of the model this strategy merges."""

    @property
    @abstractmethod
    def max_staleness(self) -> int | None: ...

    @property
    @abstractmethod
    def pending(self) -> int:
        """Updates accepted and not yet merged."""

    @abstractmethod
    def accept(self, update: ClientUpdate, *, server_version: int) -> None:
        """Validate and buffer ``update``, or raise ``UpdateRejected``."""

    @abstractmethod
    def ready(self) -> bool:
        """Whether :meth:`aggregate` may be called now."""

    @abstractmethod
    def aggregate(self, params: Mapping[str, np.ndarray], *, server_version: int) -> MergeResult:
        """Merge the buffer into ``params``; raise ``NotReadyError`` before :meth:`ready`."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The saved form (an envelope); deltas stay numpy arrays (the store blobs them)."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; ``StateLoadError`` for anything else."""

    # -- the schedule (buffered by default) ------------------------------------------
    def dispatch_room(self, *, in_flight: int, concurrency: int) -> int:
        """How many new tasks the driver may issue now."""
        return concurrency - in_flight

    def next_round_id(self) -> int | None:
        """The round the tasks issued next belong to (None: no rounds)."""
        return None

    def tasks_dispatched(self, task_ids: Sequence[str]) -> None:  # noqa: B027 (optional hook)
        """The driver issued these tasks (a synchronous strategy opens its round)."""

    def task_failed(self, task_id: str) -> None:  # noqa: B027 (optional hook)
        """A task will never be answered (dropout, deadline, rejection, refusal)."""

    def check_in_flight(self, task_ids: frozenset[str]) -> None:  # noqa: B027 (optional hook)
        """On restore: raise ``StateLoadError`` if these tasks cannot be in flight."""


class StrategyBase(Strategy):
    """A strategy that validates updates and merges a buffer of them."""

    needs_base_params = False

    def __init__(
        self, *, shapes: Mapping[str, tuple[int, ...]], max_staleness: int | None = None
    ) -> None:
        if max_staleness is not None and max_staleness < 0:
            raise ValueError("max_staleness must be >= 0")
        self._shapes = {n: tuple(s) for n, s in shapes.items()}
        self._max_staleness = max_staleness
        self._buffer: list[ClientUpdate] = []

    @property
    def shapes(self) -> Mapping[str, tuple[int, ...]]:
        return self._shapes

    @property
    def max_staleness(self) -> int | None:
        return self._max_staleness

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
        return seal(STRATEGY_KIND, STRATEGY_FORMAT, self._state_payload())

    def _state_payload(self) -> dict[str, Any]:
        """What a subclass saves: extend the dict (and read it back in ``_load_payload``)."""
        return {
            "strategy": self.name.value,
            "config": self.config(),
            "buffer": buffer_state(self._buffer),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        payload = open_envelope(
            state, kind=STRATEGY_KIND, format_version=STRATEGY_FORMAT, error=StateLoadError
        )
        if payload.get("strategy") != self.name.value:
            raise StateLoadError(
                f"state is for {payload.get('strategy')!r}, not {self.name.value!r}"
            )
        if payload.get("config") != self.config():
            raise StateLoadError("strategy configuration differs from the saved state")
        buffer = buffer_from_state(payload.get("buffer"), self.shapes)
        self._load_payload(payload, buffer=buffer)
        self._buffer = buffer

    def _load_payload(  # noqa: B027 (optional hook)
        self, payload: Mapping[str, Any], *, buffer: Sequence[ClientUpdate]
    ) -> None:
        """A subclass checks its own part (against the restored ``buffer``) and
        restores it; it raises ``StateLoadError`` before changing anything."""


def buffer_state(updates: Iterable[ClientUpdate]) -> dict[str, Any]:
    """The saved form of buffered updates (deltas as numpy arrays)."""
    return seal(
        BUFFER_KIND,
        BUFFER_FORMAT,
        {
            "updates": [
                {
                    "device_id": u.device_id,
                    "task_id": u.task_id,
                    "base_version": u.base_version,
                    "subset_id": u.subset_id,
                    "num_samples": u.num_samples,
                    "update_energy": u.update_energy,
                    "delta": {n: v.copy() for n, v in u.delta.items()},
                }
                for u in updates
            ]
        },
    )


def _optional_float(value: object) -> float | None:
    """A saved statistic: None, or a number (a bool or a string is no energy)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number or None, got {type(value).__name__}")
    return float(value)


SavedUpdates = list[Mapping[str, Any]]


def map_saved_buffers(node: Any, change: Callable[[SavedUpdates], SavedUpdates]) -> Any:
    """A copy of ``node`` in which every saved buffer's updates are ``change(updates)``.

    Buffers are found by their kind wherever they sit (inside wrappers, inside
    an engine state), so callers need not know any strategy's layout.
    """
    if isinstance(node, Mapping):
        payload = node.get("payload")
        if node.get("kind") == BUFFER_KIND and isinstance(payload, Mapping):
            updates = payload.get("updates")
            if not isinstance(updates, list):
                raise StateLoadError("a saved buffer holds a list of updates")
            return {**node, "payload": {**payload, "updates": change(updates)}}
        return {k: map_saved_buffers(v, change) for k, v in node.items()}
    if isinstance(node, list):
        return [map_saved_buffers(v, change) for v in node]
    return node


def saved_updates(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The buffered updates inside a saved strategy state, through any wrappers."""
    buffers: list[SavedUpdates] = []

    def keep(updates: SavedUpdates) -> SavedUpdates:
        buffers.append(updates)
        return updates

    map_saved_buffers(state, keep)
    if len(buffers) != 1:
        raise StateLoadError(f"a saved strategy state holds one buffer, not {len(buffers)}")
    return [dict(u) for u in buffers[0]]


def buffer_from_state(state: object, shapes: Mapping[str, tuple[int, ...]]) -> list[ClientUpdate]:
    """Buffered updates from :func:`buffer_state`, each validated against ``shapes``."""
    payload = open_envelope(
        state, kind=BUFFER_KIND, format_version=BUFFER_FORMAT, error=StateLoadError
    )
    items = payload.get("updates")
    if not isinstance(items, list):
        raise StateLoadError("a saved buffer holds a list of updates")
    buffer: list[ClientUpdate] = []
    for item in items:
        try:
            update = ClientUpdate(
                device_id=str(item["device_id"]),
                task_id=str(item["task_id"]),
                base_version=int(item["base_version"]),
                subset_id=str(item["subset_id"]),
                num_samples=int(item["num_samples"]),
                update_energy=_optional_float(item["update_energy"]),
                delta={n: np.asarray(v, dtype=np.float32) for n, v in item["delta"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateLoadError(f"saved buffer entry is malformed: {exc!r}") from exc
        try:
            validate_update(update, shapes, server_version=update.base_version, max_staleness=None)
        except UpdateRejected as exc:
            raise StateLoadError(f"saved buffer entry {update.task_id} is invalid: {exc}") from exc
        if any(u.task_id == update.task_id for u in buffer):
            raise StateLoadError(f"saved buffer holds task {update.task_id} twice")
        buffer.append(update)
    return buffer


class BufferedStrategy(StrategyBase):
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
