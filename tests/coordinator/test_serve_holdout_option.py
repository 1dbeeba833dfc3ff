"""``coordinator serve --holdout STUDY=FILE``: a bad pair is a plain message and exit 2."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from fedward.cli import app

TOKEN = "h0ld0ut-Token-For-Tests-5e4d3c2b1a"


def test_a_holdout_for_an_unknown_study_is_refused_plainly(tmp_path) -> None:
    # Prepare
    data = tmp_path / "held.npz"
    np.savez(data, x=np.zeros((4, 3, 64), dtype=np.float32), y=np.zeros(4, dtype=np.int64))
    args = ["coordinator", "serve", "--no-bridge", "--data-dir", str(tmp_path / "d")]
    env = {"FEDWARD_OPERATOR_TOKEN": TOKEN, "COLUMNS": "200"}
    # Execute
    unknown = CliRunner().invoke(app, [*args, "--holdout", f"nosuch={data}"], env=env)
    malformed = CliRunner().invoke(app, [*args, "--holdout", str(data)], env=env)
    # Assert
    assert unknown.exit_code == 2 and "no study 'nosuch'" in unknown.output
    assert malformed.exit_code == 2 and "write STUDY=FILE.npz" in malformed.output
    assert "Traceback" not in unknown.output + malformed.output
