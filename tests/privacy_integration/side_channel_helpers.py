"""The side-channel attack of issue 9: what an update's header tells about its patient.

A fleet of patients, half of them with mostly atrial-fibrillation windows
(AF-dominant), half mostly other rhythms, each trains one real DP-SGD task
(Opacus, the study's mechanism: sigma 1.5, q 0.25, 8 steps) from a shared
warm-started model, as ``fedward.edge.budget.run_dp_task`` does on a device.
The attacker is the coordinator: per update it sees every field of the
``Update`` header (everything but the tensors), and it trains a classifier on
those fields to tell AF-dominant patients from the rest. Accuracy is the
cross-validated AUC over devices the classifier never saw.

Two builds of the header from the same training runs:

- ``fedward.edge.updates.update_header``: what a device sends today;
- :func:`leaky_header_fields`: the build before issue 9, which still sent
  the plain ``train_loss`` and the exact ``num_samples`` beside the privacy
  report; kept as a fixture so the test shows the leak it closes.

Small and fast on purpose: windows downsampled to 50 samples, a width-4 CNN,
its last block and head trained. Randomness comes from seeds, so the figures
are the same on every run. ``energy_of_tensors`` is what the coordinator can
still compute from the noised tensors themselves (see the test module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedward.edge.budget import DeviceBudget, run_dp_task
from fedward.edge.updates import update_header
from fedward.privacy.accounting import EpsilonCalculator
from fedward.privacy.budget import BudgetPolicy
from fedward.protocol.messages import DpParams, Task, Update
from fedward.simulation.sensordata import _patient_windows
from fedward.tinytrain.models import ModelConfig, build_model, get_params
from fedward.tinytrain.training import LocalTrainConfig, train_subset

DOWNSAMPLE = 10  # 500-sample windows -> 50
SUBSET_TENSORS = 4  # the last conv block and the head: what a small device trains
AF_DOMINANT = np.array([0.1, 0.1, 0.1, 0.7])  # Rhythm order: normal, brady, tachy, AF
OTHER = np.array([0.45, 0.2, 0.25, 0.1])
DP = DpParams(noise_multiplier=1.5, max_grad_norm=1.0, sample_rate=0.25, delta=1e-5, max_steps=8)


@dataclass(frozen=True)
class Observed:
    """What the coordinator saw of each update, and the truth it tries to recover."""

    headers: list[Update]
    leaky: list[dict[str, Any]]
    af_dominant: np.ndarray
    energy_of_tensors: np.ndarray


def _patient(rng: np.random.Generator, *, af: bool) -> tuple[np.ndarray, np.ndarray]:
    count = int(rng.integers(16, 33))
    x, y = _patient_windows(rng, count, AF_DOMINANT if af else OTHER)
    return np.ascontiguousarray(x[:, :, ::DOWNSAMPLE]), y


def run_fleet(*, devices: int, seed: int = 0) -> Observed:
    """One DP task per patient; returns the headers the coordinator received."""
    rng = np.random.default_rng(seed)
    public = [_patient(rng, af=i % 2 == 0) for i in range(8)]
    fleet = [(_patient(rng, af=i % 2 == 0), i % 2 == 0) for i in range(devices)]
    model = build_model(ModelConfig(width=4, window=50), seed=seed)
    base = get_params(model)
    names = tuple(base)
    warm = train_subset(  # a warm start on public patients, as the studies use
        model,
        base,
        names,
        np.concatenate([x for x, _ in public]),
        np.concatenate([y for _, y in public]),
        config=LocalTrainConfig(epochs=5, batch_size=16, lr=0.05),
        seed=seed,
    )
    base = {n: base[n] + warm.delta[n] for n in names}
    policy = BudgetPolicy(epsilon=8.0, delta=DP.delta)
    calculator = EpsilonCalculator()
    headers, leaky, labels, energies = [], [], [], []
    for i, ((x, y), af) in enumerate(fleet):
        task = Task(
            task_id=f"t-{i:04d}",
            study_id="side-channel",
            device_id=f"dev-{i:04d}",
            model_version=0,
            subset_id="last-block",
            subset_names=names[-SUBSET_TENSORS:],
            local_epochs=1,
            batch_size=8,
            lr=0.05,
            deadline_s=60.0,
            dp=DP,
        )
        budget = DeviceBudget(policy, calculator=calculator)
        outcome, report = run_dp_task(
            budget, task, model, base, x, y, momentum=0.9, max_physical_batch_size=8, seed=i
        )
        header = update_header(
            outcome,
            device_id=task.device_id,
            subset_id="last-block",
            base_version=0,
            privacy=report,
        )
        headers.append(header)
        leaky.append(leaky_header_fields(header, train_loss=outcome.mean_loss, count=len(y)))
        labels.append(af)
        energies.append(outcome.update_energy)
    return Observed(
        headers=headers,
        leaky=leaky,
        af_dominant=np.array(labels),
        energy_of_tensors=np.array(energies),
    )


def leaky_header_fields(header: Update, *, train_loss: float, count: int) -> dict[str, Any]:
    """The header fields of the build before issue 9: loss and exact count in the clear."""
    return {**header.model_dump(), "train_loss": float(train_loss), "num_samples": int(count)}


def numeric_side_fields(fields: dict[str, Any]) -> dict[str, float]:
    """Every number in a header (nested privacy report included), flattened by path.

    Identifiers (task, device, subset ids) are excluded: they are assigned by
    the coordinator, not derived from the device's data.
    """
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}{key}.", inner)
        elif isinstance(value, bool):
            out[prefix.rstrip(".")] = float(value)
        elif isinstance(value, int | float):
            out[prefix.rstrip(".")] = float(value)

    walk("", fields)
    return out


def feature_matrix(rows: list[dict[str, Any]]) -> tuple[np.ndarray, list[str]]:
    """Side fields as a matrix, one row per update; a field absent from a row is 0."""
    flat = [numeric_side_fields(r) for r in rows]
    names = sorted({k for f in flat for k in f})
    return np.array([[f.get(n, 0.0) for n in names] for f in flat]), names


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def _fit_logistic(x: np.ndarray, y: np.ndarray, *, steps: int = 2000) -> np.ndarray:
    w = np.zeros(x.shape[1] + 1)
    xb = np.hstack([x, np.ones((len(x), 1))])
    for _ in range(steps):  # plain gradient descent with a small L2 penalty: few features
        p = 1 / (1 + np.exp(-xb @ w))
        w -= 0.5 * (xb.T @ (p - y) / len(y) + 1e-3 * np.r_[w[:-1], 0.0])
    return w


def held_out_auc(features: np.ndarray, labels: np.ndarray, *, folds: int = 5) -> float:
    """AUC of a logistic classifier on the side fields, over devices it never saw.

    Each fold is scored by a model fitted on the other folds (standardised with
    the training folds' statistics; a field constant there carries nothing).
    """
    order = np.arange(len(labels))
    scores = np.zeros(len(labels))
    for k in range(folds):
        test = order % folds == k
        train = ~test
        mean, std = features[train].mean(0), features[train].std(0)
        keep = std > 0
        if not keep.any():
            scores[test] = 0.0
            continue
        z_train = (features[train][:, keep] - mean[keep]) / std[keep]
        z_test = (features[test][:, keep] - mean[keep]) / std[keep]
        w = _fit_logistic(z_train, labels[train].astype(float))
        scores[test] = np.hstack([z_test, np.ones((int(test.sum()), 1))]) @ w
    return auc(scores, labels)
