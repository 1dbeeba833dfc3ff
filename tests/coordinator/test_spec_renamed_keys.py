"""FTTE's energy term under its former names ("variance_*") is refused, by name.

No deployment holds a spec with the old keys, so there is nothing to migrate;
what matters is that the refusal says what the key is called now, and that a
stored study with such a spec fails to restore with a load error (the study set
aside, the coordinator serving the others) rather than a validation traceback.
"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from fedward.coordinator.api.schemas import StrictStudySpec
from fedward.coordinator.errors import StateLoadError
from fedward.coordinator.service import StudyService
from fedward.coordinator.store import create_db_engine
from fedward.coordinator.study_spec import RENAMED_KEYS, StudySpec


@pytest.mark.parametrize("model", [StudySpec, StrictStudySpec])
@pytest.mark.parametrize("old, new", sorted(RENAMED_KEYS.items()))
def test_a_spec_with_a_former_key_is_refused_naming_the_new_one(model, old, new) -> None:
    # Execute / Assert
    with pytest.raises(ValidationError, match=f"{old} is now {new}"):
        model.model_validate({old: StudySpec.model_fields[new].default})
    default = StudySpec.model_fields[new].default
    assert getattr(model.model_validate({new: default}), new) == default


def test_a_stored_study_with_former_keys_fails_its_restore_with_a_load_error(
    service, settings, clock, start_study
) -> None:
    # Prepare: a study saved, then its stored spec rewritten to the former keys
    sid = start_study(service, devices=1)
    service.close()
    db = create_db_engine(settings.database_url)
    with db.begin() as conn:
        raw = conn.execute(text("SELECT spec FROM studies WHERE id = :id"), {"id": sid}).scalar()
        spec = json.loads(raw) if isinstance(raw, str) else dict(raw)
        for old, new in RENAMED_KEYS.items():
            spec[old] = spec.pop(new)
        conn.execute(
            text("UPDATE studies SET spec = :spec WHERE id = :id"),
            {"spec": json.dumps(spec), "id": sid},
        )
    db.dispose()
    # Execute: the study is refused, the coordinator still starts (the study set aside)
    reopened = StudyService.open(settings, clock=clock, seed=7)
    # Assert
    reason = reopened.failed_studies()[sid]
    reopened.close()
    assert StateLoadError.__name__ in reason and "variance_beta is now energy_beta" in reason
