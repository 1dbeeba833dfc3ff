"""Devices of a study: enrol (provisioning by an operator), list, revoke."""

from __future__ import annotations

from fastapi import APIRouter, status
from pydantic import BaseModel

from fedward.coordinator.service import DeviceInfo
from fedward.coordinator.service.devices import EnrolmentUnavailable
from fedward.protocol.messages import Enrol

from ..deps import DevicesRead, DevicesWrite, ServiceDep
from ..errors import ApiError, ErrorCode, responses
from ..schemas import EnrolRequest
from .common import DeviceIdPath, StudyIdPath

router = APIRouter(
    prefix="/studies/{study_id}/devices",
    tags=["devices"],
    responses=responses(401, 403, 404, 413, 422, 429),
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DeviceInfo,
    responses=responses(409),
    summary="Enrol a device (same key again is idempotent; a refusal is 409)",
)
def enrol(
    study_id: StudyIdPath, body: EnrolRequest, service: ServiceDep, caller: DevicesWrite
) -> DeviceInfo:
    service.study(study_id)  # 404 before anything else
    ack = service.enrol(
        study_id,
        Enrol(
            device_id=body.device_id,
            study_id=study_id,
            device_class=body.device_class,
            memory_bytes=body.memory_bytes,
            public_key=body.public_key,
        ),
        by=caller.actor_id,
    )
    if not ack.accepted:
        raise ApiError(409, ErrorCode.ENROL_REFUSED, ack.reason)
    return next(d for d in service.list_devices(study_id) if d.device_id == body.device_id)


class EnrolmentSecretOut(BaseModel):
    device_id: str
    secret: str
    """One-time; shown once. Hand it to the device (``fedward edge run --enrolment-secret-file``)."""


@router.post(
    "/{device_id}/enrolment-secret",
    status_code=status.HTTP_201_CREATED,
    response_model=EnrolmentSecretOut,
    responses=responses(409),
    summary="Issue a one-time enrolment secret for a device id (audited; shown once)",
)
def enrolment_secret(
    study_id: StudyIdPath, device_id: DeviceIdPath, service: ServiceDep, caller: DevicesWrite
) -> EnrolmentSecretOut:
    service.study(study_id)  # 404 before anything else
    try:
        secret = service.issue_enrolment_secret(study_id, device_id, by=caller.actor_id)
    except EnrolmentUnavailable as exc:
        raise ApiError(409, ErrorCode.ENROL_REFUSED, str(exc)) from exc
    return EnrolmentSecretOut(device_id=device_id, secret=secret)


@router.get("", response_model=list[DeviceInfo], summary="List a study's devices")
def list_devices(study_id: StudyIdPath, service: ServiceDep, _: DevicesRead) -> list[DeviceInfo]:
    return service.list_devices(study_id)


@router.post(
    "/{device_id}/revoke",
    response_model=DeviceInfo,
    summary="Revoke a device for good (its task in flight fails)",
)
def revoke(
    study_id: StudyIdPath, device_id: DeviceIdPath, service: ServiceDep, caller: DevicesWrite
) -> DeviceInfo:
    return service.revoke(study_id, device_id, by=caller.actor_id)
