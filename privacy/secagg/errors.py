"""Errors raised by fedward's secure aggregation.

Hierarchy (every error derives from ``SecAggError``, itself a
:class:`fedward.privacy.errors.PrivacyError` under
:class:`fedward.errors.FedwardError`; catch the narrowest you can handle)::

    SecAggError             base of everything fedward.privacy.secagg raises on purpose
    ├── ConfigError         invalid SecAggConfig / SecAggSession (also a ValueError)
    ├── ProtocolViolation   a peer or the server sent something the protocol forbids:
    │                       wrong session or round, unknown or duplicate device, wrong
    │                       vector length, bad signature, failed AEAD tag (tampered share),
    │                       inconsistent Shamir shares, or a request for BOTH the self-mask
    │                       seed and the mask key of the same device
    │   └── RangeViolation  the unmasked sum lies outside what the survivors' clipped inputs
    │                       can produce (a device masked a malformed input); nothing released
    ├── TooFewSurvivors     fewer than ``threshold`` devices (or shares) remain, so the
    │                       round cannot continue; nothing is revealed
    ├── OverflowRisk        n clipped, scaled inputs (or weights, count words) could wrap
    │                       around the modulus, or an input exceeds its declared bound
    └── StateError          a method called in the wrong stage, or a state_dict that does
                            not match this object (kind, format version, session, stage,
                            lengths); also a fedward.errors.SavedStateError

Every raise leaves the object unchanged: a caller may catch, log and carry on
(e.g. ignore a bad message from one device, or wait for more responses).
"""

from __future__ import annotations

from fedward.errors import SavedStateError

from ..errors import PrivacyError


class SecAggError(PrivacyError):
    """Base class for errors raised deliberately by fedward.privacy.secagg."""


class ConfigError(SecAggError, ValueError):
    """A configuration or session parameter is invalid."""


class ProtocolViolation(SecAggError):
    """A message breaks the protocol (or failed an integrity check)."""


class RangeViolation(ProtocolViolation):
    """A decoded aggregate is outside the range implied by the clip bound and the survivors."""


class TooFewSurvivors(SecAggError):
    """Fewer than ``threshold`` participants or shares are available."""


class OverflowRisk(SecAggError):
    """The modular sum could wrap, or an input is outside its declared bound."""


class StateError(SecAggError, SavedStateError):
    """Wrong stage for this call, or a state_dict that fails its checks.

    A :class:`~fedward.errors.SavedStateError` because ``load_state_dict``
    raises it (through :func:`fedward.saved_state.open_envelope` too); the
    wrong-stage use shares the class, so ``except SavedStateError`` around
    code that also drives a session catches those as well.
    """
