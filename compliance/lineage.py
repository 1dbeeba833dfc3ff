"""Model lineage: which model came from which, built from what.

An auditor asking "what produced the model in this study's report?" needs the
chain back to the initial weights: every version, its parents, the strategy
that merged it, and the hashes of the device updates that went in.  The
lineage is a hash DAG like git's commits: each record's ``record_hash`` covers
its own fields *and its parents' record hashes*, so changing any ancestor
changes every descendant's hash, and a saved lineage can be rechecked on load
without trusting the file.

Rules (checked on :meth:`ModelLineage.record`, :meth:`ModelLineage.verify`
and on load): versions are recorded in strictly increasing order, every parent
already exists and is older than its child, parents are listed once each,
and every record hash recomputes.

Pair it with the audit log: append a ``MODEL_MERGED`` event with
:meth:`ModelVersion.audit_details` so the log commits to the lineage too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
)

from fedward.compliance.errors import LineageError, LineageStateError
from fedward.compliance.events import (
    MAX_LIST_LEN,
    MAX_NUMERIC_ITEMS,
    Clock,
    DetailValue,
    Identifier,
    Sha256Hex,
    canonical_json,
    format_ts,
    to_utc,
)
from fedward.saved_state import open_envelope, seal

__all__ = [
    "LINEAGE_FORMAT",
    "LINEAGE_STATE_FORMAT",
    "LINEAGE_STATE_KIND",
    "ModelLineage",
    "ModelVersion",
    "lineage_state",
    "record_hash",
]

LINEAGE_FORMAT = "fedward.lineage/v1"  # part of every record hash: never change it
LINEAGE_STATE_KIND = "fedward.compliance.lineage"
LINEAGE_STATE_FORMAT = 2  # 1: {"format": LINEAGE_FORMAT, "versions": [...]}, before the envelope


def lineage_state(versions: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The saved form of a lineage from its versions' JSON records (as stored)."""
    return seal(LINEAGE_STATE_KIND, LINEAGE_STATE_FORMAT, {"versions": list(versions)})


def record_hash(
    *,
    version: int,
    parents: Iterable[int],
    parent_record_hashes: Iterable[str],
    content_hash: str,
    strategy: str,
    update_hashes: Iterable[str],
    created: datetime,
) -> str:
    """SHA-256 hex over the canonical JSON of a version's fields and its
    parents' record hashes."""
    body = {
        "content_hash": content_hash,
        "created": format_ts(created),
        "format": LINEAGE_FORMAT,
        "parent_record_hashes": list(parent_record_hashes),
        "parents": list(parents),
        "strategy": strategy,
        "update_hashes": list(update_hashes),
        "version": version,
    }
    return hashlib.sha256(canonical_json(body)).hexdigest()


class ModelVersion(BaseModel):
    """One model version.  ``content_hash`` is the SHA-256 of the serialised
    weights; ``update_hashes`` name the device updates merged into it."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    version: Annotated[int, Field(ge=0)]
    parents: tuple[Annotated[int, Field(ge=0)], ...]
    content_hash: Sha256Hex
    strategy: Identifier
    update_hashes: tuple[Sha256Hex, ...]
    created: datetime
    record_hash: Sha256Hex

    @field_validator("created")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return to_utc(value)

    @field_serializer("created")
    def _ts_text(self, value: datetime) -> str:
        return format_ts(value)

    def audit_details(self) -> dict[str, DetailValue]:
        """Details for a ``MODEL_MERGED`` audit event.  Long update lists are
        summarised by count and digest so the event stays within the guard's
        limits; the digest still commits to every hash."""
        digest = hashlib.sha256("".join(self.update_hashes).encode("ascii")).hexdigest()
        details: dict[str, DetailValue] = {
            "model_version": self.version,
            "content_hash": self.content_hash,
            "record_hash": self.record_hash,
            "strategy": self.strategy,
            "update_count": len(self.update_hashes),
            "updates_digest": digest,
        }
        if len(self.parents) <= MAX_NUMERIC_ITEMS:
            details["parent_versions"] = self.parents
        if len(self.update_hashes) <= MAX_LIST_LEN:
            details["update_hashes"] = self.update_hashes
        return details


class ModelLineage:
    """The lineage of one study's model, in recording order."""

    def __init__(self, *, clock: Clock) -> None:
        self._clock = clock
        self._versions: dict[int, ModelVersion] = {}

    # -- recording -----------------------------------------------------------
    def record(
        self,
        *,
        version: int,
        parents: Iterable[int],
        content_hash: str,
        strategy: str,
        update_hashes: Iterable[str] = (),
    ) -> ModelVersion:
        """Record a new version; raise :class:`LineageError` if it breaks a rule."""
        parent_list = tuple(parents)
        latest = self.latest
        if latest is not None and version <= latest.version:
            raise LineageError(
                f"version {version} does not increase on the latest version {latest.version}"
            )
        self._check_parents(version, parent_list, self._versions)
        updates = tuple(update_hashes)
        created = to_utc(self._clock())
        try:
            entry = ModelVersion(
                version=version,
                parents=parent_list,
                content_hash=content_hash,
                strategy=strategy,
                update_hashes=updates,
                created=created,
                record_hash=record_hash(
                    version=version,
                    parents=parent_list,
                    parent_record_hashes=[self._versions[p].record_hash for p in parent_list],
                    content_hash=content_hash,
                    strategy=strategy,
                    update_hashes=updates,
                    created=created,
                ),
            )
        except ValidationError as exc:
            raise LineageError(f"invalid model version {version}: {exc}") from None
        self._versions[version] = entry
        return entry

    @staticmethod
    def _check_parents(
        version: int, parents: tuple[int, ...], known: Mapping[int, ModelVersion]
    ) -> None:
        if len(set(parents)) != len(parents):
            raise LineageError(f"version {version} lists a parent twice: {parents}")
        for p in parents:
            if p not in known:
                raise LineageError(f"version {version} has unknown parent {p}")
            if p >= version:
                raise LineageError(f"version {version} has parent {p} that is not older")

    # -- queries -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._versions)

    def __contains__(self, version: object) -> bool:
        return version in self._versions

    @property
    def latest(self) -> ModelVersion | None:
        """The most recently recorded version, if any."""
        return next(reversed(self._versions.values()), None)

    def get(self, version: int) -> ModelVersion:
        """The record of ``version``; :class:`LineageError` if unknown."""
        try:
            return self._versions[version]
        except KeyError:
            raise LineageError(f"unknown model version {version}") from None

    def versions(self) -> tuple[ModelVersion, ...]:
        """All records in recording (= increasing version) order."""
        return tuple(self._versions.values())

    def ancestry(self, version: int) -> tuple[int, ...]:
        """Every strict ancestor of ``version``, newest first."""
        seen: set[int] = set()
        stack = list(self.get(version).parents)
        while stack:
            v = stack.pop()
            if v not in seen:
                seen.add(v)
                stack.extend(self.get(v).parents)
        return tuple(sorted(seen, reverse=True))

    # -- checking and persistence -------------------------------------------
    def verify(self) -> None:
        """Re-check every rule and recompute every record hash; raise
        :class:`LineageError` at the first violation."""
        self._verify_versions(self.versions())

    @classmethod
    def _verify_versions(cls, versions: Iterable[ModelVersion]) -> None:
        known: dict[int, ModelVersion] = {}
        last: int | None = None
        for v in versions:
            if last is not None and v.version <= last:
                raise LineageError(f"version {v.version} is out of order")
            cls._check_parents(v.version, v.parents, known)
            expected = record_hash(
                version=v.version,
                parents=v.parents,
                parent_record_hashes=[known[p].record_hash for p in v.parents],
                content_hash=v.content_hash,
                strategy=v.strategy,
                update_hashes=v.update_hashes,
                created=v.created,
            )
            if expected != v.record_hash:
                raise LineageError(f"record hash of version {v.version} does not recompute")
            known[v.version] = v
            last = v.version

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready envelope (kind ``LINEAGE_STATE_KIND``) holding the versions."""
        return lineage_state([v.model_dump(mode="json") for v in self._versions.values()])

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace this lineage with ``state`` after checking it completely
        (envelope, field types, ordering, parents, record hashes).  On any
        failure :class:`LineageStateError` is raised and nothing changes."""
        payload = open_envelope(
            state,
            kind=LINEAGE_STATE_KIND,
            format_version=LINEAGE_STATE_FORMAT,
            error=LineageStateError,
        )
        if set(payload) != {"versions"} or not isinstance(payload["versions"], list):
            raise LineageStateError("a lineage state's payload holds exactly a 'versions' list")
        try:
            versions = [
                ModelVersion.model_validate_json(json.dumps(item)) for item in payload["versions"]
            ]
        except (ValidationError, TypeError, ValueError) as exc:
            raise LineageStateError(f"malformed lineage state: {exc}") from None
        try:
            self._verify_versions(versions)
        except LineageStateError:
            raise
        except LineageError as exc:
            raise LineageStateError(str(exc)) from exc
        self._versions = {v.version: v for v in versions}
