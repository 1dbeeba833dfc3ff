"""Shared helpers of the REST API tests (imported as ``tests.coordinator.api_helpers``)."""

from __future__ import annotations

import base64
import json
import warnings
from pathlib import Path
from typing import Any

with warnings.catch_warnings():  # starlette's note about httpx2; the client works as is
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SMALL = {"width": 4, "window": 64, "concurrency": 2, "buffer_size": 2}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def issue(client: TestClient, admin: dict[str, str], role: str, name: str | None = None) -> str:
    """A new token of ``role`` issued over the API by ``admin``."""
    r = client.post("/v1/tokens", json={"role": role, "name": name or role}, headers=admin)
    if r.status_code != 201:
        raise AssertionError(r.text)
    return str(r.json()["token"])


def enrol_body(index: int) -> dict[str, Any]:
    return {
        "device_id": f"dev-{index:03d}",
        "device_class": "phone",
        "memory_bytes": 20_000,
        "public_key": base64.b64encode(bytes([index + 1]) * 32).decode(),
    }


def audit_entries(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


__all__ = ["SMALL", "TestClient", "audit_entries", "bearer", "enrol_body", "issue"]
