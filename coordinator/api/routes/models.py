"""Model versions of a study: the version list, full-model downloads (audited), lineage."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel

from fedward.compliance import LineageError, ModelLineage
from fedward.compliance.lineage import lineage_state
from fedward.coordinator import audit
from fedward.coordinator.service import ModelVersionInfo, ModelVersionNotFound

from ..deps import LineageRead, ModelsRead, ServiceDep
from ..errors import ApiError, ErrorCode, responses
from .common import StudyIdPath, VersionPath

router = APIRouter(
    prefix="/studies/{study_id}/models",
    tags=["models"],
    responses=responses(401, 403, 404, 413, 422, 429),
)

OCTET_STREAM = "application/octet-stream"


class LineageView(BaseModel):
    """A model version and every version it descends from, as recorded and re-verified."""

    study_id: str
    version: int
    ancestry: list[int]
    """``version`` first, then its parents back to the initial model."""
    versions: list[dict[str, Any]]
    """The lineage records of ``ancestry`` (content hash, parents, update hashes,
    record hash chaining each to its parents)."""
    verified: bool
    """Every record hash of the study's lineage was recomputed and matched."""


@router.get("", response_model=list[ModelVersionInfo], summary="Model versions, oldest first")
def list_versions(
    study_id: StudyIdPath, service: ServiceDep, _: ModelsRead
) -> list[ModelVersionInfo]:
    return service.model_versions(study_id)


@router.get(
    "/{version}",
    response_class=Response,
    responses={
        200: {
            "description": "A ModelDownload frame holding every tensor of the version. "
            "Its tensor payload hashes to X-Content-SHA256 (the lineage's content hash).",
            "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    summary="Download a model version as a protocol frame (audited)",
)
def download(
    study_id: StudyIdPath, version: VersionPath, service: ServiceDep, caller: ModelsRead
) -> Response:
    frame = service.model_frame(study_id, version)
    sha = next(v.sha256 for v in service.model_versions(study_id) if v.version == version)
    entry = audit.model_downloaded(by=caller.actor_id, version=version, model_sha256=sha)
    service.record_audit(entry, study_id=study_id)
    return Response(
        content=frame,
        media_type=OCTET_STREAM,
        headers={
            "X-Content-SHA256": sha,
            "Content-Disposition": f'attachment; filename="{study_id}-v{version}.fwfr"',
        },
    )


@router.get(
    "/{version}/lineage",
    response_model=LineageView,
    summary="Where a model version came from: its ancestry and their lineage records",
)
def lineage(
    study_id: StudyIdPath, version: VersionPath, service: ServiceDep, _: LineageRead
) -> LineageView:
    service.study(study_id)  # 404 for an unknown study
    rows = service.repository.model_versions(study_id)
    records = [row.lineage for row in rows]
    graph = ModelLineage(clock=lambda: 0.0)
    try:
        graph.load_state_dict(lineage_state(records))
        graph.verify()
        verified = True
    except LineageError:
        verified = False
    if verified and version not in graph:
        raise ModelVersionNotFound(f"{study_id} has no model version {version}")
    if verified:
        ancestry = [version, *graph.ancestry(version)]
        by_version = {v.version: v for v in graph.versions()}
        chosen = [by_version[v].model_dump(mode="json") for v in ancestry]
    else:  # report what is stored, flagged: the auditor must see a broken lineage
        stored = {int(r["version"]): r for r in records if "version" in r}
        if version not in stored:
            raise ModelVersionNotFound(f"{study_id} has no model version {version}")
        ancestry, chosen, cursor = [], [], version
        while cursor in stored and cursor not in ancestry:
            ancestry.append(cursor)
            chosen.append(json.loads(json.dumps(stored[cursor])))
            parents = stored[cursor].get("parents") or []
            cursor = int(parents[0]) if parents else -1
    if not chosen:
        raise ApiError(404, ErrorCode.MODEL_VERSION_NOT_FOUND, f"no lineage of {version}")
    return LineageView(
        study_id=study_id, version=version, ancestry=ancestry, versions=chosen, verified=verified
    )
