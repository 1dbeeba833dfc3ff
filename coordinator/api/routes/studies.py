"""Studies: create, list, inspect, and move through DRAFT -> RUNNING <-> PAUSED -> STOPPED."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from fedward.compliance.reports import BudgetReport
from fedward.coordinator import audit
from fedward.coordinator.privacy.settings import PrivacySettingsRefused
from fedward.coordinator.secagg import SecAggPolicyError
from fedward.coordinator.service import StudyInfo, StudyStatus
from fedward.coordinator.study_spec import ModelTooLarge, check_model_size
from fedward.privacy.secagg.errors import SecAggError

from ..deps import BudgetsRead, EvaluationsWrite, ServiceDep, StudiesRead, StudiesWrite
from ..errors import ApiError, ErrorCode, responses
from ..schemas import EvaluationReport, StudyCreate
from .common import StudyIdPath

router = APIRouter(
    prefix="/studies", tags=["studies"], responses=responses(401, 403, 413, 422, 429)
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyInfo,
    responses=responses(409),
    summary="Create a study (its spec is immutable afterwards)",
)
def create_study(
    request: Request, body: StudyCreate, service: ServiceDep, caller: StudiesWrite
) -> StudyInfo:
    try:
        spec = body.spec.to_spec()
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_input=False)) from None
    settings = request.app.state.settings
    try:  # before anything is built or measured: the size is arithmetic first
        check_model_size(spec, max_bytes=min(settings.max_model_bytes, settings.max_message_bytes))
    except ModelTooLarge as exc:
        raise ApiError(422, ErrorCode.MODEL_TOO_LARGE, str(exc)) from None
    try:  # a DP study's first task is checked once, bounded in time, outside the lock
        return service.create_study(spec, study_id=body.study_id, by=caller.actor_id)
    except PrivacySettingsRefused as exc:
        raise ApiError(422, ErrorCode.VALIDATION_ERROR, str(exc)) from None
    except (SecAggPolicyError, SecAggError) as exc:  # e.g. a ring too small for a cohort's sum
        raise ApiError(422, ErrorCode.VALIDATION_ERROR, f"secagg: {exc}") from None


@router.get("", response_model=list[StudyInfo], summary="List studies")
def list_studies(service: ServiceDep, _: StudiesRead) -> list[StudyInfo]:
    return service.list_studies()


@router.get("/{study_id}", response_model=StudyInfo, responses=responses(404))
def get_study(study_id: StudyIdPath, service: ServiceDep, _: StudiesRead) -> StudyInfo:
    return service.study(study_id)


@router.get(
    "/{study_id}/status",
    response_model=StudyStatus,
    responses=responses(404),
    summary="Version, counters, devices by state, rejections by reason",
)
def get_status(study_id: StudyIdPath, service: ServiceDep, _: StudiesRead) -> StudyStatus:
    return service.status(study_id)


@router.get(
    "/{study_id}/privacy",
    response_model=BudgetReport,
    responses=responses(404),
    summary="Privacy budgets: each device's composed epsilon against the study's budget",
    description=(
        "Built from the live ledger, whose every epsilon is recomputed from the mechanisms "
        "charged (never copied from a device's claim). 404 `no_privacy_policy` for a study "
        "without differential privacy."
    ),
)
def get_privacy(study_id: StudyIdPath, service: ServiceDep, _: BudgetsRead) -> BudgetReport:
    return service.privacy_report(study_id)


@router.post("/{study_id}/start", response_model=StudyInfo, responses=responses(404, 409))
def start(study_id: StudyIdPath, service: ServiceDep, caller: StudiesWrite) -> StudyInfo:
    return service.start(study_id, by=caller.actor_id)


@router.post("/{study_id}/pause", response_model=StudyInfo, responses=responses(404, 409))
def pause(study_id: StudyIdPath, service: ServiceDep, caller: StudiesWrite) -> StudyInfo:
    return service.pause(study_id, by=caller.actor_id)


@router.post("/{study_id}/resume", response_model=StudyInfo, responses=responses(404, 409))
def resume(study_id: StudyIdPath, service: ServiceDep, caller: StudiesWrite) -> StudyInfo:
    return service.resume(study_id, by=caller.actor_id)


@router.post("/{study_id}/stop", response_model=StudyInfo, responses=responses(404, 409))
def stop(study_id: StudyIdPath, service: ServiceDep, caller: StudiesWrite) -> StudyInfo:
    return service.stop(study_id, by=caller.actor_id)


@router.post(
    "/{study_id}/evaluations",
    response_model=StudyStatus,
    responses=responses(404),
    summary="Report the accuracy an evaluator measured for a model version",
)
def report_evaluation(
    study_id: StudyIdPath, body: EvaluationReport, service: ServiceDep, caller: EvaluationsWrite
) -> StudyStatus:
    status = service.report_evaluation(study_id, version=body.version, accuracy=body.accuracy)
    entry = audit.evaluation_reported(
        by=caller.actor_id, version=body.version, accuracy=float(body.accuracy)
    )
    service.record_audit(entry, study_id=study_id)
    return status
