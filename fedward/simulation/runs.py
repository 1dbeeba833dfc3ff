"""Where a run's files go: a new folder per run, never over an earlier one."""

from __future__ import annotations

import time
from pathlib import Path

from .studyreport import write_report


def new_run_dir(root: Path, name: str) -> Path:
    """``root/<name>-<UTC time>``, with ``-2``, ``-3`` ... if that folder exists already."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = root / f"{name}-{stamp}"
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    folder.mkdir(parents=True)
    return folder


def write_run_files(folder: Path) -> Path:
    """The run's ``report.html`` (and ``report.json``) beside its ``metrics.json``."""
    return write_report(folder)
