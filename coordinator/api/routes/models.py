"""Model versions of a study: the lineage list and full-model downloads."""

from __future__ import annotations

from fastapi import APIRouter, Response

from fedward.coordinator.service import ModelVersionInfo

from ..deps import OperatorDep, ServiceDep
from ..errors import responses
from .common import StudyIdPath, VersionPath

router = APIRouter(
    prefix="/studies/{study_id}/models", tags=["models"], responses=responses(401, 404, 422)
)

OCTET_STREAM = "application/octet-stream"


@router.get("", response_model=list[ModelVersionInfo], summary="Model versions, oldest first")
def list_versions(
    study_id: StudyIdPath, service: ServiceDep, _: OperatorDep
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
    summary="Download a model version as a protocol frame",
)
def download(
    study_id: StudyIdPath, version: VersionPath, service: ServiceDep, _: OperatorDep
) -> Response:
    frame = service.model_frame(study_id, version)
    sha = next(v.sha256 for v in service.model_versions(study_id) if v.version == version)
    return Response(
        content=frame,
        media_type=OCTET_STREAM,
        headers={
            "X-Content-SHA256": sha,
            "Content-Disposition": f'attachment; filename="{study_id}-v{version}.fwfr"',
        },
    )
