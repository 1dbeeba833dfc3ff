"""Typed audit events, and the rule that keeps health data out of the log.

What the audit log holds (HIPAA 45 CFR 164.312(b): record *who did what,
when, with what outcome*):

* who    -- :class:`Actor`: an authenticated device, operator or the coordinator;
* what   -- :class:`AuditAction` and the study it concerns;
* when   -- ``ts``, taken from an injected clock, stored as ISO 8601 UTC;
* outcome -- :class:`Outcome`;
* details -- a *flat* mapping of small facts: update hashes (SHA-256 hex),
  model versions and their parents, cohort and dropout ids, and privacy
  parameters (noise multiplier sigma, clip norm, sample rate, steps,
  accountant, cumulative epsilon at delta; see :func:`privacy_details`).

What it must never hold: health data.  Not samples, signal windows, features,
labels or label histograms, not tensors or model updates, not raw bytes.  The
log is kept for years, copied to auditors and is append-only by design, so
anything that gets in can never be taken out again.  The guard in
:func:`check_details` therefore refuses, with :class:`ForbiddenAuditContent`:

1. keys that name health data (:data:`DENYLIST_WORDS` anywhere in a
   snake_case key, or a key equal to one of :data:`DENYLIST_KEYS`), and keys
   that are not lower snake_case;
2. values outside the grammar ``str (<= 256 chars) | int | bool | finite float
   | None | list (<= 64 items) of str/int ids``: so no bytes, no arrays or
   tensors (anything with ``__array__``, ``shape`` or ``__dlpack__``), no
   nested mappings, no floats or bools inside lists;
3. numbers in bulk: a list may hold at most :data:`MAX_NUMERIC_ITEMS` numeric
   items (ints, or strings that parse as numbers: ``["0.12", "0.13", ...]`` is
   still a signal), a string at most that many numeric tokens, and one event at
   most :data:`MAX_NUMERIC_TOTAL` numbers in all (so a signal cannot be spread
   over ``v0``, ``v1``, ... keys).

The guard is conservative: a benign key such as ``label_count`` is refused
too, because a per-device label histogram *is* health data.  Device ids
should be non-numeric (``"dev-0017"``), as long lists of numeric ids are
indistinguishable from a sampled signal.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_serializer,
    field_validator,
)

from fedward.compliance.errors import ForbiddenAuditContent

__all__ = [
    "DENYLIST_KEYS",
    "DENYLIST_WORDS",
    "MAX_DETAIL_KEYS",
    "MAX_LIST_LEN",
    "MAX_NUMERIC_ITEMS",
    "MAX_NUMERIC_TOTAL",
    "MAX_STR_LEN",
    "Actor",
    "ActorKind",
    "AuditAction",
    "AuditEntry",
    "AuditEvent",
    "Clock",
    "DetailValue",
    "Identifier",
    "Outcome",
    "Sha256Hex",
    "canonical_json",
    "check_details",
    "format_ts",
    "privacy_details",
    "sha256_hex",
    "to_utc",
]

# -- limits of the detail grammar -------------------------------------------
MAX_DETAIL_KEYS = 32
"""At most this many keys in one event's details."""
MAX_STR_LEN = 256
"""Longest string value (characters)."""
MAX_LIST_LEN = 64
"""Longest list of ids."""
MAX_ID_LEN = 128
"""Longest string inside a list of ids."""
MAX_NUMERIC_ITEMS = 16
"""Most numeric items in one list, or numeric tokens in one string."""
MAX_NUMERIC_TOTAL = 32
"""Most numbers (scalars, list items, tokens in strings) in one event."""
_INT_BOUND = 2**63
"""Ints must fit in a signed 64-bit integer so every JSON reader agrees on them."""

DENYLIST_WORDS = frozenset(
    {
        # signals and their modalities
        "samples", "signal", "signals", "waveform", "waveforms", "raw",
        "ecg", "ekg", "ppg", "eeg", "emg", "eda", "gsr", "rsp", "bvp", "spo2",
        "accel", "accelerometer", "gyro", "imu", "bpm", "hrv", "heartrate", "glucose",
        # what a model is trained on
        "features", "feature", "label", "labels", "window", "windows",
        # identifiers of a person
        "patient", "mrn", "ssn", "dob", "birthdate", "diagnosis",
    }
)  # fmt: skip
"""A key is refused if any of its ``_``-separated words (trailing digits
ignored) is one of these."""

DENYLIST_KEYS = frozenset(
    {
        "x", "y", "data", "values", "inputs", "input", "targets", "target", "series",
        "record", "records", "tensor", "tensors", "array", "arrays",
        "gradient", "gradients", "grads", "weights", "update",
    }
)  # fmt: skip
"""A key equal to one of these is refused (too generic to ban as a word)."""

_KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TOKEN_SPLIT = re.compile(r"[\s,;:|/\\\[\](){}<>=]+")
_NUMBER_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")

Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")]
"""An id of a device, operator, study or coordinator: ASCII, no spaces."""

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
"""A SHA-256 digest as 64 lower-case hex characters."""

DetailValue = str | int | bool | float | None | tuple[str | int, ...]
"""What a detail value may be once it has passed :func:`check_details`."""

Clock = Callable[[], datetime | float]
"""An injected clock: returns an aware ``datetime`` or POSIX seconds."""


class ActorKind(Enum):
    """Who acted."""

    DEVICE = "device"
    OPERATOR = "operator"
    COORDINATOR = "coordinator"
    ANONYMOUS = "anonymous"  # a sender that proved no identity (unsigned, forged, no secret)


class AuditAction(Enum):
    """What happened.  One member per decision the stack takes on the way from
    enrolment to a merged model."""

    DEVICE_ENROLLED = "device_enrolled"
    DEVICE_REVOKED = "device_revoked"
    DEVICE_AUTH_FAILED = "device_auth_failed"
    STUDY_CREATED = "study_created"
    STUDY_STARTED = "study_started"
    STUDY_PAUSED = "study_paused"
    STUDY_RESUMED = "study_resumed"
    STUDY_STOPPED = "study_stopped"
    TASK_DISPATCHED = "task_dispatched"
    TASK_REFUSED = "task_refused"  # a device declined a task (e.g. its own budget is spent)
    TASK_FAILED = "task_failed"  # no usable answer: deadline, revocation, stop, dropout
    UPDATE_ACCEPTED = "update_accepted"
    UPDATE_REJECTED = "update_rejected"
    MODEL_MERGED = "model_merged"
    PRIVACY_SPENT = "privacy_spent"
    BUDGET_EXHAUSTED = "budget_exhausted"
    SECAGG_ROUND = "secagg_round"
    LOG_VERIFIED = "log_verified"
    LOG_REPAIRED = "log_repaired"  # a torn last record was cut off at start (a crash mid-write)
    STUDY_RESTORE_FAILED = "study_restore_failed"  # a study could not be rebuilt at start
    # REST API (fedward.coordinator.api): who called, and what they took or changed
    API_AUTH_FAILED = "api_auth_failed"  # aggregated per source and interval
    API_ACCESS_DENIED = "api_access_denied"  # a valid token outside its role
    MODEL_DOWNLOADED = "model_downloaded"
    EVALUATION_REPORTED = "evaluation_reported"
    TOKEN_ISSUED = "token_issued"
    TOKEN_REVOKED = "token_revoked"


class Outcome(Enum):
    """How it ended."""

    SUCCESS = "success"
    FAILURE = "failure"
    DENIED = "denied"


class Actor(BaseModel):
    """An authenticated principal (HIPAA 164.312(d)): its kind and its id."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    kind: ActorKind
    id: Identifier


# -- time --------------------------------------------------------------------
def to_utc(value: datetime | float) -> datetime:
    """Normalise a clock reading to an aware UTC ``datetime``.

    Naive datetimes are refused: guessing their zone would make timestamps
    from different hosts incomparable.
    """
    if isinstance(value, bool):
        raise TypeError("a clock must return a datetime or POSIX seconds, not bool")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("clock returned a non-finite time")
        return datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: the audit clock must be timezone-aware")
        return value.astimezone(UTC)
    raise TypeError(f"a clock must return a datetime or POSIX seconds, got {type(value)!r}")


def format_ts(value: datetime) -> str:
    """Canonical timestamp text: ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (fixed width,
    so re-serialising a parsed entry gives the same bytes)."""
    return to_utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(obj: object) -> bytes:
    """The one byte form of a JSON value that we hash and sign.

    Sorted keys, no whitespace, UTF-8 (not ASCII escapes), no NaN/Infinity,
    floats in Python's shortest round-trip form.  A verifier parses a stored
    line and re-derives these bytes; any other spelling of the same data is
    reported as non-canonical, so the bytes on disk are the only truth.
    """
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` as lower-case hex: how updates and models are named
    in the log."""
    return hashlib.sha256(data).hexdigest()


# -- the health-data guard ---------------------------------------------------
def _key_problem(key: object) -> str | None:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        return "keys must be lower snake_case ASCII, 1-64 characters"
    if key in DENYLIST_KEYS:
        return "key names health data or model tensors"
    for word in key.split("_"):
        if word.rstrip("0123456789") in DENYLIST_WORDS:
            return f"key word {word!r} names health data"
    return None


def _is_array_like(value: object) -> bool:
    return any(hasattr(value, attr) for attr in ("__array__", "__dlpack__", "shape", "dtype"))


def _numeric_tokens(text: str) -> int:
    return sum(1 for tok in _TOKEN_SPLIT.split(text) if _NUMBER_RE.match(tok))


def _check_text(text: str, *, key: str, limit: int) -> int:
    if len(text) > limit:
        raise ForbiddenAuditContent(f"string longer than {limit} characters", key=key)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ForbiddenAuditContent("string is not valid Unicode text", key=key) from None
    numbers = _numeric_tokens(text)
    if numbers > MAX_NUMERIC_ITEMS:
        raise ForbiddenAuditContent(
            f"string holds {numbers} numbers (at most {MAX_NUMERIC_ITEMS})", key=key
        )
    return numbers


def _check_value(value: object, *, key: str) -> tuple[DetailValue, int]:
    """Validate one value; return it normalised and how many numbers it holds."""
    if isinstance(value, Enum):
        value = value.value  # e.g. the privacy package's accountant enum: log its value
    if value is None or isinstance(value, bool):
        return value, 0
    if _is_array_like(value) and getattr(value, "shape", None) == () and hasattr(value, "item"):
        value = value.item()  # a NumPy/torch scalar: judge the Python number it holds
        if isinstance(value, bool):
            return value, 0
    if isinstance(value, int):
        value = int(value)
        if not -_INT_BOUND <= value < _INT_BOUND:
            raise ForbiddenAuditContent("integer outside the signed 64-bit range", key=key)
        return value, 1
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ForbiddenAuditContent("float must be finite", key=key)
        return float(value), 1
    if isinstance(value, str):
        value = str.__str__(value)  # a plain str, whatever subclass came in
        return value, _check_text(value, key=key, limit=MAX_STR_LEN)
    if isinstance(value, bytes | bytearray | memoryview):
        raise ForbiddenAuditContent("raw bytes are not allowed (log a sha256 hex instead)", key=key)
    if _is_array_like(value):
        raise ForbiddenAuditContent("arrays and tensors are not allowed", key=key)
    if isinstance(value, Mapping):
        raise ForbiddenAuditContent("nested mappings are not allowed (details are flat)", key=key)
    if isinstance(value, list | tuple):
        return _check_list(value, key=key)
    raise ForbiddenAuditContent(f"unsupported value type {type(value).__name__}", key=key)


def _check_list(items: list[object] | tuple[object, ...], *, key: str) -> tuple[DetailValue, int]:
    if len(items) > MAX_LIST_LEN:
        raise ForbiddenAuditContent(f"list longer than {MAX_LIST_LEN} items", key=key)
    numeric = 0
    out: list[str | int] = []
    for item in items:
        if isinstance(item, Enum):
            item = item.value
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise ForbiddenAuditContent("lists may hold only str or int ids", key=key)
        if isinstance(item, int):
            if not -_INT_BOUND <= item < _INT_BOUND:
                raise ForbiddenAuditContent("integer outside the signed 64-bit range", key=key)
            item = int(item)
            numeric += 1
        else:
            item = str.__str__(item)
            numeric += _check_text(item, key=key, limit=MAX_ID_LEN)
        out.append(item)
    if numeric > MAX_NUMERIC_ITEMS:
        raise ForbiddenAuditContent(
            f"list holds {numeric} numbers (at most {MAX_NUMERIC_ITEMS}): looks like a signal",
            key=key,
        )
    return tuple(out), numeric


def check_details(details: object) -> dict[str, DetailValue]:
    """Enforce the detail grammar and the health-data guard (see module doc).

    Returns a new plain ``dict`` with lists turned into tuples, so the event
    cannot be changed after it was checked.  Raises
    :class:`ForbiddenAuditContent` naming the key and the rule broken.
    """
    if details is None:
        return {}
    if not isinstance(details, Mapping):
        raise ForbiddenAuditContent("details must be a mapping")
    if len(details) > MAX_DETAIL_KEYS:
        raise ForbiddenAuditContent(f"more than {MAX_DETAIL_KEYS} keys")
    out: dict[str, DetailValue] = {}
    total = 0
    for key, value in details.items():
        problem = _key_problem(key)
        if problem is not None:
            raise ForbiddenAuditContent(problem, key=str(key)[:64])
        out[key], numbers = _check_value(value, key=key)
        total += numbers
    if total > MAX_NUMERIC_TOTAL:
        raise ForbiddenAuditContent(
            f"event holds {total} numbers in all (at most {MAX_NUMERIC_TOTAL})"
        )
    return out


# -- the event ---------------------------------------------------------------
class AuditEvent(BaseModel):
    """One audited decision.  ``seq`` and ``ts`` are assigned by the log."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    seq: Annotated[int, Field(ge=0)]
    ts: datetime
    actor: Actor
    action: AuditAction
    outcome: Outcome
    study_id: Identifier | None = None
    details: dict[str, DetailValue] = Field(default_factory=dict)

    @field_validator("ts")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return to_utc(value)  # a naive datetime raises ValueError -> ValidationError

    @field_validator("details", mode="before")
    @classmethod
    def _guard(cls, value: Any) -> dict[str, DetailValue]:
        return check_details(value)

    @field_serializer("ts")
    def _ts_text(self, value: datetime) -> str:
        return format_ts(value)


class AuditEntry(AuditEvent):
    """An event as stored: the event plus ``prev_hash``, the RFC 6962 leaf hash
    of the previous entry (64 zeros for the first).  The chain lets a reader
    notice a deleted or reordered line without rebuilding the tree."""

    prev_hash: Sha256Hex


# -- helpers for the events auditors ask about --------------------------------
def privacy_details(
    *,
    noise_multiplier: float,
    clip_norm: float,
    sample_rate: float,
    steps: int,
    accountant: str | Enum,
    epsilon: float,
    delta: float,
    epsilon_budget: float | None = None,
) -> dict[str, DetailValue]:
    """Details for a PRIVACY_SPENT / BUDGET_EXHAUSTED event.

    ``epsilon`` is the *cumulative* epsilon at ``delta`` after ``steps`` steps,
    composed by ``accountant`` (e.g. ``"rdp"`` or ``"prv"``), not the last
    round's: that is the number an auditor compares with the budget.
    """
    for name, value in (
        ("noise_multiplier", noise_multiplier),
        ("clip_norm", clip_norm),
        ("epsilon", epsilon),
    ):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be finite and >= 0, got {value}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    out: dict[str, DetailValue] = {
        "noise_multiplier": float(noise_multiplier),
        "clip_norm": float(clip_norm),
        "sample_rate": float(sample_rate),
        "steps": int(steps),
        "accountant": str(accountant.value if isinstance(accountant, Enum) else accountant),
        "epsilon": float(epsilon),
        "delta": float(delta),
    }
    if epsilon_budget is not None:
        out["epsilon_budget"] = float(epsilon_budget)
    return check_details(out)
