"""The device budget's saved state: an envelope, checked on load, never silently reset."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest

from fedward.edge.agent import EdgeAgent
from fedward.edge.budget import (
    STATE_KIND,
    STATE_VERSION,
    BudgetStateError,
    DeviceBudget,
    upgrade_v1_file,
    upgrade_v1_state,
)
from fedward.edge.dataset import LocalDataset
from fedward.edge.identity import load_or_create_identity
from fedward.edge.settings import AgentSettings
from fedward.errors import SavedStateError
from fedward.privacy.accounting import Accountant, MechanismStep, history_to_state
from fedward.privacy.budget import BudgetPolicy
from fedward.privacy.errors import PolicyError, PrivacyError
from fedward.protocol.messages import DeviceClass
from fedward.protocol.transport import ErrorPolicy, InMemoryBroker, InMemoryTransport

DELTA = 1e-5
POLICY = BudgetPolicy(epsilon=8.0, delta=DELTA)
STEPS = (
    MechanismStep(noise_multiplier=1.5, sample_rate=0.25, steps=8),
    MechanismStep(noise_multiplier=1.1, sample_rate=0.125, steps=4),
)


def spent_budget() -> DeviceBudget:
    """A budget that has paid for two tasks (built from its accountant state, no training)."""
    return DeviceBudget(POLICY, accountant_state=history_to_state(STEPS, accountant=Accountant.RDP))


def v1_state(budget: DeviceBudget) -> dict:
    """What format version 1 wrote (before the envelope)."""
    return {
        "format": STATE_KIND,
        "version": 1,
        "policy": budget.policy.to_dict(),
        "accountant_state": budget.accountant_state,
    }


def test_state_round_trips_through_a_file_as_an_envelope(tmp_path: Path) -> None:
    # Prepare
    budget = spent_budget()
    path = tmp_path / "budget-s1.json"

    # Execute
    budget.save(path)
    saved = json.loads(path.read_text())
    restored = DeviceBudget.load(path, policy=POLICY)

    # Assert
    assert set(saved) == {"kind", "format_version", "payload"}
    assert (saved["kind"], saved["format_version"]) == (STATE_KIND, STATE_VERSION)
    assert (STATE_KIND, STATE_VERSION) == ("fedward.edge.budget", 2)
    assert set(saved["payload"]) == {"policy", "accountant_state", "sha256"}
    assert saved == budget.state_dict()
    assert restored.spent() == budget.spent() > 0
    assert restored.accountant_state == budget.accountant_state
    assert (path.stat().st_mode & 0o777) == 0o600


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.__setitem__("kind", "fedward.privacy.ledger"), "not 'fedward.edge.budget'"),
        (lambda s: s.__setitem__("format_version", 3), "format version 3"),
        (lambda s: s.__setitem__("format_version", True), "format version True"),
        (lambda s: s.__setitem__("payload", None), "must be a mapping"),
        (lambda s: s.pop("payload"), "exactly the keys"),
        (lambda s: s["payload"].__setitem__("spent", 0.0), "payload keys"),
        (lambda s: s["payload"].pop("sha256"), "payload keys"),
    ],
)
def test_state_of_another_kind_version_or_shape_is_refused(edit, message) -> None:
    # Prepare
    state = copy.deepcopy(spent_budget().state_dict())
    edit(state)

    # Execute / Assert
    with pytest.raises(BudgetStateError, match=message):
        DeviceBudget.from_state_dict(state, policy=POLICY)


@pytest.mark.parametrize(
    "edit",
    [
        # the edit a device would gain from: forget a task, so its spend looks smaller
        lambda p: p["accountant_state"]["history"].pop(),
        lambda p: p["accountant_state"]["history"][0].__setitem__(2, 1),
        lambda p: p["policy"].__setitem__("epsilon", 80.0),
    ],
)
def test_a_payload_edited_after_saving_is_refused(tmp_path: Path, edit) -> None:
    # Prepare
    path = tmp_path / "budget.json"
    spent_budget().save(path)
    state = json.loads(path.read_text())
    edit(state["payload"])
    path.write_text(json.dumps(state))

    # Execute / Assert
    with pytest.raises(BudgetStateError, match="checksum mismatch") as refused:
        DeviceBudget.load(path, policy=POLICY)
    assert str(path) in str(refused.value)


def test_a_state_saved_under_another_policy_is_refused() -> None:
    state = spent_budget().state_dict()
    with pytest.raises(PolicyError, match="immutable"):
        DeviceBudget.from_state_dict(state, policy=BudgetPolicy(epsilon=9.0, delta=DELTA))


def test_a_pre_envelope_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "budget.json"
    path.write_text(json.dumps(v1_state(spent_budget())))

    # Execute
    with pytest.raises(BudgetStateError) as refused:
        DeviceBudget.load(path, policy=POLICY)

    # Assert: names the file and the format, says keep it and how to convert it
    message = str(refused.value)
    assert str(path) in message
    assert "before the saved-state envelope" in message and "version 1" in message
    assert "Do not delete the file" in message and "upgrade_v1_file" in message


def test_an_upgraded_v1_file_loads_with_the_same_spend(tmp_path: Path) -> None:
    # Prepare
    budget = spent_budget()
    path = tmp_path / "budget.json"
    path.write_text(json.dumps(v1_state(budget)))

    # Execute
    upgrade_v1_file(path)
    restored = DeviceBudget.load(path, policy=POLICY)

    # Assert
    assert json.loads(path.read_text()) == budget.state_dict()
    assert restored.spent() == budget.spent() > 0
    assert (path.stat().st_mode & 0o777) == 0o600


@pytest.mark.parametrize(
    "state",
    [
        {"format": STATE_KIND, "version": 2, "policy": {}, "accountant_state": {}},
        {"format": "fedward.privacy.ledger", "version": 1, "policy": {}, "accountant_state": {}},
        {"kind": STATE_KIND, "format_version": 2, "payload": {}},  # already upgraded
    ],
)
def test_upgrade_refuses_anything_but_a_v1_state(state) -> None:
    with pytest.raises(BudgetStateError):
        upgrade_v1_state(state)


def test_a_file_that_is_not_json_is_refused_not_reset(tmp_path: Path) -> None:
    path = tmp_path / "budget.json"
    path.write_text('{"kind": "fedward.edge.budget", "format_ver')  # torn write
    with pytest.raises(BudgetStateError, match="Do not delete the file"):
        DeviceBudget.load(path, policy=POLICY)


def test_budget_state_error_is_a_saved_state_and_a_privacy_error() -> None:
    assert issubclass(BudgetStateError, SavedStateError)
    assert issubclass(BudgetStateError, PrivacyError)


def _agent(state_dir: Path) -> EdgeAgent:
    settings = AgentSettings(
        device_id="d1",
        study_id="s1",
        device_class=DeviceClass.WEARABLE,
        memory_bytes=1 << 20,
        data_path=state_dir / "data.npz",
        state_dir=state_dir,
        window=128,
        width=4,
        dp_epsilon=POLICY.epsilon,
        dp_delta=POLICY.delta,
    )
    rng = np.random.default_rng(1)  # test data only
    dataset = LocalDataset(
        x=rng.standard_normal((16, 3, 128)).astype(np.float32),
        y=rng.integers(0, 4, 16).astype(np.int64),
    )
    return EdgeAgent(
        settings,
        transport=InMemoryTransport(InMemoryBroker(), client_id="d1", error_policy=ErrorPolicy.LOG),
        identity=load_or_create_identity(state_dir, device_id="d1"),
        dataset=dataset,
        rng=random.Random(0),
    )


def test_the_agent_keeps_its_budget_across_a_restart_and_refuses_an_old_file(
    tmp_path: Path,
) -> None:
    # Prepare: the budget file the agent itself reads and writes
    first = _agent(tmp_path / "state")
    first.budget = spent_budget()
    first.budget.save(first.budget_path)

    # Execute: a restarted agent
    second = _agent(tmp_path / "state")

    # Assert: same spend; an old-format file stops the agent instead of resetting it
    assert second.budget is not None and second.budget.spent() == first.budget.spent() > 0
    first.budget_path.write_text(json.dumps(v1_state(first.budget)))
    with pytest.raises(BudgetStateError, match="upgrade_v1_file"):
        _agent(tmp_path / "state")
