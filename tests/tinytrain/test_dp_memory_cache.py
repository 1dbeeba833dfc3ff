"""DP-SGD step footprints are memoised like plain ones (in process and on disk).

A DP study's planner measures every tier at a physical batch of one; before the
cache that was about 30 s of every ``POST /v1/studies`` with a privacy policy.
The cached figure must equal a fresh measurement, a changed DP setting must
measure again, and an entry with the wrong fields must not be trusted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedward.tinytrain import dp_memory
from fedward.tinytrain.dp_memory import DPFootprint, dp_training_footprint
from fedward.tinytrain.memory import DISK_CACHE_ENV, clear_footprint_memo, footprint_cache_dir
from fedward.tinytrain.models import ModelConfig

CONFIG = ModelConfig(window=64, width=4)
HEAD = ("head.weight", "head.bias")
SETTINGS: dict[str, Any] = {"batch_size": 8, "max_physical_batch_size": 2}


class Counter:
    """``measure_dp_training_step`` wrapped: the real measurement, counted."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.real = dp_memory.measure_dp_training_step

    def __call__(self, config: ModelConfig, trainable: Any, **kwargs: Any) -> DPFootprint:
        self.calls.append(kwargs)
        return self.real(config, trainable, **kwargs)


@pytest.fixture
def counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter]:
    monkeypatch.setenv("FEDWARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(DISK_CACHE_ENV, raising=False)
    clear_footprint_memo()
    counter = Counter()
    monkeypatch.setattr(dp_memory, "measure_dp_training_step", counter)
    yield counter
    clear_footprint_memo()


def test_a_dp_figure_is_measured_once_and_then_read_back_whole(counted: Counter) -> None:
    # Prepare / Execute: measure, then as a new process would (memo gone, disk kept)
    first = dp_training_footprint(CONFIG, HEAD, **SETTINGS)
    again = dp_training_footprint(CONFIG, HEAD, **SETTINGS)
    clear_footprint_memo()
    from_disk = dp_training_footprint(CONFIG, HEAD, **SETTINGS)
    # Assert: one measurement; the disk entry gives back every field, per-sample
    # gradients included, and equals a fresh measurement
    fresh = counted.real(CONFIG, HEAD, **SETTINGS)
    assert len(counted.calls) == 1
    assert again == first and from_disk == first
    assert isinstance(from_disk, DPFootprint) and from_disk.per_sample_grads > 0
    assert from_disk == fresh


@pytest.mark.parametrize(
    "change", [{"max_physical_batch_size": 1}, {"noise_multiplier": 2.0}, {"max_grad_norm": 0.5}]
)
def test_a_changed_dp_setting_measures_again(counted: Counter, change: dict[str, Any]) -> None:
    # Prepare
    dp_training_footprint(CONFIG, HEAD, **SETTINGS)
    # Execute
    dp_training_footprint(CONFIG, HEAD, **{**SETTINGS, **change})
    # Assert
    assert len(counted.calls) == 2 and counted.calls[1] | change == counted.calls[1]


def test_an_entry_without_the_per_sample_field_is_not_trusted(counted: Counter) -> None:
    # Prepare: a stored DP entry with its per-sample figure removed
    dp_training_footprint(CONFIG, HEAD, **SETTINGS)
    (entry,) = sorted(footprint_cache_dir().glob("*.json"))
    body = json.loads(entry.read_text())
    del body["footprint"]["per_sample_grads"]
    entry.write_text(json.dumps(body))
    clear_footprint_memo()
    # Execute
    figure = dp_training_footprint(CONFIG, HEAD, **SETTINGS)
    # Assert: measured again, a whole figure
    assert len(counted.calls) == 2 and figure.per_sample_grads > 0
