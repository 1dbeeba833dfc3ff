"""Issue 14 item 9: memory measurements are memoised (in process and on disk) and a
FULL planner measures only the tier it can choose; a stale or corrupt cache entry is
ignored and re-measured, never trusted."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from fedward.coordinator.engine.planning import SubsetMode
from fedward.coordinator.study_spec import StudySpec, build_planner
from fedward.tinytrain import memory
from fedward.tinytrain.memory import (
    DISK_CACHE_ENV,
    clear_footprint_memo,
    footprint_cache_dir,
    measure_training_step,
    training_footprint,
)
from fedward.tinytrain.models import ModelConfig

CONFIG = ModelConfig(window=64, width=4)
HEAD = ("head.weight", "head.bias")


class Counter:
    """``measure_training_step`` wrapped: the real measurement, counted."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...], dict[str, Any]]] = []

    def __call__(self, config: ModelConfig, trainable: Any, **kwargs: Any) -> memory.Footprint:
        self.calls.append((tuple(trainable), kwargs))
        return measure_training_step(config, trainable, **kwargs)


@pytest.fixture
def counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter]:
    """A fresh cache dir and in-process memo; every real measurement is counted."""
    monkeypatch.setenv("FEDWARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(DISK_CACHE_ENV, raising=False)
    clear_footprint_memo()
    counter = Counter()
    monkeypatch.setattr(memory, "measure_training_step", counter)
    yield counter
    clear_footprint_memo()


def _spec(mode: SubsetMode) -> StudySpec:
    strategy = "fedavg" if mode is SubsetMode.FULL else "ftte"
    return StudySpec(strategy=strategy, subset_mode=mode, window=64, width=4, batch_size=8)


def _entries() -> list[Path]:
    folder = footprint_cache_dir()
    return sorted(folder.glob("*.json")) if folder.exists() else []


def test_a_second_planner_build_measures_nothing_in_process_or_from_disk(
    counted: Counter,
) -> None:
    # Prepare
    spec = _spec(SubsetMode.NESTED)
    # Execute: the first build measures every tier; the second, in this process
    first = build_planner(spec)
    after_first = len(counted.calls)
    second = build_planner(spec)
    after_second = len(counted.calls)
    # ... and a third as a new process would (memo gone, disk cache kept)
    clear_footprint_memo()
    third = build_planner(spec)
    # Assert
    assert after_first == first.ladder.num_tiers
    assert after_second == after_first
    assert len(counted.calls) == after_first
    assert first.tier_bytes == second.tier_bytes == third.tier_bytes
    assert len(_entries()) == first.ladder.num_tiers


def test_a_full_planner_measures_only_the_full_model(counted: Counter) -> None:
    # Prepare
    spec = _spec(SubsetMode.FULL)
    # Execute
    planner = build_planner(spec)
    chosen = planner.subset_for(1, fleet_memory=[1])
    # Assert: one measurement, of the one tier FULL can choose
    assert [names for names, _ in counted.calls] == [planner.ladder.full().names]
    assert chosen == planner.ladder.full()
    assert planner.tier_footprint(chosen.tier) > 0
    assert len(counted.calls) == 1


def test_a_full_planner_measures_the_other_tiers_only_when_asked(counted: Counter) -> None:
    # Prepare
    planner = build_planner(_spec(SubsetMode.FULL))
    # Execute: largest_fitting needs every tier's figure
    fitting = planner.largest_fitting(10**12)
    # Assert
    assert fitting == planner.ladder.full()
    assert len(counted.calls) == planner.ladder.num_tiers


@pytest.mark.parametrize(
    "change",
    [
        {"batch_size": 4},
        {"micro_batch": 2},
        {"momentum": 0.0},
        {"prefix_micro_batch": 2},
        {"trainable": ("head.bias",)},
        {"config": ModelConfig(window=64, width=5)},
    ],
    ids=lambda c: next(iter(c)),
)
def test_a_changed_key_measures_again(counted: Counter, change: dict[str, Any]) -> None:
    # Prepare
    base: dict[str, Any] = {"config": CONFIG, "trainable": HEAD, "batch_size": 8}
    training_footprint(**base)
    # Execute
    changed = training_footprint(**{**base, **change})
    # Assert: a second measurement, and its figure is a fresh measurement's
    assert len(counted.calls) == 2
    kwargs = {k: v for k, v in {**base, **change}.items() if k not in ("config", "trainable")}
    config = change.get("config", CONFIG)
    assert changed == measure_training_step(config, change.get("trainable", HEAD), **kwargs)
    assert len(_entries()) == 2


def test_a_changed_thread_count_measures_again(counted: Counter) -> None:
    # Prepare
    threads = torch.get_num_threads()
    training_footprint(CONFIG, HEAD, batch_size=8)
    # Execute
    torch.set_num_threads(threads + 1)
    try:
        training_footprint(CONFIG, HEAD, batch_size=8)
    finally:
        torch.set_num_threads(threads)
    # Assert
    assert len(counted.calls) == 2


def test_the_cached_figure_equals_a_fresh_measurement(counted: Counter) -> None:
    # Prepare: measured and stored, then the memo forgotten (a new process)
    stored = training_footprint(CONFIG, HEAD, batch_size=8, micro_batch=4)
    clear_footprint_memo()
    # Execute
    loaded = training_footprint(CONFIG, HEAD, batch_size=8, micro_batch=4)
    fresh = measure_training_step(CONFIG, HEAD, batch_size=8, micro_batch=4)
    # Assert: read from disk (no second measurement), equal to a fresh one
    assert len(counted.calls) == 1
    assert loaded == stored == fresh


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"key": {}, "footprint": {}}',
        b"",
        b"\xff\xfe{}",
    ],
    ids=["truncated", "not-an-entry", "empty-key", "empty-file", "not-utf8"],
)
def test_a_corrupt_cache_file_is_ignored_with_a_warning(
    counted: Counter, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    # Prepare
    expected = training_footprint(CONFIG, HEAD, batch_size=8)
    (entry,) = _entries()
    entry.write_bytes(content)
    clear_footprint_memo()
    # Execute
    with caplog.at_level(logging.WARNING, logger=memory.__name__):
        again = training_footprint(CONFIG, HEAD, batch_size=8)
    # Assert: measured again, warned, and the entry replaced by a valid one
    assert len(counted.calls) == 2
    assert again == expected
    assert any(str(entry) in r.getMessage() for r in caplog.records)
    assert json.loads(entry.read_text(encoding="utf-8"))["footprint"]["params"] == again.params


def test_an_entry_whose_stored_key_differs_is_not_trusted(
    counted: Counter, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: the right file name, but the stored key and figure of another measurement
    expected = training_footprint(CONFIG, HEAD, batch_size=8)
    (entry,) = _entries()
    stale = json.loads(entry.read_text(encoding="utf-8"))
    stale["key"]["batch_size"] = 16
    stale["footprint"]["params"] += 1000
    entry.write_text(json.dumps(stale), encoding="utf-8")
    clear_footprint_memo()
    # Execute
    with caplog.at_level(logging.WARNING, logger=memory.__name__):
        again = training_footprint(CONFIG, HEAD, batch_size=8)
    # Assert
    assert len(counted.calls) == 2
    assert again == expected
    assert any("stored key" in r.getMessage() for r in caplog.records)


def test_a_tampered_figure_of_the_wrong_type_is_not_trusted(counted: Counter) -> None:
    # Prepare
    training_footprint(CONFIG, HEAD, batch_size=8)
    (entry,) = _entries()
    tampered = json.loads(entry.read_text(encoding="utf-8"))
    tampered["footprint"]["transient"] = -5
    entry.write_text(json.dumps(tampered), encoding="utf-8")
    clear_footprint_memo()
    # Execute
    again = training_footprint(CONFIG, HEAD, batch_size=8)
    # Assert
    assert len(counted.calls) == 2
    assert again.transient >= 0


def test_the_disk_cache_can_be_turned_off(
    counted: Counter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.setenv(DISK_CACHE_ENV, "off")
    # Execute: twice in process, then as a new process would
    training_footprint(CONFIG, HEAD, batch_size=8)
    training_footprint(CONFIG, HEAD, batch_size=8)
    clear_footprint_memo()
    training_footprint(CONFIG, HEAD, batch_size=8)
    # Assert: the memo still works; nothing written, so the "new process" measured again
    assert len(counted.calls) == 2
    assert _entries() == []


def test_an_unknown_disk_cache_setting_is_refused(
    counted: Counter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.setenv(DISK_CACHE_ENV, "maybe")
    # Execute / Assert
    with pytest.raises(ValueError, match="'on' or 'off'"):
        training_footprint(CONFIG, HEAD, batch_size=8)
    assert counted.calls == []
