"""Errors raised by the compliance layer.

Every error derives from :class:`ComplianceError` (itself a
:class:`fedward.errors.FedwardError`), so a caller (the coordinator
engine, the CLI's ``audit verify``) can catch the whole family in one place
while tests and auditors can still tell *why* something failed:

``ComplianceError``
    ``AuditIntegrityError``   the log, a tree head or a proof does not verify
    ``ForbiddenAuditContent`` an event tried to carry health data (or anything
                              outside the small detail grammar)
    ``LineageError``          the model-lineage graph is inconsistent
        ``LineageStateError`` a saved lineage fails its checks on load (also a
                              :class:`fedward.errors.SavedStateError`)
    ``KeyFileError``          a signing key file is missing, malformed or
                              readable by someone other than its owner
    ``AuditStoreBusy``        another writer already holds the log file

None of them subclass ``ValueError`` on purpose: pydantic turns ``ValueError``
raised inside validators into a generic ``ValidationError``, and we want a
forbidden-content refusal to stay recognisable as exactly that.
"""

from __future__ import annotations

from fedward.errors import FedwardError, SavedStateError

__all__ = [
    "AuditIntegrityError",
    "AuditStoreBusy",
    "ComplianceError",
    "ForbiddenAuditContent",
    "KeyFileError",
    "LineageError",
]


class ComplianceError(FedwardError):
    """Base class of every error raised by :mod:`fedward.compliance`."""


class AuditIntegrityError(ComplianceError):
    """Verification of the audit log failed.

    ``index`` is the position (0-based entry number, which equals the entry's
    ``seq`` in an intact log) of the first entry found to be bad, or ``None``
    when the problem is not tied to one entry (e.g. a tree head).  ``what`` is a
    human-readable description for the operator.
    """

    def __init__(self, what: str, *, index: int | None = None) -> None:
        self.index = index
        self.what = what
        where = f"entry {index}: " if index is not None else ""
        super().__init__(f"{where}{what}")


class ForbiddenAuditContent(ComplianceError):
    """An audit event tried to carry content the audit log must never hold.

    ``key`` names the offending detail key (``None`` when the whole mapping is
    at fault) and ``reason`` says which rule it broke.
    """

    def __init__(self, reason: str, *, key: str | None = None) -> None:
        self.key = key
        self.reason = reason
        where = f"details[{key!r}]: " if key is not None else "details: "
        super().__init__(f"{where}{reason}")


class LineageError(ComplianceError):
    """The model lineage is inconsistent (unknown parent, non-increasing
    version, hash mismatch on load, unsupported format)."""


class LineageStateError(LineageError, SavedStateError):
    """A saved lineage state that fails its checks on load (kind, format, hashes)."""


class KeyFileError(ComplianceError):
    """A signing-key file cannot be used: wrong permissions, wrong owner,
    wrong key type, or unreadable."""


class AuditStoreBusy(ComplianceError):
    """Another process (or another store object) already writes to this log.

    A hash-chained log has exactly one writer; two writers would fork the
    chain, so the second one is refused instead of silently interleaving."""
