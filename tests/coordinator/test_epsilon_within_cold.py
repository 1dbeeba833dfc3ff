"""The first task's epsilon is computed in a forked child within a time limit
(``fedward.coordinator.privacy.timed``); the limit must not pay for importing Opacus.

Opacus is imported lazily, so a fresh coordinator process has not loaded it when
the first DP study arrives; the child then spent its 2 s importing it (5 s on a
cold machine) and a valid study was refused. The parent now loads it first.
"""

from __future__ import annotations

import subprocess
import sys


def test_the_parent_loads_the_accountants_before_it_forks_the_timed_child() -> None:
    # Prepare: a fresh process, Opacus not yet imported; a limit no import could beat
    probe = (
        "import sys\n"
        "from fedward.coordinator.privacy.timed import epsilon_within\n"
        "from fedward.privacy.accounting import Accountant, MechanismStep\n"
        "before = 'opacus.accountants' in sys.modules\n"
        "try:\n"
        "    epsilon_within([MechanismStep(noise_multiplier=1.5, sample_rate=0.25, steps=8)],\n"
        "                   delta=1e-5, accountant=Accountant.RDP, seconds=1e-6)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
        "print(before, 'opacus.accountants' in sys.modules)\n"
    )
    # Execute
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    # Assert: not loaded before the call, loaded in the parent by it (the child is
    # refused at this limit either way: only the parent's import is under test)
    assert out.stdout.strip().splitlines()[-1] == "False True", out.stdout + out.stderr
