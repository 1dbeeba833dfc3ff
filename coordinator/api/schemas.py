"""Request bodies of the API (responses are the service's own views).

Why the extra checks: FastAPI validates a parsed JSON body in pydantic's
*python* (lax) mode, where ``true`` becomes ``1`` and ``"3"`` becomes ``3``.
These values size training runs and memory budgets on devices that handle
health data, so a body that is not literally a number where a number is due
is refused (422) rather than coerced. Enum values stay plain strings, and
``public_key`` is base64 text (standard or URL-safe alphabet), as on the wire.
"""

from __future__ import annotations

import base64
import binascii
import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from coordinator.service import STUDY_ID_PATTERN
from coordinator.study_spec import StudySpec
from protocol.ids import Id
from protocol.messages import DeviceClass, PosInt


def _numeric_kinds(annotation: Any) -> set[type]:
    """The plain numeric types an annotation admits (``int | None`` -> {int})."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _numeric_kinds(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        kinds: set[type] = set()
        for arg in typing.get_args(annotation):
            kinds |= _numeric_kinds(arg)
        return kinds
    return {annotation} & {int, float}


class _NoCoercion(BaseModel):
    """Refuse booleans and strings where a field wants a number."""

    @model_validator(mode="before")
    @classmethod
    def _literal_numbers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, info in cls.model_fields.items():
            if name not in data or not _numeric_kinds(info.annotation):
                continue
            value = data[name]
            if isinstance(value, bool | str):
                raise ValueError(f"{name} must be a JSON number, not {type(value).__name__}")
        return data


def _b64_key(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("public_key must be base64 text")
    text = value.strip()
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("public_key is not valid base64") from None
    if len(raw) != 32:
        raise ValueError("public_key must decode to 32 bytes (Ed25519 raw public key)")
    return raw


Base64Key = Annotated[
    bytes,
    BeforeValidator(_b64_key),
    Field(json_schema_extra={"type": "string", "format": "base64", "contentEncoding": "base64"}),
]


class StrictStudySpec(_NoCoercion, StudySpec):
    """``StudySpec`` as accepted over HTTP: the same fields, no numeric coercion."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def to_spec(self) -> StudySpec:
        return StudySpec.model_validate(self.model_dump())


class StudyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: StrictStudySpec = StrictStudySpec()
    study_id: Annotated[str, Field(pattern=STUDY_ID_PATTERN)] | None = None
    """Leave empty to get ``<name>-<random>``."""


class EnrolRequest(_NoCoercion):
    """The fields of a protocol ``Enrol`` message (the study comes from the path)."""

    model_config = ConfigDict(extra="forbid")

    device_id: Id
    device_class: DeviceClass
    memory_bytes: PosInt
    public_key: Base64Key
    """Ed25519 raw public key, 32 bytes, base64."""


class EvaluationReport(_NoCoercion):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    version: Annotated[int, Field(ge=0, le=2**31 - 1)]
    accuracy: Annotated[float, Field(ge=0.0, le=1.0)]


class Health(BaseModel):
    status: str
