"""Which model coordinates a cohort masks, and in what order: one layout for both sides.

Every member of a cohort masks the SAME index set (a sparse update masked
over a device's own coordinates would leak which coordinates it trained, and
would not sum). The coordinator names the set when it fixes the cohort (the
trained tensors of the cohort's subset); devices and coordinator both build
this layout from the model's tensor shapes and those names, so the vector a
device masks and the vector the coordinator unmasks line up coordinate for
coordinate, and the index-set digest bound into every key is the same.

The model is flattened in sorted tensor-name order (row-major inside a
tensor); the masked vector holds the subset's tensors in the same order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .config import digest_index_set
from .errors import ConfigError, ProtocolViolation

__all__ = ["VectorLayout"]


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


@dataclass(frozen=True)
class VectorLayout:
    """The masked vector of one cohort: ``names`` (sorted), their shapes and model offsets."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]  # where each tensor starts in the flattened model
    model_size: int

    @classmethod
    def for_subset(
        cls, model_shapes: Mapping[str, tuple[int, ...]], names: Iterable[str]
    ) -> VectorLayout:
        chosen = sorted(set(names))
        if not chosen:
            raise ConfigError("a cohort must mask at least one tensor")
        unknown = [n for n in chosen if n not in model_shapes]
        if unknown:
            raise ConfigError(f"tensors not in the model: {unknown[:5]}")
        start: dict[str, int] = {}
        total = 0
        for name in sorted(model_shapes):
            start[name] = total
            total += _size(tuple(model_shapes[name]))
        return cls(
            names=tuple(chosen),
            shapes=tuple(tuple(int(s) for s in model_shapes[n]) for n in chosen),
            offsets=tuple(start[n] for n in chosen),
            model_size=total,
        )

    @cached_property
    def vector_length(self) -> int:
        return sum(_size(s) for s in self.shapes)

    def index_set(self) -> np.ndarray:
        """The model coordinates of the vector, in vector order (ascending)."""
        parts = [
            np.arange(off, off + _size(shape), dtype=np.int64)
            for off, shape in zip(self.offsets, self.shapes, strict=True)
        ]
        return np.concatenate(parts)

    @cached_property
    def digest(self) -> bytes:
        """``digest_index_set`` of this layout's coordinates (mandatory in every session)."""
        return digest_index_set(self.index_set().tolist(), model_size=self.model_size)

    def flatten(self, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        """One float64 vector of exactly these tensors; anything else is a ProtocolViolation."""
        if set(tensors) != set(self.names):
            raise ProtocolViolation(
                f"update tensors {sorted(tensors)[:5]} differ from the cohort's {list(self.names)[:5]}"
            )
        parts = []
        for name, shape in zip(self.names, self.shapes, strict=True):
            arr = np.asarray(tensors[name])
            if tuple(arr.shape) != shape:
                raise ProtocolViolation(f"tensor {name} has shape {arr.shape}, expected {shape}")
            parts.append(arr.astype(np.float64, copy=False).ravel())
        return np.concatenate(parts)

    def unflatten(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """The float32 tensors of a vector of ``vector_length`` values."""
        vec = np.asarray(vector)
        if vec.ndim != 1 or vec.size != self.vector_length:
            raise ProtocolViolation(f"vector of {vec.size} values, expected {self.vector_length}")
        out: dict[str, np.ndarray] = {}
        at = 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            size = _size(shape)
            out[name] = vec[at : at + size].astype(np.float32).reshape(shape)
            at += size
        return out
