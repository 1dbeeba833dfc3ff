"""The shared starting model: central pre-training on a small public cohort.

On-device training methods adapt a pre-trained model; a hospital would start
from a model trained on public recordings. Here the public cohort is simulated
patients drawn with a seed disjoint from the federation's and balanced labels.
Every strategy in a benchmark starts from the same parameters, cached on disk.

Pre-training runs with a fixed intra-op thread count (``fixed_threads``), so
the warm start is the same on any machine and under any executor; the cache
key covers every input that changes it: the model, seed, cohort, recipe, the
public data generator's settings, the training step's defaults and the numeric
stack (``numerics_fingerprint``: torch, numpy, thread count).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import numpy as np

from fedward.tinytrain.models import ModelConfig, Params, build_model, get_params, parameter_groups
from fedward.tinytrain.runtime import fixed_threads, numerics_fingerprint
from fedward.tinytrain.subsets import SubsetLadder
from fedward.tinytrain.training import LocalTrainConfig, train_subset

from .atomic import write_npz
from .ownstart import own_start
from .sensordata import StudyDataConfig, cache_dir, generate_study_data

if TYPE_CHECKING:
    from .scenario import Scenario

PUBLIC_SEED_OFFSET = 1_000_003
WARMSTART_VERSION = 2  # bump when the pre-training recipe's code changes


def public_cohort(*, seed: int, patients: int) -> StudyDataConfig:
    """The public cohort's data settings: balanced labels, disjoint seed."""
    return StudyDataConfig(
        devices=patients,
        alpha=1e3,
        min_windows=30,
        max_windows=30,
        test_patients=1,
        seed=seed + PUBLIC_SEED_OFFSET,
    )


def warmstart_key(
    config: ModelConfig, *, train: LocalTrainConfig, seed: int, patients: int, epochs: int
) -> str:
    """The cache key: everything that changes the pre-trained parameters."""
    payload = {
        "model": repr(config),
        "seed": seed,
        "epochs": epochs,
        "train": repr(train),
        "public_data": public_cohort(seed=seed, patients=patients).key(),
        "numerics": numerics_fingerprint(),
        "version": WARMSTART_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


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
    train = LocalTrainConfig(epochs=1, batch_size=batch_size, lr=lr, momentum=momentum)
    key = warmstart_key(config, train=train, seed=seed, patients=patients, epochs=epochs)
    path = cache_dir() / "warmstart" / f"{key}.npz"
    if path.exists():
        with np.load(path) as f:
            return {n: f[n] for n in params}
    public = generate_study_data(public_cohort(seed=seed, patients=patients))
    x, y = np.concatenate(public.device_x), np.concatenate(public.device_y)
    full = SubsetLadder(parameter_groups(model)).full().names
    with fixed_threads():
        for epoch in range(epochs):
            delta = train_subset(model, params, full, x, y, config=train, seed=seed + epoch).delta
            params = {n: v + delta[n] for n, v in params.items()}
    write_npz(path, **params)
    return params


def scenario_start(scenario: Scenario, config: ModelConfig) -> Params:
    """The warm start every row and the live study of ``scenario`` begin from."""
    if scenario.data is not None or scenario.warm_start_file is not None:
        return own_start(scenario, config)  # the study's own data or parameters
    return pretrained_params(
        config,
        seed=scenario.seed,
        patients=scenario.pretrain_patients,
        epochs=scenario.pretrain_epochs,
        batch_size=scenario.batch_size,
        lr=scenario.lr,
        momentum=scenario.momentum,
    )
