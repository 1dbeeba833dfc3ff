"""The budget ledger composes, recomputes, refuses, and survives a restart."""

from __future__ import annotations

import copy
import dataclasses
import json
import time

import pytest
from opacus.accountants import RDPAccountant

from fedward.errors import SavedStateError
from fedward.privacy.accounting import Accountant, MechanismStep, epsilon_for
from fedward.privacy.budget import BudgetPolicy
from fedward.privacy.errors import (
    BudgetExceeded,
    DuplicateCharge,
    ForgedClaim,
    LedgerStateError,
    PolicyError,
    PrivacyError,
)
from fedward.privacy.ledger import (
    STATE_KIND,
    STATE_VERSION,
    PrivacyLedger,
    upgrade_v1_state,
)
from fedward.saved_state import content_sha256

DELTA = 1e-5
STEP = MechanismStep(noise_multiplier=1.1, sample_rate=0.05, steps=8)


def make_ledger(epsilon: float = 8.0, accountant: Accountant = Accountant.RDP) -> PrivacyLedger:
    return PrivacyLedger(BudgetPolicy(epsilon=epsilon, delta=DELTA, accountant=accountant))


def charge_tasks(ledger: PrivacyLedger, device: str, steps: list[MechanismStep]) -> None:
    for i, step in enumerate(steps):
        ledger.charge(device, f"task-{i}", step, at=float(i), max_grad_norm=1.0)


def test_hundred_charged_tasks_equal_one_accountant_run():
    # Prepare
    ledger = make_ledger(epsilon=50.0)
    tasks = [
        MechanismStep(noise_multiplier=1.1, sample_rate=0.05 if i < 60 else 0.1, steps=5 + i % 4)
        for i in range(100)
    ]
    one_run = RDPAccountant()
    for task in tasks:
        for _ in range(task.steps):
            one_run.step(noise_multiplier=task.noise_multiplier, sample_rate=task.sample_rate)

    # Execute
    charge_tasks(ledger, "wrist-1", tasks)

    # Assert
    assert ledger.spent("wrist-1") == ledger.recompute("wrist-1")
    assert ledger.spent("wrist-1") == pytest.approx(one_run.get_epsilon(DELTA), rel=1e-9)
    records = ledger.records("wrist-1")
    assert [r.epsilon_before for r in records[1:]] == [r.epsilon_after for r in records[:-1]]
    assert all(r.epsilon_after > r.epsilon_before for r in records)


def test_prv_ledger_matches_reference():
    # Prepare
    ledger = make_ledger(epsilon=20.0, accountant=Accountant.PRV)
    tasks = [STEP] * 4

    # Execute
    charge_tasks(ledger, "d", tasks)

    # Assert
    assert ledger.spent("d") == epsilon_for(tasks, delta=DELTA, accountant=Accountant.PRV)


def test_honest_claim_accepted_and_forged_claim_rejected():
    # Prepare
    ledger = make_ledger()
    honest = epsilon_for([STEP], delta=DELTA, accountant=Accountant.RDP)
    ledger.charge("d", "t0", STEP, at=0.0, max_grad_norm=1.0, claimed_epsilon=honest)
    forged = epsilon_for([STEP], delta=DELTA, accountant=Accountant.RDP)  # one task, not two

    # Execute
    with pytest.raises(ForgedClaim) as info:
        ledger.charge("d", "t1", STEP, at=1.0, max_grad_norm=1.0, claimed_epsilon=forged)

    # Assert
    assert info.value.claimed == forged
    assert info.value.recomputed == pytest.approx(
        epsilon_for([STEP, STEP], delta=DELTA, accountant=Accountant.RDP)
    )
    assert [r.task_id for r in ledger.records("d")] == ["t0"]  # nothing recorded
    assert ledger.check_claim("d", honest, tolerance=1e-9) == honest
    with pytest.raises(ForgedClaim):
        ledger.check_claim("d", honest * 0.5, tolerance=1e-9)


def test_over_budget_charge_is_refused_and_not_recorded():
    # Prepare
    ledger = make_ledger(epsilon=3.0)
    cheap = MechanismStep(noise_multiplier=1.1, sample_rate=0.05, steps=10)
    ledger.charge("d", "t0", cheap, at=0.0, max_grad_norm=1.0)
    spent = ledger.spent("d")
    expensive = MechanismStep(noise_multiplier=0.7, sample_rate=0.5, steps=100)
    state_before = ledger.state_dict()

    # Execute
    with pytest.raises(BudgetExceeded) as info:
        ledger.charge("d", "t1", expensive, at=1.0, max_grad_norm=1.0)

    # Assert
    assert isinstance(info.value, PrivacyError)
    assert info.value.device == "d"
    assert info.value.spent == spent
    assert info.value.requested > info.value.budget == 3.0
    assert ledger.state_dict() == state_before
    assert not ledger.can_afford("d", expensive)
    assert ledger.can_afford("d", cheap)
    assert ledger.remaining("d") == pytest.approx(3.0 - spent)
    assert not ledger.exhausted("d")


def test_device_is_exhausted_when_budget_is_spent():
    # Prepare
    ledger = make_ledger(epsilon=1.0)
    step = MechanismStep(noise_multiplier=1.0, sample_rate=0.01, steps=1)
    n = 0
    while ledger.can_afford("d", step):
        ledger.charge("d", f"t{n}", step, at=float(n), max_grad_norm=1.0)
        n += 1

    # Execute / Assert
    assert n > 0
    assert ledger.spent("d") <= 1.0
    with pytest.raises(BudgetExceeded):
        ledger.charge("d", "one-more", step, at=0.0, max_grad_norm=1.0)
    assert ledger.devices() == ["d"]
    assert ledger.spent("unknown") == 0.0 and ledger.remaining("unknown") == 1.0


def test_same_task_cannot_be_charged_twice():
    # Prepare
    ledger = make_ledger()
    ledger.charge("d", "t0", STEP, at=0.0, max_grad_norm=1.0)

    # Execute / Assert
    with pytest.raises(DuplicateCharge):
        ledger.charge("d", "t0", STEP, at=1.0, max_grad_norm=1.0)
    ledger.charge("other", "t0", STEP, at=1.0, max_grad_norm=1.0)  # other device: fine


@pytest.mark.parametrize(
    "kwargs",
    [{"at": float("nan"), "max_grad_norm": 1.0}, {"at": 0.0, "max_grad_norm": 0.0}],
)
def test_charge_validates_reported_parameters(kwargs):
    with pytest.raises(ValueError):
        make_ledger().charge("d", "t", STEP, **kwargs)


def test_state_round_trips_through_json_and_continues_identically():
    # Prepare
    ledger = make_ledger(epsilon=30.0)
    twin = make_ledger(epsilon=30.0)
    for device in ("a", "b"):
        charge_tasks(ledger, device, [STEP] * 5)
        charge_tasks(twin, device, [STEP] * 5)

    # Execute: "restart" via a JSON file's worth of text
    restored = PrivacyLedger.from_state_dict(json.loads(json.dumps(ledger.state_dict())))
    restored.charge("a", "after-restart", STEP, at=9.0, max_grad_norm=1.0)
    twin.charge("a", "after-restart", STEP, at=9.0, max_grad_norm=1.0)

    # Assert
    assert restored.policy == ledger.policy
    assert restored.devices() == ["a", "b"]
    assert restored.state_dict() == twin.state_dict()


def _tampered(state: dict, edit) -> dict:  # noqa: ANN001
    bad = copy.deepcopy(state)
    edit(bad)
    return bad


def _saved_ledger() -> tuple[PrivacyLedger, dict]:
    ledger = make_ledger(epsilon=30.0)
    charge_tasks(ledger, "a", [STEP] * 3)
    return ledger, ledger.state_dict()


def test_state_is_an_envelope_around_policy_devices_and_checksum():
    # Prepare
    ledger, state = _saved_ledger()

    # Execute
    payload = state["payload"]

    # Assert
    assert set(state) == {"kind", "format_version", "payload"}
    assert (
        (state["kind"], state["format_version"])
        == (STATE_KIND, STATE_VERSION)
        == (
            "fedward.privacy.ledger",
            2,
        )
    )
    assert set(payload) == {"policy", "devices", "sha256"}
    assert (
        payload["sha256"]
        == ledger.state_sha256()
        == content_sha256({"policy": payload["policy"], "devices": payload["devices"]})
    )
    assert json.loads(json.dumps(state)) == state  # plain JSON-ready data


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.__setitem__("kind", "fedward.edge.budget"), "not 'fedward.privacy.ledger'"),
        (lambda s: s.__setitem__("format_version", 3), "format version 3"),
        (lambda s: s.__setitem__("format_version", True), "format version True"),
        (lambda s: s.__setitem__("extra", 1), "exactly the keys"),
        (lambda s: s["payload"].__setitem__("extra", 1), "payload keys"),
        (lambda s: s["payload"].pop("sha256"), "payload keys"),
        (lambda s: s.__setitem__("payload", []), "must be a mapping"),
    ],
)
def test_state_of_another_kind_version_or_shape_is_refused(edit, message):
    # Prepare
    _, state = _saved_ledger()
    target = make_ledger(epsilon=30.0)

    # Execute / Assert
    with pytest.raises(LedgerStateError, match=message):
        target.load_state_dict(_tampered(state, edit))
    assert target.devices() == []


def test_tampered_state_is_rejected():
    # Prepare
    _, state = _saved_ledger()

    def lower_epsilon(s: dict) -> None:
        s["payload"]["devices"]["a"][-1]["epsilon_after"] = 0.1

    def drop_record(s: dict) -> None:
        s["payload"]["devices"]["a"].pop(0)

    def looser_policy(s: dict) -> None:
        s["payload"]["policy"]["epsilon"] = 300.0

    # Execute / Assert: plain edits break the checksum
    for edit in (lower_epsilon, drop_record, looser_policy):
        with pytest.raises(LedgerStateError, match="checksum"):
            PrivacyLedger.from_state_dict(_tampered(state, edit))

    # an edit with a recomputed checksum still fails the epsilon recomputation
    def fewer_steps_same_epsilon(s: dict) -> None:
        payload = s["payload"]
        payload["devices"]["a"][-1]["steps"] = 1
        payload["sha256"] = content_sha256({k: v for k, v in payload.items() if k != "sha256"})

    with pytest.raises(LedgerStateError, match="recomputed"):
        PrivacyLedger.from_state_dict(_tampered(state, fewer_steps_same_epsilon))
    with pytest.raises(LedgerStateError):
        PrivacyLedger.from_state_dict({"devices": {}})


def _v1_state(ledger: PrivacyLedger) -> dict:
    """What format version 1 wrote (before the envelope), for the refusal and upgrade tests."""
    content = {"format": STATE_KIND, "version": 1, **ledger.state_dict()["payload"]}
    del content["sha256"]
    return {**content, "sha256": content_sha256(content)}


def test_pre_envelope_state_is_refused_with_what_to_do():
    # Prepare
    ledger, _ = _saved_ledger()
    old = _v1_state(ledger)
    target = make_ledger(epsilon=30.0)

    # Execute
    with pytest.raises(LedgerStateError) as refused:
        target.load_state_dict(old)

    # Assert: says what it is, what this build reads, and what to do instead of starting empty
    message = str(refused.value)
    assert "before the saved-state envelope" in message and "version 1" in message
    assert "format_version 2" in message and "upgrade_v1_state" in message
    assert target.devices() == []


def test_upgraded_v1_state_loads_to_the_same_ledger():
    # Prepare
    ledger, state = _saved_ledger()
    old = json.loads(json.dumps(_v1_state(ledger)))

    # Execute
    upgraded = upgrade_v1_state(old)
    restored = PrivacyLedger.from_state_dict(upgraded)

    # Assert
    assert upgraded == state
    assert restored.state_dict() == state and restored.spent("a") == ledger.spent("a")


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s["devices"]["a"][-1].__setitem__("epsilon_after", 0.1),  # checksum breaks
        lambda s: s.__setitem__("version", 2),
        lambda s: s.pop("sha256"),
    ],
)
def test_upgrade_refuses_anything_but_an_intact_v1_state(edit):
    # Prepare
    ledger, _ = _saved_ledger()
    old = _tampered(_v1_state(ledger), edit)

    # Execute / Assert
    with pytest.raises(LedgerStateError):
        upgrade_v1_state(old)


def test_ledger_state_error_is_a_saved_state_error():
    assert issubclass(LedgerStateError, SavedStateError)


def test_failed_load_leaves_ledger_unchanged():
    # Prepare
    ledger = make_ledger(epsilon=30.0)
    charge_tasks(ledger, "a", [STEP] * 2)
    good = ledger.state_dict()
    bad = _tampered(good, lambda s: s["payload"]["devices"]["a"][0].update(steps=99))

    # Execute
    with pytest.raises(LedgerStateError):
        ledger.load_state_dict(bad)

    # Assert
    assert ledger.state_dict() == good


def test_state_under_another_policy_is_refused():
    # Prepare
    state = make_ledger(epsilon=8.0).state_dict()
    other = make_ledger(epsilon=9.0)

    # Execute / Assert
    with pytest.raises(PolicyError, match="immutable"):
        other.load_state_dict(state)


def test_policy_is_immutable_and_refuses_unsafe_values():
    # Prepare
    policy = BudgetPolicy(epsilon=4.0, delta=1e-6)

    # Execute / Assert
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.epsilon = 100.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        make_ledger().policy = policy  # type: ignore[misc]
    for kwargs in (
        {"epsilon": 0.0, "delta": 1e-6},
        {"epsilon": -1.0, "delta": 1e-6},
        {"epsilon": float("inf"), "delta": 1e-6},
        {"epsilon": 1.0, "delta": 0.0},
        {"epsilon": 1.0, "delta": 1e-2},
        {"epsilon": 1.0, "delta": 1e-6, "accountant": "rdp"},
        {"epsilon": 1.0, "delta": 1e-6, "accountant": Accountant.GDP},
    ):
        with pytest.raises(PolicyError):
            BudgetPolicy(**kwargs)
    with pytest.raises(TypeError):
        BudgetPolicy(4.0, 1e-6)  # type: ignore[misc]  # keyword-only


def test_gdp_policy_needs_opt_in_and_warns():
    with pytest.warns(UserWarning, match="underestimate"):
        policy = BudgetPolicy(epsilon=2.0, delta=1e-5, accountant=Accountant.GDP, allow_gdp=True)
    assert policy.accountant is Accountant.GDP


def test_policy_fingerprint_and_dict_round_trip():
    # Prepare
    policy = BudgetPolicy(epsilon=4.0, delta=1e-6, accountant=Accountant.PRV)

    # Execute
    restored = BudgetPolicy.from_dict(json.loads(json.dumps(policy.to_dict())))

    # Assert
    assert restored == policy
    assert restored.fingerprint == policy.fingerprint
    assert BudgetPolicy(epsilon=4.0, delta=1e-7).fingerprint != policy.fingerprint
    with pytest.raises(PolicyError):
        policy.ensure_same(BudgetPolicy(epsilon=4.5, delta=1e-6, accountant=Accountant.PRV))


def test_charging_500_devices_by_100_tasks_is_fast():
    # Prepare
    ledger = make_ledger(epsilon=50.0)
    started = time.perf_counter()

    # Execute
    for task in range(100):
        for device in range(500):
            ledger.charge(f"dev-{device}", f"task-{task}", STEP, at=float(task), max_grad_norm=1.0)
    elapsed = time.perf_counter() - started

    # Assert
    assert elapsed < 20.0, elapsed
    assert ledger.spent("dev-499") == pytest.approx(
        epsilon_for([STEP] * 100, delta=DELTA, accountant=Accountant.RDP), rel=1e-12
    )
