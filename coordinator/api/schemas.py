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

from fedward.coordinator.study_spec import SAFE_ID_PATTERN, StudySpec, training_step_macs
from fedward.protocol.messages import DeviceClass


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


MAX_JSON_INT = 2**53
"""No integer of a request body exceeds this (the largest every JSON reader holds exactly)."""

MAX_MEMORY_BYTES = 2**44
"""A device's memory budget over REST: 16 TiB is beyond any device that enrols."""

SafeId = Annotated[str, Field(pattern=SAFE_ID_PATTERN)]
"""A device or study id given over REST: starts with a letter or digit (never ``..``)."""


class NoCoercion(BaseModel):
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
            if isinstance(value, int) and abs(value) > MAX_JSON_INT:
                # A backstop for a field without its own cap (2**63 overflowed BIGINT: a 500).
                raise ValueError(f"{name} must be within +-2**53")
        return _integral_floats_as_ints(cls, data)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model class an annotation holds (``StudyPrivacy | None`` -> StudyPrivacy)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return _nested_model(args[0])
    if origin in (typing.Union, types.UnionType):
        models = [m for m in (_nested_model(a) for a in args) if m is not None]
        return models[0] if len(models) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _integral_floats_as_ints(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """``1533.0`` where an integer is due is 1533, in nested settings too.

    Why: JSON has one number type and JSON Schema calls 1533.0 an integer, so
    the published schema admits it; a strict nested model (the privacy
    settings) would refuse it while the spec's own fields accept it. Integral
    floats become ints before validation, everywhere alike; 1533.5 stays a
    float and is refused where an int is due.
    """
    out = dict(data)
    for name, info in model.model_fields.items():
        if name not in out:
            continue
        value = out[name]
        if _numeric_kinds(info.annotation) == {int} and isinstance(value, float):
            if value.is_integer() and abs(value) <= MAX_JSON_INT:
                out[name] = int(value)
        nested = _nested_model(info.annotation)
        if nested is not None and isinstance(value, dict):
            out[name] = _integral_floats_as_ints(nested, value)
    return out


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
    Field(
        json_schema_extra={
            "type": "string",
            "format": "base64",
            "contentEncoding": "base64",
            # 32 bytes are 43 characters and one "=" (standard or URL-safe alphabet)
            "pattern": "^[A-Za-z0-9+/_-]{43}=$",
        }
    ),
]


MAX_ACTIVATION_ELEMENTS = 2**24
"""Bound on ``batch_size * window * max(width, in_channels)``: creating a study runs
a real training step per subset tier to measure memory, and this keeps that step
(and the devices' own) within a few hundred MB."""


MAX_STEP_MACS = 300_000_000
"""Bound on a training step's forward multiply-accumulates (``training_step_macs``):
about a second to create the largest study this admits on one core (docs/api.md)."""


def _cap(name: str, **bounds: Any) -> Any:
    """A StudySpec field with its own default and lower bounds plus an upper bound."""
    return Field(default=StudySpec.model_fields[name].default, **bounds)


class StrictStudySpec(NoCoercion, StudySpec):
    """``StudySpec`` as accepted over HTTP: no numeric coercion, and upper bounds.

    Why bounds here: an authenticated but careless (or compromised) operator
    call must not be able to make the coordinator build and profile a model
    that exhausts its memory, stalling every study it serves.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    in_channels: int = _cap("in_channels", ge=1, le=64)
    # every model kind builds from one sample up (fedward.tinytrain.models: pools
    # shrink with the window); the cost caps below bound what a window can cost
    window: int = _cap("window", ge=1, le=16_384)
    num_classes: int = _cap("num_classes", ge=2, le=1_000)
    width: int = _cap("width", ge=1, le=256)
    model_seed: int = _cap("model_seed", ge=0, le=2**31 - 1)
    epochs: int = _cap("epochs", ge=1, le=100)
    batch_size: int = _cap("batch_size", ge=1, le=1_024)
    lr: float = _cap("lr", gt=0, le=10.0)
    concurrency: int = _cap("concurrency", ge=1, le=100_000)
    buffer_size: int = _cap("buffer_size", ge=1, le=100_000)
    server_lr: float = _cap("server_lr", gt=0, le=100.0)
    max_staleness: int | None = _cap("max_staleness", ge=0, le=1_000_000)
    staleness_exponent: float = _cap("staleness_exponent", ge=0, le=100.0)
    energy_beta: float = _cap("energy_beta", ge=0, le=1e6)
    energy_tolerance: float = _cap("energy_tolerance", ge=1, le=1e9)
    energy_window: int = _cap("energy_window", ge=0, le=100_000)
    norm_bound_tolerance: float | None = _cap("norm_bound_tolerance", ge=1, le=1e9)
    norm_bound_window: int = _cap("norm_bound_window", ge=1, le=100_000)
    task_deadline_s: float = _cap("task_deadline_s", gt=0, le=30 * 24 * 3600.0)
    max_samples_per_update: int = _cap("max_samples_per_update", ge=1, le=1_000_000_000)

    @model_validator(mode="after")
    def _bounded_training_step(self) -> StrictStudySpec:
        elements = self.batch_size * self.window * max(self.width, self.in_channels)
        if elements > MAX_ACTIVATION_ELEMENTS:
            raise ValueError(
                f"batch_size * window * max(width, in_channels) = {elements} exceeds "
                f"{MAX_ACTIVATION_ELEMENTS}: the training step would not fit a device"
            )
        macs = training_step_macs(self)
        if macs > MAX_STEP_MACS:
            raise ValueError(
                f"one training step costs about {macs:.3g} multiply-accumulates, over "
                f"{MAX_STEP_MACS:.3g}: creating the study (which measures real steps) and "
                "each device's task would take too long; lower batch_size, window or width"
            )
        return self

    def to_spec(self) -> StudySpec:
        """The plain spec (raises ``ValidationError`` if StudySpec's own rules refuse it)."""
        return StudySpec.model_validate(self.model_dump())


class StudyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: StrictStudySpec = StrictStudySpec()
    study_id: SafeId | None = None
    """Leave empty to get ``<name>-<random>``."""


class EnrolRequest(NoCoercion):
    """The fields of a protocol ``Enrol`` message (the study comes from the path)."""

    model_config = ConfigDict(extra="forbid")

    device_id: SafeId
    device_class: DeviceClass
    memory_bytes: Annotated[int, Field(ge=1, le=MAX_MEMORY_BYTES)]
    public_key: Base64Key
    """Ed25519 raw public key, 32 bytes, base64."""


class EvaluationReport(NoCoercion):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    version: Annotated[int, Field(ge=0, le=2**31 - 1)]
    accuracy: Annotated[float, Field(ge=0.0, le=1.0)]


class Health(BaseModel):
    status: str
