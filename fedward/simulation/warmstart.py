"""The shared starting model: central pre-training on a small public cohort.

On-device training methods adapt a pre-trained model; a hospital would start
from a model trained on public recordings. Here the public cohort is simulated
patients drawn with a seed disjoint from the federation's and balanced labels.
Every strategy in a benchmark starts from the same parameters, cached on disk.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import numpy as np

from fedward.tinytrain.models import ModelConfig, Params, build_model, get_params, parameter_groups
from fedward.tinytrain.subsets import SubsetLadder
from fedward.tinytrain.training import LocalTrainConfig, train_subset

from .sensordata import StudyDataConfig, cache_dir, generate_study_data

if TYPE_CHECKING:
    from .scenario import Scenario

PUBLIC_SEED_OFFSET = 1_000_003


def pretrained_params(
    config: ModelConfig,
    *,
    seed: int,
    patients: int,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
) -> Params:
    model = build_model(config, seed=seed)
    params = get_params(model)
    if patients == 0:
        return params
    key = hashlib.sha256(
        json.dumps([repr(config), seed, patients, epochs, batch_size, lr, momentum, 1]).encode()
    ).hexdigest()[:16]
    path = cache_dir() / "warmstart" / f"{key}.npz"
    if path.exists():
        with np.load(path) as f:
            return {n: f[n] for n in params}
    public = generate_study_data(
        StudyDataConfig(
            devices=patients,
            alpha=1e3,
            min_windows=30,
            max_windows=30,
            test_patients=1,
            seed=seed + PUBLIC_SEED_OFFSET,
        )
    )
    x, y = np.concatenate(public.device_x), np.concatenate(public.device_y)
    full = SubsetLadder(parameter_groups(model)).full().names
    train = LocalTrainConfig(epochs=1, batch_size=batch_size, lr=lr, momentum=momentum)
    for epoch in range(epochs):
        delta = train_subset(model, params, full, x, y, config=train, seed=seed + epoch).delta
        params = {n: v + delta[n] for n, v in params.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, allow_pickle=False, **params)
    tmp.replace(path)
    return params


def scenario_start(scenario: Scenario, config: ModelConfig) -> Params:
    """The warm start every row and the live study of ``scenario`` begin from."""
    return pretrained_params(
        config,
        seed=scenario.seed,
        patients=scenario.pretrain_patients,
        epochs=scenario.pretrain_epochs,
        batch_size=scenario.batch_size,
        lr=scenario.lr,
        momentum=scenario.momentum,
    )
