"""A study's privacy budget policy: fixed at study creation, never changed.

The policy is the promise made to data subjects (and to the ethics board): each
device's cumulative epsilon at ``delta``, over every task of the study, stays
within ``epsilon`` as computed by ``accountant``. Changing it mid-study would
let earlier consent cover a weaker guarantee, so it is a frozen value object;
the ledger pins it and refuses state written under another policy.

Refused as unsafe: ``epsilon <= 0`` or non-finite; ``delta`` outside
``(0, 1e-2)`` (delta must be well below 1/n; 1e-2 is already loose for any
realistic n); the GDP accountant unless ``allow_gdp=True`` (it can
underestimate, and a warning is still issued). Typical targets are epsilon < 10,
stringent < 1; that is the study's choice and not enforced here.

Note: DP-SGD on one device is *sample*-level DP. If a patient contributes many
windows, patient-level protection needs user-level accounting or group privacy.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import numbers
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .accounting import GDP_WARNING, Accountant
from .errors import PolicyError

MAX_DELTA = 1e-2


class PrivacyUnit(enum.StrEnum):
    """What one epsilon protects: the neighbouring datasets of the guarantee.

    WINDOW   sample-level DP-SGD on a device: datasets differing in one 10-s window
             (a patient contributes many; their group is protected far less)
    PATIENT  client-level DP: datasets differing in one device's whole contribution,
             and a device holds one patient
    """

    WINDOW = "window"
    PATIENT = "patient"


@dataclass(frozen=True, kw_only=True)
class BudgetPolicy:
    """Per-study budget: every device's cumulative ``epsilon`` at ``delta``."""

    epsilon: float
    delta: float
    accountant: Accountant = Accountant.RDP
    allow_gdp: bool = False

    def __post_init__(self) -> None:
        eps, delta = self.epsilon, self.delta
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps):
            raise PolicyError(f"epsilon must be a finite number, got {eps!r}")
        if eps <= 0:
            raise PolicyError(f"epsilon must be > 0, got {eps!r}")
        if isinstance(delta, bool) or not isinstance(delta, numbers.Real):
            raise PolicyError(f"delta must be a number, got {delta!r}")
        if not 0 < delta < MAX_DELTA:
            raise PolicyError(f"delta must be in (0, {MAX_DELTA}), got {delta!r}")
        if not isinstance(self.accountant, Accountant):
            raise PolicyError(f"accountant must be an Accountant, got {self.accountant!r}")
        if not isinstance(self.allow_gdp, bool):
            raise PolicyError("allow_gdp must be a bool")
        if self.accountant is Accountant.GDP:
            if not self.allow_gdp:
                raise PolicyError("the GDP accountant can underestimate; pass allow_gdp=True")
            warnings.warn(GDP_WARNING, UserWarning, stacklevel=3)
        object.__setattr__(self, "epsilon", float(eps))
        object.__setattr__(self, "delta", float(delta))

    def to_dict(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "accountant": self.accountant.value,
            "allow_gdp": self.allow_gdp,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BudgetPolicy:
        if set(data) != {"epsilon", "delta", "accountant", "allow_gdp"}:
            raise PolicyError(
                f"policy fields must be epsilon, delta, accountant, allow_gdp: {sorted(data)}"
            )
        try:
            accountant = Accountant(data["accountant"])
        except ValueError as exc:
            raise PolicyError(f"unknown accountant {data['accountant']!r}") from exc
        return cls(
            epsilon=data["epsilon"],
            delta=data["delta"],
            accountant=accountant,
            allow_gdp=data["allow_gdp"],
        )

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the canonical policy: pin it in the study record and audit log."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def ensure_same(self, other: BudgetPolicy) -> None:
        """Raise ``PolicyError`` if ``other`` differs: a study's policy never changes."""
        if other != self:
            raise PolicyError(
                f"the study's budget policy is immutable: {self.to_dict()} != {other.to_dict()}"
            )
