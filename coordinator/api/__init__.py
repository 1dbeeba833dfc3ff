"""The coordinator's REST API (FastAPI stays inside this package and the CLI)."""

from .app import create_app

__all__ = ["create_app"]
