"""A study file's distributed-DP budget becomes the fills' per-patient ledger."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from fedward.coordinator.privacy.guard import privacy_guard_of
from fedward.coordinator.privacy.ledger_store import privacy_report
from fedward.coordinator.privacy.settings import DistributedPrivacy, StudyPrivacy
from fedward.coordinator.study_spec import DistributedDpSettings, build_engine
from fedward.privacy.budget import PrivacyUnit
from tests.live.secagg_helpers import SECAGG_SPEC


def ddp_spec(*, epsilon: float | None):
    ddp = DistributedDpSettings(l2_clip=1.0, noise_multiplier=1.0, bits=20, epsilon=epsilon)
    secagg = SECAGG_SPEC.secagg.model_copy(update={"ddp": ddp})
    return SECAGG_SPEC.model_copy(update={"secagg": secagg})


def test_a_ddp_budget_gives_the_engine_a_patient_ledger_of_the_fills_own_mechanism() -> None:
    # Prepare / Execute
    engine = build_engine(ddp_spec(epsilon=6.0), rng=random.Random(0))
    guard = privacy_guard_of(engine)
    # Assert: one guard, patient unit, and the Skellam mechanism the fills run
    assert guard is not None and isinstance(guard.settings, DistributedPrivacy)
    assert guard.unit is PrivacyUnit.PATIENT and guard.settings.epsilon == 6.0
    assert guard.settings.mechanism() == engine.fills.policy.ddp
    for i in range(4):
        engine.enrol(f"dev-{i}", device_class="phone", memory_bytes=64 << 20, now=0.0)
    orders = engine.dispatch(now=1.0)
    report = privacy_report(engine, study_id="s")
    assert orders and all(guard.ledger.is_reserved(o.device_id, o.task_id) for o in orders)
    assert report is not None and report.unit is PrivacyUnit.PATIENT


def test_without_a_budget_the_noise_is_added_but_no_ledger_is_kept() -> None:
    engine = build_engine(ddp_spec(epsilon=None), rng=random.Random(0))
    assert privacy_guard_of(engine) is None and engine.fills.policy.ddp is not None


def test_a_ddp_budget_beside_dp_sgd_is_refused() -> None:
    dp = StudyPrivacy(
        epsilon=8.0,
        delta=1e-5,
        noise_multiplier=1.5,
        max_grad_norm=1.0,
        sample_rate=0.25,
        steps_per_task=8,
    )
    with pytest.raises(ValidationError, match="two budgets for one device"):
        ddp_spec(epsilon=6.0).model_validate(
            {**ddp_spec(epsilon=6.0).model_dump(), "privacy": dp.model_dump()}
        )
