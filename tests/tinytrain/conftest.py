from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory measurements (``build_planner``) go to a per-session cache, not the user's."""
    monkeypatch.setenv("FEDWARD_CACHE", str(tmp_path_factory.getbasetemp() / "fedward-cache"))
