"""An epsilon computed within a time limit, in a child process that can be stopped.

Why a process: Opacus' PRV accountant can take minutes (and gigabytes) for
settings that pass every schema check (noise multiplier 0.01 did not finish in
90 s at 12 GB), and a thread cannot be stopped. The coordinator computes the
first task's epsilon once, at study creation, outside its lock, here; a
computation that overruns is killed and the study refused, so neither the
request nor any later route waits on it.

The child is forked (the accountant is already imported, so it starts in
milliseconds); it only computes and sends a float back.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence

from fedward.privacy.accounting import Accountant, MechanismStep, epsilon_for, load_accountants
from fedward.privacy.errors import PolicyError


class EpsilonTooSlow(PolicyError):
    """The epsilon was not computed within the limit (the child was stopped)."""


def _child(conn, history, delta, accountant) -> None:  # runs in the forked process
    try:
        conn.send(("ok", epsilon_for(history, delta=delta, accountant=accountant)))
    except Exception as exc:  # sent back and re-raised in the parent as a PolicyError
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def epsilon_within(
    history: Sequence[MechanismStep],
    *,
    delta: float,
    accountant: Accountant,
    seconds: float,
) -> float:
    """``epsilon_for(history)``, or ``EpsilonTooSlow`` after ``seconds`` (child killed)."""
    if not seconds > 0:
        raise ValueError("seconds must be > 0")
    # Opacus is imported lazily (plain studies never load it): load it here, outside the
    # limit, or a cold coordinator's child spends it importing (5 s measured on one
    # machine against a 2 s limit, which refused a valid DP study)
    load_accountants()
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_child, args=(sender, tuple(history), delta, accountant), daemon=True
    )
    child.start()
    sender.close()
    try:
        if not receiver.poll(seconds):
            raise EpsilonTooSlow(
                f"the {accountant.value} epsilon of {[s.as_tuple() for s in history]} was not "
                f"computed within {seconds:g} s"
            )
        status, value = receiver.recv()
    except EOFError as exc:
        raise PolicyError(f"the epsilon computation died (exit code {child.exitcode})") from exc
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()
        child.join()
    if status != "ok":
        raise PolicyError(f"the epsilon could not be computed: {value}")
    return float(value)
