"""``fedward edge run --audit-public-key``: a malformed key is a clear start-up error."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from fedward.cli import app
from fedward.edge.dataset import save_dataset


def test_a_malformed_audit_key_stops_the_device_before_it_connects(tmp_path) -> None:
    # Prepare
    data = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    save_dataset(data, rng.standard_normal((4, 3, 50)), rng.integers(0, 4, 4))
    args = ["edge", "run", "--broker", "mqtt://127.0.0.1:1", "--study", "s1"]
    args += ["--device-id", "dev-1", "--data", str(data), "--window", "50"]
    args += ["--state-dir", str(tmp_path / "dev"), "--insecure", "--audit-public-key", "zz"]
    # Execute
    result = CliRunner().invoke(app, args)
    # Assert: exit 2 with what is wrong, no traceback
    assert result.exit_code == 2, result.output
    assert "cannot start" in result.output and "audit_public_key" in result.output
    assert "Traceback" not in result.output
