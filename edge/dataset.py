"""A device's local dataset: an ``.npz`` with ``x`` and ``y``.

``x`` is float32 ``[n, channels, window]``, ``y`` int64 class labels ``[n]``.
The file is loaded with ``allow_pickle=False`` (an npz can carry pickled
objects, i.e. code), and shapes, dtypes and label range are checked once here
so that a bad file fails at start-up, not in the middle of a training task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedward.errors import EdgeError


class DatasetError(EdgeError, ValueError):
    """The dataset file is missing, malformed or does not fit the model."""


@dataclass(frozen=True)
class LocalDataset:
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def load_dataset(
    path: Path,
    *,
    channels: int | None = None,
    window: int | None = None,
    num_classes: int | None = None,
) -> LocalDataset:
    """Load and validate ``path``; optional arguments check it fits the model."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise DatasetError(f"{path} must contain arrays 'x' and 'y'")
            x, y = f["x"], f["y"]
    except (OSError, ValueError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    if x.dtype != np.float32 or x.ndim != 3:
        raise DatasetError(f"x must be float32 [n, C, L], got {x.dtype} {x.shape}")
    if y.dtype != np.int64 or y.ndim != 1 or len(y) != len(x) or len(y) == 0:
        raise DatasetError(f"y must be int64 [n] with n = len(x) > 0, got {y.dtype} {y.shape}")
    if not np.all(np.isfinite(x)):
        raise DatasetError("x holds non-finite values")
    if channels is not None and x.shape[1] != channels:
        raise DatasetError(f"x has {x.shape[1]} channels, the model expects {channels}")
    if window is not None and x.shape[2] != window:
        raise DatasetError(f"x windows are {x.shape[2]} long, the model expects {window}")
    if y.min() < 0 or (num_classes is not None and y.max() >= num_classes):
        raise DatasetError(f"labels must lie in [0, {num_classes})")
    return LocalDataset(x=x, y=y)


def save_dataset(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write a dataset file (used by ``fedward up`` to hand each agent its data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, x=np.asarray(x, dtype=np.float32), y=np.asarray(y, dtype=np.int64))
    tmp.replace(path)
