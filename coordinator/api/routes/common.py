"""Path parameters shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from fedward.coordinator.service import STUDY_ID_PATTERN
from fedward.coordinator.study_spec import SAFE_ID_PATTERN

StudyIdPath = Annotated[str, Path(pattern=STUDY_ID_PATTERN, description="Study id")]
DeviceIdPath = Annotated[str, Path(pattern=SAFE_ID_PATTERN, description="Device id")]
VersionPath = Annotated[int, Path(ge=0, le=2**31 - 1, description="Model version")]
