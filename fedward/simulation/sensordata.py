"""An offline clinical sensor task: rhythm class from wearable ECG + PPG + motion.

Each simulated patient wears a device that records 10 s windows at 50 Hz of
three channels: one ECG lead, a wrist/finger PPG and accelerometer magnitude.
The label is the rhythm of the window (needs real learning: rate *and*
regularity, under noise, motion and patient-specific morphology):

    0 NORMAL  sinus rhythm 60-100 bpm, small variability, occasional ectopic beat
    1 BRADY   sinus bradycardia < 58 bpm
    2 TACHY   sinus tachycardia > 102 bpm
    3 AF      atrial fibrillation: irregularly irregular RR, no P wave, f-waves

Patients differ in heart-rate offset, QRS/T/P amplitudes, lead polarity, pulse
transit time, noise, baseline wander and how much they move; label mixes per
patient come from a Dirichlet(alpha), so the federation is non-IID by patient.
Beats are synthesised from Gaussian P-QRS-T and two-peak pulse templates placed
at the beat times (fast numpy; tens of thousands of windows in seconds).

``load_study_data`` caches generated arrays under ``~/.cache/fedward`` (or
``$FEDWARD_CACHE``) keyed by every parameter, so a study is generated once.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .atomic import write_npz

FS = 50  # Hz
WINDOW_S = 10
WINDOW = FS * WINDOW_S
CHANNELS = 3


class Rhythm(enum.IntEnum):
    NORMAL = 0
    BRADY = 1
    TACHY = 2
    AF = 3


@dataclass(frozen=True, kw_only=True)
class Patient:
    hr_shift: float
    qrs_amp: float
    t_amp: float
    p_amp: float
    polarity: float
    ptt: float
    noise: float
    wander: float
    motion: float


def _patient(rng: np.random.Generator) -> Patient:
    return Patient(
        hr_shift=float(rng.normal(0, 4)),
        qrs_amp=float(rng.uniform(0.6, 1.6)),
        t_amp=float(rng.uniform(0.15, 0.45)),
        p_amp=float(rng.uniform(0.08, 0.2)),
        polarity=-1.0 if rng.random() < 0.1 else 1.0,
        ptt=float(rng.uniform(0.15, 0.32)),
        noise=float(rng.uniform(0.03, 0.2)),
        wander=float(rng.uniform(0.0, 0.3)),
        motion=float(rng.beta(1.2, 4.0)),
    )


def _beat_times(label: Rhythm, p: Patient, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Beat times in seconds over the window (with margin) and whether P waves exist."""
    if label is Rhythm.NORMAL:
        hr, cv, has_p = rng.uniform(60, 98) + p.hr_shift * 0.5, rng.uniform(0.01, 0.05), True
        hr = float(np.clip(hr, 61, 99))
    elif label is Rhythm.BRADY:
        hr, cv, has_p = rng.uniform(36, 57), rng.uniform(0.01, 0.05), True
    elif label is Rhythm.TACHY:
        hr, cv, has_p = rng.uniform(103, 165), rng.uniform(0.01, 0.04), True
    else:
        hr, cv, has_p = rng.uniform(65, 150), rng.uniform(0.15, 0.35), False
    mean_rr = 60.0 / hr
    n = int((WINDOW_S + 2) / mean_rr) + 4
    if label is Rhythm.AF:
        rr = mean_rr * rng.lognormal(-(cv**2) / 2, cv, size=n)
    else:
        # sinus: smooth respiratory modulation plus small jitter
        phase = rng.uniform(0, 2 * np.pi)
        rr = mean_rr * (1 + cv * np.sin(phase + np.arange(n) * 0.9) + 0.3 * cv * rng.normal(size=n))
        if label is Rhythm.NORMAL and rng.random() < 0.15:  # one premature (ectopic) beat
            k = int(rng.integers(2, n - 2))
            rr[k] *= 0.6
            rr[k + 1] *= 1.4
    times = np.cumsum(np.clip(rr, 0.25, 2.5)) - rng.uniform(0.5, 1.5)
    return times, has_p


def _gauss(t: np.ndarray, centre: np.ndarray, width: float, amp: float) -> np.ndarray:
    return amp * np.exp(-0.5 * ((t[None, :] - centre[:, None]) / width) ** 2).sum(axis=0)


def synth_window(label: Rhythm, p: Patient, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(WINDOW) / FS
    beats, has_p = _beat_times(label, p, rng)
    beats = beats[(beats > -1.0) & (beats < WINDOW_S + 1.0)]
    rr = float(np.median(np.diff(beats))) if len(beats) > 1 else 1.0
    qrs = p.qrs_amp * p.polarity
    ecg = (
        _gauss(t, beats, 0.022, qrs)
        + _gauss(t, beats - 0.04, 0.018, -0.15 * qrs)
        + _gauss(t, beats + 0.045, 0.02, -0.3 * qrs)
        + _gauss(t, beats + 0.12 + 0.15 * np.sqrt(rr), 0.06, p.t_amp * p.polarity)
    )
    if has_p:
        ecg += _gauss(t, beats - 0.17, 0.03, p.p_amp)
    else:  # fibrillatory waves, 4-8 Hz
        f = rng.uniform(4, 8)
        ecg += rng.uniform(0.02, 0.08) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3))
    pulse = beats + p.ptt
    ppg = _gauss(t, pulse + 0.1, 0.09, 1.0) + _gauss(t, pulse + 0.4, 0.11, 0.35)
    if label is Rhythm.AF:  # beat-to-beat pulse amplitude varies with filling time
        ppg *= rng.uniform(0.8, 1.2)
    activity = p.motion * rng.uniform(0, 1)
    motion = activity * (1 + np.sin(2 * np.pi * rng.uniform(0.8, 2.5) * t + rng.uniform(0, 6.3)))
    wander = p.wander * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 6.3))
    noise = p.noise * (1 + activity)
    ecg = (
        ecg
        + wander
        + noise * rng.normal(size=WINDOW)
        + 0.3 * activity * rng.normal(size=WINDOW).cumsum() / 20
    )
    ppg = (
        ppg
        + 0.5 * wander
        + 0.8 * noise * rng.normal(size=WINDOW)
        + 0.6 * motion * rng.normal(size=WINDOW)
    )
    acc = motion + 0.05 * rng.normal(size=WINDOW)
    return np.stack([ecg, ppg - ppg.mean(), acc]).astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class StudyDataConfig:
    devices: int
    alpha: float = 0.5
    min_windows: int = 24
    max_windows: int = 96
    test_patients: int = 100
    test_windows_per_patient: int = 20
    seed: int = 0
    # Fraction of devices whose annotations are systematically wrong (see
    # ``mislabel_devices``); applied after loading, so it is not part of the key.
    mislabelled_fraction: float = 0.0
    # 0: Dirichlet label mixes; k >= 2: disjoint label groups (``group_probs``)
    label_groups: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.mislabelled_fraction <= 1.0:
            raise ValueError("mislabelled_fraction must be in [0, 1]")
        if self.label_groups == 1 or not 0 <= self.label_groups <= len(Rhythm):
            raise ValueError(f"label_groups must be 0 or in 2..{len(Rhythm)}")

    def key(self) -> str:
        generated = {k: v for k, v in asdict(self).items() if k != "mislabelled_fraction"}
        if not self.label_groups:  # the key every cached data set had before the field
            del generated["label_groups"]
        payload = json.dumps({**generated, "generator": 2}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StudyData:
    device_x: list[np.ndarray]
    device_y: list[np.ndarray]
    test_x: np.ndarray
    test_y: np.ndarray


def _patient_windows(
    rng: np.random.Generator, count: int, probs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    p = _patient(rng)
    labels = rng.choice(len(Rhythm), size=count, p=probs)
    x = np.stack([synth_window(Rhythm(int(lab)), p, rng) for lab in labels])
    return x, labels.astype(np.int64)


def generate_study_data(config: StudyDataConfig) -> StudyData:
    rng = np.random.default_rng(config.seed)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for _ in range(config.devices):
        probs = rng.dirichlet(np.full(len(Rhythm), config.alpha))
        if config.label_groups:  # drawn all the same, so the rest of the stream is unchanged
            probs = group_probs(len(xs), groups=config.label_groups, classes=len(Rhythm))
        count = int(rng.integers(config.min_windows, config.max_windows + 1))
        x, y = _patient_windows(rng, count, probs)
        xs.append(x)
        ys.append(y)
    tx, ty = [], []
    balanced = np.full(len(Rhythm), 1 / len(Rhythm))
    for _ in range(config.test_patients):
        x, y = _patient_windows(rng, config.test_windows_per_patient, balanced)
        tx.append(x)
        ty.append(y)
    return StudyData(xs, ys, np.concatenate(tx), np.concatenate(ty))


def group_probs(device: int, *, groups: int, classes: int) -> np.ndarray:
    """Device ``device``'s label mix under disjoint groups: uniform over its group's labels.

    Labels are split into ``groups`` contiguous groups (4 rhythms, 2 groups:
    {NORMAL, BRADY} and {TACHY, AF}); device i holds only group ``i mod groups``:
    wearers whose recordings honestly differ, none of them wrong.
    """
    members = np.array_split(np.arange(classes), groups)[device % groups]
    probs = np.zeros(classes)
    probs[members] = 1.0 / len(members)
    return probs


def cache_dir() -> Path:
    return Path(os.environ.get("FEDWARD_CACHE", Path.home() / ".cache" / "fedward"))


MISLABEL_SEED_OFFSET = 7_919


def mislabelled_devices(config: StudyDataConfig) -> list[int]:
    """Which devices carry wrong annotations (a seeded choice, sorted)."""
    count = round(config.mislabelled_fraction * config.devices)
    rng = np.random.default_rng(config.seed + MISLABEL_SEED_OFFSET)
    return sorted(int(i) for i in rng.choice(config.devices, size=count, replace=False))


def mislabel_devices(data: StudyData, config: StudyDataConfig) -> StudyData:
    """Relabel the chosen devices through a class rotation (``y -> y + 1 mod C``).

    Models a systematic annotation fault on a device (a wearable paired with the
    wrong labelling pipeline): its windows are genuine, its labels consistently
    wrong, so its updates pull against the fleet's. Held-out data stays clean.
    """
    chosen = set(mislabelled_devices(config))
    if not chosen:
        return data
    device_y = [(y + 1) % len(Rhythm) if i in chosen else y for i, y in enumerate(data.device_y)]
    return StudyData(data.device_x, device_y, data.test_x, data.test_y)


class DataSource(Protocol):
    """A study's data that is not generated here (``fedward.simulation.datafile``)."""

    def load(self) -> StudyData: ...


DataConfig = StudyDataConfig | DataSource
"""What ``load_study_data`` takes: the synthetic task's settings or a data source."""


def load_study_data(config: DataConfig) -> StudyData:
    """Generate once (cached), then apply the configured device faults; or load a data source."""
    if not isinstance(config, StudyDataConfig):
        return config.load()
    return mislabel_devices(_load_clean(config), config)


def _load_clean(config: StudyDataConfig) -> StudyData:
    path = cache_dir() / "datasets" / f"ecg-rhythm-{config.key()}.npz"
    if path.exists():
        with np.load(path) as f:
            counts = f["counts"]
            bounds = np.concatenate([[0], np.cumsum(counts)])
            x, y = f["x"], f["y"]
            return StudyData(
                [x[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
                [y[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
                f["test_x"],
                f["test_y"],
            )
    data = generate_study_data(config)
    write_npz(
        path,
        x=np.concatenate(data.device_x),
        y=np.concatenate(data.device_y),
        counts=np.array([len(v) for v in data.device_y]),
        test_x=data.test_x,
        test_y=data.test_y,
    )
    return data
