"""``fedward report`` writes one self-contained page whose plots a real browser renders.

The page's own inline script marks each plot ``data-rendered="yes"`` once
Chromium has laid it out with a non-empty box and drawn paths; headless
Chromium (Debian package, scripts/chromium.sh) dumps the DOM after load.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from fedward.cli import app
from tests.services import unavailable
from tests.simulation.own_data_helpers import two_class_windows


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        unavailable("headless chromium is not installed", fix="bash scripts/chromium.sh")
    return path


def test_a_dp_run_gets_a_report_with_every_plot_rendered(tmp_path: Path) -> None:
    # Prepare: a tiny DP study on an .npz (so the page has an epsilon plot too)
    browser = _chromium()
    two_class_windows(tmp_path / "w.npz")
    (tmp_path / "s.yaml").write_text(
        "name: rep\ndata: {source: file, path: w.npz}\nwarm_start: {patients: 0}\n"
        "model: {hidden: [8, 16]}\nstrategy: {name: ftte+dp, concurrency: 4, buffer_size: 3}\n"
        "privacy: {mode: dp_sgd, epsilon: 8, sample_rate: 0.2, steps_per_task: 5}\n"
        "evaluation: {target_accuracy: 0.8, every_updates: 6}\nstop: {updates: 24}\n"
    )
    run = tmp_path / "run"
    out = CliRunner().invoke(
        app,
        ["simulate", str(tmp_path / "s.yaml"), "--executor", "serial", "--out", str(run)],
        env={"COLUMNS": "200"},
    )
    assert out.exit_code == 0, out.output
    # Execute
    rep = CliRunner().invoke(app, ["report", str(run)])
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            (run / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    # Assert
    assert rep.exit_code == 0, rep.output
    html = (run / "report.html").read_text()
    assert not re.search(r'(src|href)="(https?:)?//', html)  # self-contained: nothing fetched
    plots = html.count('<figure class="plot">')
    assert plots == 6  # accuracy, bytes, participation, staleness, memory, epsilon
    assert f'data-plots-rendered="{plots}"' in dom
    assert len(re.findall(r'data-rendered="yes"', dom)) == plots
    data = json.loads((run / "report.json").read_text())
    assert data["runs"][0]["epsilon_series"], "a DP run reports its spends"
    assert (
        "privacy ledger:" in out.output
        and "fedward budget report --study rep-ftte-dp" in out.output
    )
    assert list(run.glob("privacy-ledger-*.json"))


def test_a_bench_report_folder_gives_one_line_per_strategy(tmp_path: Path) -> None:
    # Prepare: the shape fedward bench writes (two rows of a tiny, made-up run)
    rows = {
        name: {
            "series": [
                {"t": 0.0, "accuracy": 0.5, "updates": 0},
                {"t": t, "accuracy": a, "updates": 8},
            ],
            "final_accuracy": a,
            "time_to_target_s": None,
            "updates": 8,
            "upload_bytes_per_update": 100.0,
        }
        for name, t, a in (("fedavg", 40.0, 0.6), ("ftte", 12.0, 0.7))
    }
    bench = {"scenario": {"name": "tiny", "settings": {"target_accuracy": 0.9}}, "strategies": rows}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    # Execute
    out = CliRunner().invoke(app, ["report", str(tmp_path)])
    # Assert
    assert out.exit_code == 0, out.output
    data = json.loads((tmp_path / "report.json").read_text())
    assert [r["label"] for r in data["runs"]] == ["fedavg", "ftte"]
    assert data["runs"][1]["series"][-1] == {"t": 12.0, "accuracy": 0.7, "updates": 8}
    assert (tmp_path / "report.html").read_text().count('<figure class="plot">') == 2
