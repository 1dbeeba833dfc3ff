"""Names that two floor-1 packages both speak and neither may own (floor 0).

``fedward.protocol`` (the wire contract) and ``fedward.privacy`` (the
accounting) sit on the same floor and may not import each other, yet both
name the privacy accountant: the wire carries it in ``DpParams`` and
``PrivacyReport``, and ``fedward.privacy.accounting`` computes epsilon with it. Defined
here, below both, the one enum is imported downwards by each, so a value the
coordinator reads off the wire is the very member the accounting takes, with
no conversion between two look-alike enums.

Why not let privacy take plain strings instead: it checks the accountant it is
given (``isinstance``, ``is Accountant.GDP``) throughout, and strings would
move that check to every caller. Why only this enum: ``DeviceClass`` is named
by the wire contract and by layers above it (simulation), so the wire contract
owns it (``fedward.protocol.messages``) and the others import it from there.

Floor 0: imports nothing of ours.
"""

from __future__ import annotations

from enum import StrEnum


class Accountant(StrEnum):
    """Which Opacus accountant turns a mechanism history into epsilon.

    The values are Opacus' names and go on the wire as they are.
    """

    RDP = "rdp"  # Renyi DP, Opacus' conservative default analysis
    PRV = "prv"  # privacy random variables: tighter, numerically composed
    GDP = "gdp"  # Gaussian DP (CLT): can underestimate epsilon; only by explicit opt-in
