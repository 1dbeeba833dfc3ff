"""A small fill for the edge SecAgg tests: real SecAggServer, participants on real file stores."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedward.edge.secagg import SecAggParticipant
from fedward.edge.secagg_store import SecAggStore
from fedward.privacy.secagg import SecAggConfig, SecAggServer, SecAggSession
from fedward.privacy.secagg.layout import VectorLayout
from fedward.protocol.messages import SecAggParams, SecAggWeighting

SHAPES = {"a.weight": (4, 3), "b.bias": (5,), "c.weight": (2, 2)}
SUBSET = ("a.weight", "b.bias")


def make_params(
    cohort: tuple[str, ...],
    *,
    threshold: int,
    max_colluders: int = 1,
    min_cohort: int = 3,
    session_id: bytes | None = None,
    energy_bins: tuple[float, ...] = (),
    weighting: SecAggWeighting | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    subset: tuple[str, ...] = SUBSET,
    modulus_bits: int = 32,
    sum_bound: int | None = None,
) -> SecAggParams:
    layout = VectorLayout.for_subset(shapes or SHAPES, subset)
    config = SecAggConfig(
        threshold=threshold,
        scale=2.0**16,
        clip=4.0,
        count_words=len(energy_bins) + 1 if energy_bins else 1,
        max_colluders=max_colluders,
        min_cohort=min_cohort,
        modulus_bits=modulus_bits,
        sum_bound=sum_bound,
    )
    session = SecAggSession(
        session_id=session_id if session_id is not None else os.urandom(32),
        round_index=3,
        cohort=cohort,
        vector_length=layout.vector_length,
        index_set_digest=layout.digest,
    )
    return SecAggParams(
        fill_id="fill-1",
        config=config.to_plain(),
        session=session.to_plain(),
        phase_timeout_s=30.0,
        weighting=weighting
        or SecAggWeighting(
            energy_reference=None, energy_tolerance=10.0, energy_beta=1.0, norm_bound=None
        ),
        energy_bins=energy_bins,
    )


@dataclass
class Fill:
    params: SecAggParams
    root: Path
    server: SecAggServer
    stores: dict[str, SecAggStore] = field(default_factory=dict)
    members: dict[str, SecAggParticipant] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=lambda: dict(SHAPES))
    subset: tuple[str, ...] = SUBSET

    @property
    def cohort(self) -> tuple[str, ...]:
        return self.server.session.cohort

    def participant(self, device: str) -> SecAggParticipant:
        return SecAggParticipant(
            params=self.params,
            task_id=f"task-{device}",
            device_id=device,
            subset_names=self.subset,
            model_shapes=self.shapes,
            store=self.stores[device],
        )

    def reopen(self, device: str) -> SecAggParticipant:
        """The device after a restart: its store from disk, its participant restored."""
        self.stores[device] = SecAggStore(self.root / device, device_id=device)
        restored = SecAggParticipant.restore(
            self.stores[device], self.server.session.session_id, model_shapes=self.shapes
        )
        self.members[device] = restored
        return restored


def make_fill(
    root: Path,
    *,
    n: int = 5,
    threshold: int = 4,
    shapes: dict[str, tuple[int, ...]] | None = None,
    subset: tuple[str, ...] = SUBSET,
    **kw,
) -> Fill:
    cohort = tuple(f"dev-{i}" for i in range(n))
    shapes = dict(shapes or SHAPES)
    params = make_params(cohort, threshold=threshold, shapes=shapes, subset=subset, **kw)
    server = SecAggServer(
        config=SecAggConfig.from_plain(params.config),
        session=SecAggSession.from_plain(params.session),
    )
    fill = Fill(params=params, root=root, server=server, shapes=shapes, subset=subset)
    for dev in cohort:
        fill.stores[dev] = SecAggStore(root / dev, device_id=dev)
        fill.members[dev] = fill.participant(dev)
    return fill


def deltas(seed: int, devices: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)  # test data only, never masks
    return {
        d: {n: rng.uniform(-0.5, 0.5, SHAPES[n]).astype(np.float32) for n in SUBSET}
        for d in devices
    }


def run_to_masked(fill: Fill, updates: dict[str, dict[str, np.ndarray]], *, energy: float = 0.1):
    """Advertise, share, deliver and mask for every member; returns the unmask request."""
    for p in fill.members.values():
        fill.server.receive_advertisement(p.advertise())
    roster = fill.server.close_advertisements()
    for p in fill.members.values():
        fill.server.receive_share_bundle(p.on_roster(roster))
    deliveries = fill.server.close_shares()
    for dev, p in fill.members.items():
        assert p.on_delivery(deliveries[dev]) is None  # not trained yet
        fill.server.receive_masked_input(p.mask(updates[dev], energy=energy))
    return fill.server.close_masked_inputs()
