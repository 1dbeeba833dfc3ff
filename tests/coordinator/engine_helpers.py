"""Helpers the engine tests share (imported as ``tests.coordinator.engine_helpers``)."""

from __future__ import annotations

import numpy as np

from fedward.coordinator.engine import Engine, TaskOrder
from fedward.coordinator.strategies import ClientUpdate


def update_for(engine: Engine, order: TaskOrder) -> ClientUpdate:
    """A small, valid update answering ``order`` (every trained tensor at 0.01)."""
    return ClientUpdate(
        device_id=order.device_id,
        task_id=order.task_id,
        base_version=order.model_version,
        subset_id=order.subset.subset_id,
        delta={n: np.full(engine.params[n].shape, 0.01, np.float32) for n in order.subset.names},
        num_samples=4,
    )
