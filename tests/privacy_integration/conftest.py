"""Fixtures of the privacy integration tests (helpers live in ``budget_helpers``)."""

from __future__ import annotations

import pytest
from budget_helpers import DpStudy, make_dp_study


@pytest.fixture
def dp_study() -> DpStudy:
    return make_dp_study()
