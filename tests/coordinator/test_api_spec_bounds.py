"""Every number a study spec takes over HTTP has a lower and an upper bound.

Generated from the model, so a field added to StudySpec later (or to one of
its nested settings) fails here until it gets a bound in the API's spec
(``fedward.coordinator.api.schemas.StrictStudySpec``). The privacy settings are
checked the same way (their bounds live in coordinator/privacy/settings.py).
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fedward.coordinator.api.schemas import EnrolRequest, EvaluationReport, StrictStudySpec


def _numeric_leaves(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any, list]]:
    leaves: list[tuple[str, Any, list]] = []
    for name, info in model.model_fields.items():
        leaves += _walk(f"{prefix}{name}", info.annotation, list(info.metadata))
    return leaves


def _walk(path: str, annotation: Any, metadata: list) -> list[tuple[str, Any, list]]:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *extra = typing.get_args(annotation)
        flat = [m for e in extra for m in (e.metadata if isinstance(e, FieldInfo) else [e])]
        return _walk(path, inner, metadata + flat)
    if origin in (typing.Union, types.UnionType):
        out: list[tuple[str, Any, list]] = []
        for arg in typing.get_args(annotation):
            out += _walk(path, arg, metadata)
        return out
    if origin is tuple:
        out = []
        for arg in typing.get_args(annotation):
            if arg is not Ellipsis:
                out += _walk(f"{path}[]", arg, [])
        return out
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _numeric_leaves(annotation, prefix=f"{path}.")
    if annotation in (int, float):
        return [(path, annotation, metadata)]
    return []


def _bounded(metadata: list) -> tuple[bool, bool]:
    lower = any(isinstance(m, Ge | Gt) for m in metadata)
    upper = any(isinstance(m, Le | Lt) for m in metadata)
    return lower, upper


def test_every_number_of_an_http_spec_or_enrolment_is_bounded() -> None:
    # Prepare
    leaves = [
        *_numeric_leaves(StrictStudySpec, "spec."),
        *_numeric_leaves(EnrolRequest, "enrol."),
        *_numeric_leaves(EvaluationReport, "evaluation."),
    ]
    # Execute
    unbounded = [path for path, _, meta in leaves if _bounded(meta) != (True, True)]
    # Assert
    assert len(leaves) > 25, leaves
    assert unbounded == []
