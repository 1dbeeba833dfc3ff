"""Fixtures of the wire tests: unique study ids (``mqtt_broker`` is tests/conftest.py's)."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def study_id() -> str:
    """A fresh study id: every test has its own topic tree on a shared broker."""
    return "wire-" + uuid.uuid4().hex[:16]
