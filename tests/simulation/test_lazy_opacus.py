"""Issue 14 item 9: importing the accountant does not import Opacus (over a second
of start-up most studies never use); computing an epsilon does, and still works."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import fedward.privacy.accounting as accounting
before = "opacus" in sys.modules
calc = accounting.EpsilonCalculator()
steps = [accounting.MechanismStep(noise_multiplier=1.0, sample_rate=0.01, steps=100)]
eps = calc.epsilon(steps, delta=1e-5, accountant=accounting.Accountant.RDP)
ref = accounting.epsilon_for(steps, delta=1e-5, accountant=accounting.Accountant.RDP)
print(json.dumps({"before": before, "after": "opacus" in sys.modules, "eps": eps, "ref": ref}))
"""


def test_importing_the_accountant_does_not_import_opacus() -> None:
    # Execute: a fresh interpreter, so no other test's imports count
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=300
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    # Assert
    assert figures["before"] is False
    assert figures["after"] is True
    assert figures["eps"] == figures["ref"] > 0
