"""The starting model of a study on its own data: none, a cohort of its patients, or a file.

- ``warm_start_file``: parameters saved as an ``.npz`` (one array per
  parameter name, e.g. from an earlier run's ``final-model.npz``), checked
  against the study's model;
- ``pretrain_patients > 0``: the full model trained centrally on that many of
  the file's patients, held out of the federation and the evaluation (the
  "small public cohort" of the synthetic task, taken from the researcher's data);
- otherwise the seeded initial model (training from scratch).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedward.tinytrain.models import ModelConfig, Params, build_model, get_params, parameter_groups
from fedward.tinytrain.subsets import SubsetLadder
from fedward.tinytrain.training import LocalTrainConfig, train_subset

from .atomic import write_npz
from .datafile import DataFileError, FileDataConfig, content_hash, load_file_data
from .sensordata import cache_dir

if TYPE_CHECKING:
    from .scenario import Scenario


def load_params_file(path: Path, config: ModelConfig, *, seed: int) -> Params:
    """Parameters from ``path``, refused unless they match the study's model exactly."""
    expected = get_params(build_model(config, seed=seed))
    try:
        with np.load(path, allow_pickle=False) as f:
            given = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataFileError(f"{path}: cannot read the warm-start parameters ({exc})") from None
    missing, unknown = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    if missing or unknown:
        raise DataFileError(
            f"{path}: the warm start does not fit the study's model (missing {missing}, "
            f"unknown {unknown}); it must come from a model with the same kind, layer sizes "
            "and data shape"
        )
    for name, value in expected.items():
        if given[name].shape != value.shape:
            raise DataFileError(
                f"{path}: {name} has shape {given[name].shape}, the model {value.shape}"
            )
    return {n: given[n].astype(np.float32) for n in expected}


def own_start(scenario: Scenario, config: ModelConfig) -> Params:
    if scenario.warm_start_file is not None:
        return load_params_file(scenario.warm_start_file, config, seed=scenario.seed)
    model = build_model(config, seed=scenario.seed)
    params = get_params(model)
    data = scenario.data_config()
    if scenario.pretrain_patients == 0 or not isinstance(data, FileDataConfig):
        return params
    key = hashlib.sha256(
        json.dumps(
            [
                repr(config),
                repr(data),
                content_hash(data.path),
                scenario.pretrain_epochs,
                scenario.batch_size,
                scenario.lr,
                scenario.momentum,
                1,
            ]
        ).encode()
    ).hexdigest()[:16]
    path = cache_dir() / "warmstart" / f"own-{key}.npz"
    if path.exists():
        with np.load(path) as f:
            return {n: f[n] for n in params}
    loaded = load_file_data(data)
    if len(loaded.pretrain_y) == 0:  # no patient ids to hold out (a Dirichlet partition)
        return params
    full = SubsetLadder(parameter_groups(model)).full().names
    train = LocalTrainConfig(
        epochs=1, batch_size=scenario.batch_size, lr=scenario.lr, momentum=scenario.momentum
    )
    for epoch in range(scenario.pretrain_epochs):
        delta = train_subset(
            model,
            params,
            full,
            loaded.pretrain_x,
            loaded.pretrain_y,
            config=train,
            seed=scenario.seed + epoch,
        ).delta
        params = {n: v + delta[n] for n, v in params.items()}
    write_npz(path, **params)
    return params
