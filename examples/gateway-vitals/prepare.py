"""Write vitals.csv: simulated bedside/home vitals summarised at a gateway, one row per hour.

A gateway in each care home or ward collects a resident's PPG-derived pulse
rate and pulse irregularity, SpO2, respiration rate, skin temperature,
blood pressure and motion, and summarises each hour into one row. The label
is whether the resident deteriorated in the following hours (0/1), drawn from
a logistic risk on NEWS2-style deviations. Sites differ in the population
(older, sicker), sensor calibration offsets and how common deterioration is,
and ``patient_id`` holds the *site*, so each simulated device is one gateway.

This is simulated data, not recordings: it exercises the CSV path and a
realistic tabular heterogeneity, and says nothing about clinical accuracy.

Usage: ``python examples/gateway-vitals/prepare.py [OUT.csv] [--sites N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

COLUMNS = ("pulse", "pulse_irregularity", "spo2", "resp_rate", "temp", "sbp", "motion")


def site_rows(rng: np.random.Generator, site: int, hours: int) -> list[list[object]]:
    age_shift = rng.normal(0, 1)  # older, sicker populations at some sites
    calib = rng.normal(0, [3, 0.01, 1.0, 1.0, 0.2, 4, 0.05])  # each gateway's sensors
    base_risk = rng.normal(-1.2 + 0.4 * age_shift, 0.5)
    rows = []
    for _ in range(hours):
        sick = rng.random() < 1 / (1 + np.exp(-base_risk))
        severity = rng.gamma(2.0, 0.6) if sick else rng.gamma(1.0, 0.3)
        pulse = 72 + 4 * age_shift + 18 * severity * rng.choice([-0.3, 1.0]) + rng.normal(0, 6)
        irregular = 0.03 + 0.05 * severity * rng.random() + abs(rng.normal(0, 0.01))
        spo2 = 97 - 2.5 * severity + rng.normal(0, 1.0) - 0.5 * age_shift
        resp = 15 + 3.5 * severity + rng.normal(0, 1.5)
        temp = 36.8 + 0.6 * severity * rng.choice([-0.5, 1.0]) + rng.normal(0, 0.25)
        sbp = 125 + 5 * age_shift - 12 * severity * rng.random() + rng.normal(0, 10)
        motion = max(0.0, 0.4 - 0.1 * severity + rng.normal(0, 0.15))
        score = 1.6 * severity - 1.3 + 0.2 * age_shift + rng.normal(0, 0.4)
        label = int(rng.random() < 1 / (1 + np.exp(-3 * score)))
        values = np.array([pulse, irregular, spo2, resp, temp, sbp, motion]) + calib
        rows.append([*np.round(values, 4).tolist(), label, f"site-{site:02d}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", nargs="?", type=Path, default=Path(__file__).with_name("vitals.csv"))
    parser.add_argument("--sites", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with args.out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*COLUMNS, "y", "patient_id"])
        for site in range(args.sites):
            writer.writerows(site_rows(rng, site, int(rng.integers(40, 160))))
    print(f"wrote {args.out}: {args.sites} sites")


if __name__ == "__main__":
    main()
