"""One update frame as a device (honest or not) would send it, for the ingest tests."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedward.protocol.messages import Task, Update, encode_frame, update_energy


def update_frame(
    task: Task,
    tensors: Mapping[str, np.ndarray],
    *,
    num_samples: int | None = 16,
    train_loss: float | None = 0.5,
    energy: float | None = None,
    scales: dict[str, float] | None = None,
) -> bytes:
    """The frame answering ``task`` with ``tensors``; the energy is measured unless given."""
    header = Update(
        task_id=task.task_id,
        device_id=task.device_id,
        base_model_version=task.model_version,
        subset_id=task.subset_id,
        num_samples=num_samples,
        update_energy=update_energy(tensors) if energy is None else energy,
        train_loss=train_loss,
        scales=scales,
    )
    return encode_frame(header, tensors)
