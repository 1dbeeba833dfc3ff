"""Turn a local outcome into the update frame that leaves the device."""

from __future__ import annotations

from fedward.protocol.messages import Accountant, PrivacyReport, Update, encode_frame

from .local import LocalOutcome


def update_header(
    outcome: LocalOutcome,
    *,
    device_id: str,
    subset_id: str,
    base_version: int,
    privacy: PrivacyReport | None = None,
) -> Update:
    return Update(
        task_id=outcome.task_id,
        device_id=device_id,
        base_model_version=base_version,
        subset_id=subset_id,
        num_samples=outcome.num_samples,
        update_energy=outcome.update_energy,
        train_loss=float(outcome.mean_loss),
        privacy=privacy,
    )


def privacy_report(
    outcome: LocalOutcome, *, accountant: Accountant, epsilon: float, delta: float
) -> PrivacyReport:
    if outcome.dp is None:
        raise ValueError("this outcome was not trained with DP")
    return PrivacyReport(
        noise_multiplier=outcome.dp.noise_multiplier,
        sample_rate=outcome.dp.sample_rate,
        steps=outcome.dp.steps,
        max_grad_norm=outcome.dp.max_grad_norm,
        accountant=accountant,
        claimed_epsilon=epsilon,
        delta=delta,
    )


def encode_update(header: Update, outcome: LocalOutcome, *, max_bytes: int) -> bytes:
    """The bytes on the wire: header plus the delta of the trained tensors only."""
    return encode_frame(header, outcome.delta, max_bytes=max_bytes)
