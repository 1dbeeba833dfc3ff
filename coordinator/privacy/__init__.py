"""The coordinator's side of differential privacy: a study's settings, the guard
that enforces every device's budget, and where the ledger lives between runs.

    settings.py      StudyPrivacy: the budget promised and the mechanism each task runs
    guard.py         PrivacyGuard: budgets enforced at dispatch and at admission
    events.py        PrivacyEvent: the guard's decisions as facts, for audit and metrics
    ledger_store.py  the ledger's file form and the privacy report built from it

The accounting itself is ``fedward.privacy`` (pure, shared with the edge).
"""
