"""Measured training memory of one local step, transient buffers included.

The footprint is measured on a real step (``fedward.tinytrain.training.sgd_step``,
the step training runs), not computed from a formula:

- ``params``: every parameter the device holds for the forward pass (fp32);
- ``grads``: gradients that exist after backward (trained tensors only);
- ``optimizer``: optimizer state (SGD momentum buffers), resident across steps;
- ``saved``: tensors autograd saved for backward (the largest micro-batch's),
  captured with ``torch.autograd.graph.saved_tensors_hooks`` and de-duplicated
  by storage (parameters that autograd saves are already counted in ``params``);
- ``transient``: what the step's working set needs beyond those (the frozen
  prefix's forward buffers, gathered windows, activation gradients, kernels'
  scratch), from an allocation-level tracker.

The tracker is ``torch.profiler``'s CPU memory trace: every allocation and
free of the CPU allocator during the step, in time order; ``profiler_peak`` is
its peak above what existed when the step began. The step runs once to create
the momentum buffers, then is measured: ``peak = params + optimizer +
profiler_peak`` is the most memory the step ever held, and ``total`` is that
peak (never below the tensor-level account ``params + grads + optimizer +
saved``). A subset "fits" a device class only if ``total`` is within its
budget. The window data itself is not counted (a device reads it from storage
a micro-batch at a time); every gathered batch is.

A measurement runs a real step under the profiler (seconds in a fresh
process), so ``training_footprint`` memoises it: in this process, and on disk
under ``$FEDWARD_CACHE/memory`` (default ``~/.cache/fedward/memory``), one
JSON file per key. The key is everything that can change the figure (model
config, trained names, batch and micro-batch sizes, momentum, seed, default
dtype, torch version and CPU capability, thread count, and a hash of the
measuring code); each file stores the key's full content beside the figure
and a load that does not find exactly its own key, or cannot parse the file,
is ignored (with a warning) and re-measured, never trusted.
``FEDWARD_MEMORY_CACHE=off`` turns the disk cache off (the in-process memo
stays).
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.autograd.profiler_util import FunctionEvent

from . import models, training
from .models import ModelConfig, build_model
from .profiler_quiet import quiet_profiler_markers
from .training import sgd_step, split_for_training

logger = logging.getLogger(__name__)

PREFIX_MICRO_BATCH = 1  # LocalTrainConfig's default: the frozen prefix streams one window at a time


@dataclass(frozen=True)
class Footprint:
    params: int
    grads: int
    optimizer: int
    saved: int
    profiler_peak: int
    transient: int = 0

    @property
    def resident(self) -> int:
        """The tensor-level account: what stays allocated through the backward pass."""
        return self.params + self.grads + self.optimizer + self.saved

    @property
    def total(self) -> int:
        """The step's measured peak: resident tensors plus transient buffers."""
        return self.resident + self.transient

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "resident": self.resident, "total": self.total}


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _profiler_peak(events: Iterable[FunctionEvent]) -> int:
    """Peak of the allocator's live bytes over the trace, above its start.

    Allocations are attributed to the op that made them (its self memory),
    frees to ``[memory]`` events; replayed in time order they are the
    allocator's timeline.
    """
    timeline = sorted(
        (e.time_range.start, e.self_cpu_memory_usage)
        for e in events
        if e.self_cpu_memory_usage != 0
    )
    current = peak = 0
    for _, delta in timeline:
        current += delta
        peak = max(peak, current)
    return peak


def transient_bytes(*, accounted: int, held_before: int, profiler_peak: int) -> int:
    """How far the allocation-level peak rises above the tensor-level account."""
    return max(0, held_before + profiler_peak - accounted)


def measure_training_step(
    config: ModelConfig,
    trainable: Sequence[str],
    *,
    batch_size: int,
    micro_batch: int | None = None,
    momentum: float = 0.9,
    prefix_micro_batch: int = PREFIX_MICRO_BATCH,
    seed: int = 0,
) -> Footprint:
    """Run a real SGD step on random inputs and measure what it holds at its peak.

    ``micro_batch`` accumulates gradients over micro-batches (what a careful
    user of a small device does); None runs the batch at once.
    """
    model = build_model(config, seed=seed)
    split = split_for_training(model, trainable)
    param_keys = {_storage_key(p) for p in model.parameters()}
    params_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, config.in_channels, config.window, generator=generator)
    y = torch.randint(0, config.num_classes, (batch_size,), generator=generator)
    idx = torch.arange(batch_size)
    trained = [p for p in split.suffix.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=0.01, momentum=momentum)

    def step() -> None:
        sgd_step(
            split,
            optimizer,
            x,
            y,
            idx,
            micro_batch=micro_batch,
            prefix_micro_batch=prefix_micro_batch,
        )

    step()  # creates the momentum buffers
    optimizer.zero_grad(set_to_none=True)
    state = sum(
        v.numel() * v.element_size()
        for s in optimizer.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )
    saved: dict[tuple[int, int], int] = {}
    largest_saved = 0
    in_backward = False

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal in_backward
        if in_backward:  # the next micro-batch's forward: the last one's tensors are freed
            saved.clear()
            in_backward = False
        key = _storage_key(t)
        if key not in param_keys:
            saved[key] = t.untyped_storage().nbytes()
        return t

    def unpack(t: torch.Tensor) -> torch.Tensor:
        nonlocal in_backward, largest_saved  # a backward: this micro-batch's set is complete
        largest_saved = max(largest_saved, sum(saved.values()))
        in_backward = True
        return t

    with (
        quiet_profiler_markers(),
        torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        ) as prof,
        torch.autograd.graph.saved_tensors_hooks(pack, unpack),
    ):
        step()
    grads = sum(
        p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None
    )
    peak = _profiler_peak(prof.events())
    saved_bytes = max(largest_saved, sum(saved.values()))
    accounted = params_bytes + grads + state + saved_bytes
    return Footprint(
        params=params_bytes,
        grads=grads,
        optimizer=state,
        saved=saved_bytes,
        profiler_peak=peak,
        transient=transient_bytes(
            accounted=accounted, held_before=params_bytes + state, profiler_peak=peak
        ),
    )


CACHE_SCHEMA = 1
"""Bump when the meaning of a stored figure changes in a way the key does not show."""

DISK_CACHE_ENV = "FEDWARD_MEMORY_CACHE"


class DiskCache(enum.StrEnum):
    ON = "on"
    OFF = "off"


_memo: dict[str, Footprint] = {}
F = TypeVar("F", bound=Footprint)


def disk_cache_setting() -> DiskCache:
    """``$FEDWARD_MEMORY_CACHE`` (``on``, the default, or ``off``)."""
    raw = os.environ.get(DISK_CACHE_ENV, DiskCache.ON.value).strip().lower()
    try:
        return DiskCache(raw)
    except ValueError:
        raise ValueError(
            f"{DISK_CACHE_ENV}={raw!r} is not a setting: set it to 'on' or 'off' (or unset it)"
        ) from None


def footprint_cache_dir() -> Path:
    """Where measured footprints are kept: ``$FEDWARD_CACHE/memory`` (fedward's cache dir)."""
    root = Path(os.environ.get("FEDWARD_CACHE", Path.home() / ".cache" / "fedward"))
    return root / "memory"


@lru_cache(maxsize=1)
def _code_digest() -> str:
    """A hash of the code a measurement runs: a changed step or model re-measures."""
    digest = hashlib.sha256()
    for module in (sys.modules[__name__], training, models):
        source = module.__file__
        if source is None:  # pragma: no cover - frozen modules have no file
            # no code to key on: a key no saved entry can match, so nothing stale is
            # read back (every measurement is fresh, and its file is never reused)
            return f"unkeyable-{os.getpid()}-{os.urandom(8).hex()}"
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()


def footprint_key(
    config: ModelConfig,
    trainable: Sequence[str],
    *,
    batch_size: int,
    micro_batch: int | None = None,
    momentum: float = 0.9,
    prefix_micro_batch: int = PREFIX_MICRO_BATCH,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything that can change ``measure_training_step``'s figure, as JSON-able values."""
    return {
        "schema": CACHE_SCHEMA,
        "model": {
            "kind": config.kind.value,
            "in_channels": config.in_channels,
            "window": config.window,
            "num_classes": config.num_classes,
            "width": config.width,
            "hidden": list(config.hidden),
        },
        "trainable": list(trainable),
        "batch_size": batch_size,
        "micro_batch": micro_batch,
        "momentum": momentum,
        "prefix_micro_batch": prefix_micro_batch,
        "seed": seed,
        "dtype": str(torch.get_default_dtype()),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "code": _code_digest(),
    }


def _canonical(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def _entry_path(canonical: str) -> Path:
    name = hashlib.sha256(canonical.encode()).hexdigest()[:32]
    return footprint_cache_dir() / f"footprint-{name}.json"


def _load(path: Path, key: dict[str, Any], kind: type[F]) -> F | None:
    """The stored figure if ``path`` holds exactly ``key`` and ``kind``'s fields; None
    (and a warning) otherwise."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("memory cache %s unreadable (%s): measuring again", path, exc)
        return None
    try:
        entry = json.loads(raw.decode("utf-8"))  # UnicodeDecodeError is a ValueError too
        if not isinstance(entry, dict) or set(entry) != {"key", "footprint"}:
            raise ValueError("not a {key, footprint} entry")
        if entry["key"] != key:
            raise ValueError("its stored key is not this measurement's key")
        stored = entry["footprint"]
        names = {f.name for f in fields(kind)}
        if not isinstance(stored, dict) or set(stored) != names:
            raise ValueError(f"footprint fields are not {sorted(names)}")
        if any(type(v) is not int or v < 0 for v in stored.values()):
            raise ValueError("footprint figures are not non-negative integers")
        return kind(**stored)
    except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        logger.warning("memory cache %s ignored (%s): measuring again and replacing it", path, exc)
        return None


def _store(path: Path, key: dict[str, Any], footprint: Footprint) -> None:
    """Write the entry whole or not at all (a temporary file of this process, renamed)."""
    body = json.dumps({"key": key, "footprint": asdict(footprint)}, sort_keys=True, indent=1)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # a read-only cache costs a re-measurement, not the study
        logger.warning("memory cache %s not written (%s)", path, exc)
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def training_footprint(
    config: ModelConfig,
    trainable: Sequence[str],
    *,
    batch_size: int,
    micro_batch: int | None = None,
    momentum: float = 0.9,
    prefix_micro_batch: int = PREFIX_MICRO_BATCH,
    seed: int = 0,
) -> Footprint:
    """``measure_training_step``'s figure, measured once per key (this process, then disk).

    The figure is the same as a fresh measurement's: the key holds everything it
    depends on, and a cache entry is trusted only if it stores exactly that key.
    """
    key = footprint_key(
        config,
        trainable,
        batch_size=batch_size,
        micro_batch=micro_batch,
        momentum=momentum,
        prefix_micro_batch=prefix_micro_batch,
        seed=seed,
    )
    return cached_footprint(
        key,
        Footprint,
        lambda: measure_training_step(
            config,
            trainable,
            batch_size=batch_size,
            micro_batch=micro_batch,
            momentum=momentum,
            prefix_micro_batch=prefix_micro_batch,
            seed=seed,
        ),
    )


def cached_footprint(key: dict[str, Any], kind: type[F], measure: Callable[[], F]) -> F:
    """``measure()``'s figure for ``key``: from this process's memo, else from the disk
    cache if an entry holds exactly ``key`` and ``kind``'s fields, else measured (and
    stored). ``key`` must hold everything the figure depends on (``footprint_key``)."""
    canonical = _canonical(key)
    found = _memo.get(canonical)
    if isinstance(found, kind):
        return found
    use_disk = disk_cache_setting() is DiskCache.ON
    path = _entry_path(canonical)
    loaded = _load(path, key, kind) if use_disk else None
    if loaded is None:
        loaded = measure()
        if use_disk:
            _store(path, key, loaded)
    _memo[canonical] = loaded
    return loaded


def clear_footprint_memo() -> None:
    """Forget this process's memoised footprints (the disk cache is left alone)."""
    _memo.clear()


__all__ = [
    "DISK_CACHE_ENV",
    "PREFIX_MICRO_BATCH",
    "DiskCache",
    "Footprint",
    "cached_footprint",
    "clear_footprint_memo",
    "disk_cache_setting",
    "footprint_cache_dir",
    "footprint_key",
    "measure_training_step",
    "training_footprint",
    "transient_bytes",
]
