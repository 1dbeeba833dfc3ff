"""Device classes of a clinical sensor fleet and how a fleet is drawn from them.

Numbers are per device class before straggling: the memory a device can give to
training (bytes), sustained compute (FLOP/s), link bandwidth (bytes/s), the
chance it is online when the coordinator looks for work, and the chance it
drops a task part-way (battery, radio, patient walks away). A straggler is a
device whose compute and links are slower by a factor drawn log-uniformly from
``straggler_slowdown`` (throttled CPU, weak signal, power saving).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The wire contract owns the device classes (Enrol.device_class): a simulated
# fleet is drawn from the same classes that devices enrol with.
from fedward.protocol.messages import DeviceClass


@dataclass(frozen=True, kw_only=True)
class DeviceProfile:
    device_class: DeviceClass
    memory_bytes: int
    flops_per_s: float
    uplink_bps: float  # bytes per second
    downlink_bps: float
    rtt_s: float
    availability: float
    dropout: float


DEFAULT_PROFILES: dict[DeviceClass, DeviceProfile] = {
    DeviceClass.WEARABLE: DeviceProfile(
        device_class=DeviceClass.WEARABLE,
        memory_bytes=640 * 1024,
        flops_per_s=150e6,
        uplink_bps=20e3,
        downlink_bps=40e3,
        rtt_s=0.3,
        availability=0.9,
        dropout=0.03,
    ),
    DeviceClass.PHONE: DeviceProfile(
        device_class=DeviceClass.PHONE,
        memory_bytes=4 * 1024 * 1024,
        flops_per_s=1.5e9,
        uplink_bps=200e3,
        downlink_bps=800e3,
        rtt_s=0.1,
        availability=0.85,
        dropout=0.02,
    ),
    DeviceClass.GATEWAY: DeviceProfile(
        device_class=DeviceClass.GATEWAY,
        memory_bytes=64 * 1024 * 1024,
        flops_per_s=8e9,
        uplink_bps=2e6,
        downlink_bps=5e6,
        rtt_s=0.05,
        availability=0.98,
        dropout=0.005,
    ),
}


@dataclass(frozen=True, kw_only=True)
class SimDevice:
    device_id: str
    index: int  # into the study's per-device data
    profile: DeviceProfile
    slowdown: float  # 1.0 for a non-straggler

    @property
    def straggler(self) -> bool:
        return self.slowdown > 1.0

    def compute_s(self, flops: float) -> float:
        return flops * self.slowdown / self.profile.flops_per_s

    def upload_s(self, nbytes: int) -> float:
        return self.profile.rtt_s + nbytes * self.slowdown / self.profile.uplink_bps

    def download_s(self, nbytes: int) -> float:
        return self.profile.rtt_s + nbytes * self.slowdown / self.profile.downlink_bps


def draw_fleet(
    *,
    devices: int,
    mix: dict[DeviceClass, float],
    straggler_fraction: float,
    straggler_slowdown: tuple[float, float],
    rng: np.random.Generator,
    profiles: dict[DeviceClass, DeviceProfile] | None = None,
) -> list[SimDevice]:
    """Draw ``devices`` devices: classes by ``mix``, exactly round(f * n) stragglers."""
    profiles = profiles or DEFAULT_PROFILES
    if not 0 <= straggler_fraction <= 1:
        raise ValueError("straggler_fraction must be in [0, 1]")
    lo, hi = straggler_slowdown
    if not 1 <= lo <= hi:
        raise ValueError("straggler_slowdown must satisfy 1 <= low <= high")
    classes = list(mix)
    weights = np.array([mix[c] for c in classes], dtype=float)
    drawn = rng.choice(len(classes), size=devices, p=weights / weights.sum())
    stragglers = set(
        rng.choice(devices, size=round(straggler_fraction * devices), replace=False).tolist()
    )
    fleet = []
    for i in range(devices):
        slow = math.exp(rng.uniform(math.log(lo), math.log(hi))) if i in stragglers else 1.0
        fleet.append(
            SimDevice(
                device_id=f"d{i:04d}", index=i, profile=profiles[classes[drawn[i]]], slowdown=slow
            )
        )
    return fleet
