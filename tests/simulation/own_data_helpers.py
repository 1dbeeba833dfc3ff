"""Small learnable data files for the bring-your-own-data tests (an .npz and a CSV)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def two_class_windows(path: Path, *, patients: int = 12, per: int = 30, seed: int = 0) -> Path:
    """Learnable windows: class = sine frequency, with per-patient offsets and gains."""
    rng = np.random.default_rng(seed)
    t = np.arange(40) / 10
    xs, ys, ids = [], [], []
    for p in range(patients):
        offset, gain = rng.normal(0, 3, size=(3, 1)), rng.uniform(5, 20)
        for _ in range(per):
            c = int(rng.random() < 0.2 + 0.6 * (p % 2))
            s = np.sin(2 * np.pi * (1.0 if c == 0 else 2.5) * t + rng.uniform(0, 6.3))
            xs.append(offset + gain * np.stack([s, s**2, 0.3 * rng.normal(size=40)]))
            ys.append(c)
            ids.append(f"p{p:02d}")
    np.savez(path, X=np.array(xs), y=np.array(ys), patient_id=np.array(ids))
    return path


def tabular_csv(path: Path, *, sites: int = 12, rows: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["hr", "spo2", "rr", "y", "patient_id"])
        for s in range(sites):
            shift = rng.normal(0, 2)
            for _ in range(rows):
                c = int(rng.random() < 0.5)
                hr = 70 + 25 * c + shift + rng.normal(0, 8)
                spo2 = 97 - 3 * c + rng.normal(0, 1.2)
                rr = 14 + 5 * c + rng.normal(0, 2)
                w.writerow([f"{hr:.2f}", f"{spo2:.2f}", f"{rr:.2f}", c, f"site-{s}"])
    return path
