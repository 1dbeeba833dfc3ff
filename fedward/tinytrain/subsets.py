"""Sparse parameter subsets: explicit, named, versioned, nested.

A subset is the set of parameter tensors a device trains; everything else is
frozen (no gradient, no optimizer state, never sent). Subsets are prefixes of
one *ladder*: parameter tensors ordered from the output backwards, bias before
weight within a layer (a bias is cheaper to train than its weight: no saved input
is needed for its gradient). Prefixes of one order are nested by construction,
so a device with more memory trains a superset of what a smaller one trains,
and the server can normalise each coordinate by who actually trained it.

``SubsetSpec.subset_id`` is a content hash of the ladder version and the names,
so an update that claims a subset can be checked against the task that asked
for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

LADDER_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class SubsetSpec:
    """The trainable subset of one task: ``names`` in model order."""

    names: tuple[str, ...]
    tier: int
    ladder_version: int = LADDER_VERSION

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("a subset must train at least one tensor")
        if len(set(self.names)) != len(self.names):
            raise ValueError("duplicate tensor names in subset")

    @property
    def subset_id(self) -> str:
        return subset_id(self.names, ladder_version=self.ladder_version)

    def contains(self, name: str) -> bool:
        return name in self.names

    def numel(self, shapes: Mapping[str, tuple[int, ...]]) -> int:
        total = 0
        for n in self.names:
            count = 1
            for d in shapes[n]:
                count *= d
            total += count
        return total


def subset_id(names: Iterable[str], *, ladder_version: int = LADDER_VERSION) -> str:
    digest = hashlib.sha256()
    digest.update(f"ladder-v{ladder_version}\n".encode())
    for n in sorted(names):
        digest.update(n.encode() + b"\n")
    return "s" + digest.hexdigest()[:16]


class SubsetLadder:
    """Nested tiers over a model's parameter tensors.

    ``groups`` maps layer name -> its parameter names in forward order (see
    ``fedward.tinytrain.models.parameter_groups``). Tier ``k`` trains the first ``k``
    tensors of the ladder order; the top tier is the full model.
    """

    def __init__(self, groups: Mapping[str, Sequence[str]]) -> None:
        if not groups:
            raise ValueError("a ladder needs at least one parameter group")
        self._model_order = tuple(n for names in groups.values() for n in names)
        order: list[str] = []
        for layer in reversed(list(groups)):
            names = list(groups[layer])
            biases = [n for n in names if n.endswith("bias")]
            others = [n for n in names if not n.endswith("bias")]
            order.extend(biases + others)
        self.order: tuple[str, ...] = tuple(order)

    @property
    def num_tiers(self) -> int:
        return len(self.order)

    def tier(self, k: int) -> SubsetSpec:
        if not 1 <= k <= self.num_tiers:
            raise ValueError(f"tier must be in 1..{self.num_tiers}, got {k}")
        chosen = set(self.order[:k])
        return SubsetSpec(names=tuple(n for n in self._model_order if n in chosen), tier=k)

    def full(self) -> SubsetSpec:
        return self.tier(self.num_tiers)

    def tiers(self) -> list[SubsetSpec]:
        return [self.tier(k) for k in range(1, self.num_tiers + 1)]
