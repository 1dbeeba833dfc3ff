"""``--ray-address`` joins a Ray cluster; with another executor it is a clear error."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from fedward.cli import app

STUDY = Path(__file__).resolve().parents[2] / "examples" / "ecg-wearable" / "study.yaml"


def test_a_ray_address_without_the_ray_executor_is_refused_plainly(tmp_path) -> None:
    # Execute
    result = CliRunner().invoke(
        app,
        ["simulate", str(STUDY), "--executor", "serial", "--ray-address", "127.0.0.1:1"]
        + ["--out", str(tmp_path / "out")],
    )
    # Assert
    assert result.exit_code == 2, result.output
    assert "ray_address is for the ray executor" in result.output
    assert "Traceback" not in result.output
