"""StudyService.create_study(initial_params=...): a warm start is version 0, kept across restarts.

Why: ``fedward up`` must start from the same pre-trained model as ``fedward
simulate`` so their accuracies compare; the model must be the stored version 0
(what devices download and what a restart resumes from), not a memory-only tweak.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedward.coordinator.service import InvalidInitialModel, StudyService
from fedward.coordinator.study_spec import initial_params
from fedward.protocol.codec import decode_tensors


def test_a_warm_start_is_stored_as_version_0_and_survives_a_restart(
    service, spec, settings, clock
) -> None:
    # Prepare
    warm = {n: v + np.float32(0.5) for n, v in initial_params(spec).items()}
    # Execute
    service.create_study(spec, study_id="warm", initial_params=warm)
    service.create_study(spec, study_id="cold")
    stored = decode_tensors(service.model_blob("warm", 0))
    service.close()
    reopened = StudyService.open(settings, clock=clock, seed=7)
    try:
        again = decode_tensors(reopened.model_blob("warm", 0))
        cold = decode_tensors(reopened.model_blob("cold", 0))
    finally:
        reopened.close()
    # Assert
    for name, value in warm.items():
        np.testing.assert_array_equal(stored[name], value)
        np.testing.assert_array_equal(again[name], value)
    assert not np.array_equal(cold[next(iter(warm))], warm[next(iter(warm))])
    entries = [json.loads(line) for line in settings.audit_log_path.read_text().splitlines()]
    created = {e["study_id"]: e["details"] for e in entries if e["action"] == "study_created"}
    assert created["warm"]["warm_start"] is True and created["cold"]["warm_start"] is False


def test_a_warm_start_of_another_model_is_refused(service, spec) -> None:
    # Prepare
    params = initial_params(spec)
    name = next(iter(params))
    wrong = {**params, name: np.zeros((3, 3), dtype=np.float32)}
    # Execute / Assert
    with pytest.raises(InvalidInitialModel):
        service.create_study(spec, study_id="bad", initial_params=wrong)
    assert [s.id for s in service.list_studies()] == []
