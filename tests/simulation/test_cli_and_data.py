"""The simulate/bench commands, scenario files and the offline sensor task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedward.cli import app
from fedward.simulation.scenario import PRESETS, Scenario, load_scenario
from fedward.simulation.sensordata import (
    Rhythm,
    StudyDataConfig,
    generate_study_data,
    load_study_data,
    mislabelled_devices,
)

runner = CliRunner()


def test_simulate_writes_metrics_and_a_plot(tmp_path: Path) -> None:
    # Execute
    result = runner.invoke(
        app,
        [
            "simulate",
            "--scenario",
            "tiny",
            "--strategy",
            "ftte",
            "--executor",
            "serial",
            "--out",
            str(tmp_path),
        ],
    )
    # Assert
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["result"]["updates"] == PRESETS["tiny"].update_budget
    assert 0.0 <= metrics["result"]["final_accuracy"] <= 1.0
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_json_has_the_documented_shape(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = runner.invoke(
        app,
        ["bench", "--scenario", "tiny", "--executor", "serial", "--json", str(out)]
        + [a for r in ("fedavg", "fedbuff", "ftte") for a in ("--run", r)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["scenario"]) >= {"name", "devices", "straggler_fraction", "target_accuracy"}
    assert set(report["strategies"]) == {"fedavg", "fedbuff", "ftte"}
    for row in report["strategies"].values():
        assert row["time_to_target_s"] is None or isinstance(row["time_to_target_s"], float)
        assert isinstance(row["final_accuracy"], float)
        assert isinstance(row["peak_train_memory_bytes"], int)
        assert isinstance(row["upload_bytes_per_update"], float)
        assert isinstance(row["updates"], int) and isinstance(row["wall_s"], float)
    ftte, fedavg = report["strategies"]["ftte"], report["strategies"]["fedavg"]
    assert ftte["peak_train_memory_bytes"] < fedavg["peak_train_memory_bytes"]
    assert out.with_suffix(".md").exists() and out.with_suffix(".png").exists()
    # where the figures came from: this process's code, hashed
    from fedward.simulation.provenance import code_digest

    assert report["provenance"]["code_digest"] == code_digest()
    assert {"git_commit", "git_dirty", "torch", "numpy", "torch_threads"} <= set(
        report["provenance"]
    )


def test_scenario_files_are_strict(tmp_path: Path) -> None:
    good = tmp_path / "s.json"
    good.write_text(json.dumps({"name": "mine", "devices": 12, "update_budget": 10}))
    assert load_scenario(str(good)).devices == 12
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"devices": 12, "typo_field": 1}))
    with pytest.raises(ValueError):
        load_scenario(str(bad))
    with pytest.raises(ValueError):
        Scenario(min_windows=50, max_windows=10)
    with pytest.raises(FileNotFoundError):
        load_scenario("no-such-preset")


def test_sensor_data_is_deterministic_heterogeneous_and_cached() -> None:
    # Prepare
    config = StudyDataConfig(devices=6, min_windows=10, max_windows=20, test_patients=4, seed=3)
    # Execute
    first = generate_study_data(config)
    again = generate_study_data(config)
    cached = load_study_data(config)
    cached_again = load_study_data(config)
    # Assert: same seed, same data; the cache returns it unchanged
    np.testing.assert_array_equal(first.device_x[0], again.device_x[0])
    np.testing.assert_array_equal(cached.device_x[2], cached_again.device_x[2])
    assert [len(y) for y in first.device_y] == [len(y) for y in cached.device_y]
    assert first.device_x[0].shape[1:] == (3, 500)
    # non-IID: per-device label mixes differ; the test set covers every rhythm
    mixes = {tuple(np.bincount(y, minlength=len(Rhythm))) for y in first.device_y}
    assert len(mixes) > 1
    assert set(np.unique(first.test_y)) == {r.value for r in Rhythm}
    assert np.isfinite(first.test_x).all()


def test_mislabelled_devices_get_rotated_labels_and_nothing_else_changes() -> None:
    # Prepare
    clean = StudyDataConfig(devices=20, min_windows=8, max_windows=12, test_patients=2, seed=5)
    faulty = StudyDataConfig(
        devices=20, min_windows=8, max_windows=12, test_patients=2, seed=5, mislabelled_fraction=0.2
    )
    # Execute
    good, bad = load_study_data(clean), load_study_data(faulty)
    chosen = mislabelled_devices(faulty)
    # Assert: 20% of devices, chosen by the seed; their labels rotated by one class,
    # their windows, every other device and the held-out set untouched
    assert len(chosen) == 4 and chosen == mislabelled_devices(faulty)
    assert clean.key() == faulty.key()  # same generated data, faults applied on load
    for i in range(20):
        np.testing.assert_array_equal(good.device_x[i], bad.device_x[i])
        expected = (good.device_y[i] + 1) % len(Rhythm) if i in chosen else good.device_y[i]
        np.testing.assert_array_equal(bad.device_y[i], expected)
    np.testing.assert_array_equal(good.test_y, bad.test_y)
    assert mislabelled_devices(clean) == []
    with pytest.raises(ValueError, match="mislabelled_fraction"):
        StudyDataConfig(devices=4, mislabelled_fraction=1.5)


def test_seed_option_changes_the_study_and_is_recorded(tmp_path: Path) -> None:
    # Execute: the same tiny study under two seeds
    outs = []
    for seed in (0, 1):
        out = tmp_path / f"s{seed}"
        result = runner.invoke(
            app,
            ["simulate", "--scenario", "tiny", "--executor", "serial", "--seed", str(seed)]
            + ["--out", str(out)],
        )
        assert result.exit_code == 0, result.output
        outs.append(json.loads((out / "metrics.json").read_text()))
    # Assert
    assert [m["scenario"]["seed"] for m in outs] == [0, 1]
    assert outs[0]["result"]["series"] != outs[1]["result"]["series"]
