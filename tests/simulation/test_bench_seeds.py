"""``fedward.bench.seeds``: one table from several seeds' benchmark reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedward.bench.seeds import IncomparableReports, load_reports, markdown, summarise


def row(t: float | None, acc: float, mem: int, up: float) -> dict:
    return {
        "time_to_target_s": t,
        "final_accuracy": acc,
        "peak_train_memory_bytes": mem,
        "upload_bytes_per_update": up,
    }


def report(seed: int, ftte_t: float | None, ftte_acc: float, **settings: object) -> dict:
    return {
        "scenario": {"name": "s", "settings": {"seed": seed, "devices": 10, **settings}},
        "strategies": {
            "fedavg": row(1000.0, 0.98, 1000, 100.0),
            "fedbuff": row(100.0, 0.99, 1000, 100.0),
            "ftte": row(ftte_t, ftte_acc, 100, 25.0),
        },
    }


def write(tmp_path: Path, reports: list[dict]) -> list[Path]:
    paths = []
    for i, r in enumerate(reports):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(r))
    return paths


def test_summary_lists_each_seed_and_the_mean_of_ratios_and_gaps(tmp_path: Path) -> None:
    # Prepare: given out of seed order
    paths = write(tmp_path, [report(2, 300.0, 0.985), report(0, 100.0, 0.975)])
    # Execute
    summary = summarise(load_reports(paths))
    # Assert
    ftte = summary["ftte"]
    assert [p["seed"] for p in ftte["seeds"]] == [0, 2]
    assert ftte["mean"]["time_vs_fedavg"] == pytest.approx(0.2)  # (0.1 + 0.3) / 2
    assert ftte["mean"]["points_vs_fedbuff"] == pytest.approx(-1.0)  # (-1.5 + -0.5) / 2
    assert ftte["mean"]["points_vs_fedavg"] == pytest.approx(0.0)
    assert ftte["mean"]["memory_vs_fedavg"] == pytest.approx(0.1)
    assert ftte["mean"]["upload_vs_fedavg"] == pytest.approx(0.25)
    assert ftte["median"]["time_vs_fedavg"] == pytest.approx(0.2)
    assert ftte["range"]["time_vs_fedavg"] == pytest.approx((0.1, 0.3))
    assert "0.100 / 0.300 (median 0.200; 0.100..0.300)" in markdown(summary)


def test_a_seed_whose_warm_start_meets_the_target_is_left_out_of_the_time_mean(
    tmp_path: Path,
) -> None:
    # Prepare: on seed 1 every row is at the target from the start (time 0)
    at_start = report(1, 0.0, 0.99)
    at_start["strategies"]["fedavg"]["time_to_target_s"] = 0.0
    paths = write(tmp_path, [report(0, 100.0, 0.98), at_start])
    # Execute
    summary = summarise(load_reports(paths))
    # Assert: the mean is seed 0's ratio alone, and the table says why
    assert summary["ftte"]["mean"]["time_vs_fedavg"] == pytest.approx(0.1)
    assert summary["ftte"]["mean"]["final_accuracy"] == pytest.approx(0.985)
    assert "On seed 1 the warm start already meets the target" in markdown(summary)


def test_a_seed_that_never_reached_the_target_leaves_no_mean(tmp_path: Path) -> None:
    paths = write(tmp_path, [report(0, None, 0.97), report(1, 100.0, 0.98)])
    summary = summarise(load_reports(paths))
    assert summary["ftte"]["mean"]["time_vs_fedavg"] is None  # not averaged over survivors


@pytest.mark.parametrize(
    ("reports", "message"),
    [
        ([report(0, 1.0, 0.9), report(0, 1.0, 0.9)], "own seed"),
        ([report(0, 1.0, 0.9), report(1, 1.0, 0.9, devices=99)], "beyond its seed"),
        ([report(0, 1.0, 0.9), {"scenario": {}, "strategies": {}}], "not a fedward bench report"),
    ],
)
def test_reports_of_different_benchmarks_are_refused(
    tmp_path: Path, reports: list[dict], message: str
) -> None:
    with pytest.raises(IncomparableReports, match=message):
        load_reports(write(tmp_path, reports))
