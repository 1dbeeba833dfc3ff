"""schemathesis against the live app, once per role: every check, generated cases
for every operation, then stateful runs over the links it infers (a study created,
then addressed). No failure is tolerated; the run is bounded (examples per
operation, steps per stateful run) so it stays within about a minute in all.

Each role sends its own token on every call, so the run also shows each role
meets the published schema where it is refused (403 is documented everywhere).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks

from fedward.coordinator.access import Role
from fedward.coordinator.api import create_app
from fedward.coordinator.service import StudyService
from fedward.coordinator.settings import CoordinatorSettings
from tests.coordinator.api_helpers import SMALL, TestClient, bearer, issue

TOKEN = "t0k3n-For-Schemathesis-5d4c3b2a"

load_all_checks()
ALL_CHECKS = list(CHECKS.get_all())
CROSS_FIELD = "POST /v1/studies"
"""The one operation whose body has rules JSON Schema cannot state: the model's size
(max_model_bytes), a training step's cost, client_dp only with strategy client_dp.
A schema-valid spec that breaks one is 422 by design, so there the generic
"schema-valid data is accepted" check is replaced by a stricter one: a 422 must
name such a rule, anything else still fails."""


NESTED_SETTINGS = {"privacy", "client_dp", "stop"}


def _model_rule(loc: Any) -> bool:
    """A refusal by a model's own validator: the spec's, or one of its nested settings'."""
    if loc == ["body", "spec"]:
        return True
    return (
        isinstance(loc, list)
        and loc[:2] == ["body", "spec"]
        and loc[2:] in ([n] for n in NESTED_SETTINGS)
    )


def only_cross_field_rules_refuse(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code != 422:
        return None
    meta = getattr(case, "meta", None)
    if meta is not None and meta.generation.mode is not GenerationMode.POSITIVE:
        return None  # negative data: negative_data_rejection judges it
    body = response.json()
    if body.get("error") == "model_too_large":
        return None
    detail = body.get("detail") or []
    if (
        body.get("error") == "validation_error"
        and detail
        and all(
            _model_rule(d.get("loc")) and str(d.get("msg", "")).startswith("Value error")
            for d in detail
        )
    ):
        return None
    raise AssertionError(f"a schema-valid study was refused for another reason: {body}")


def checks_for(label: str) -> list[Any]:
    if label != CROSS_FIELD:
        return ALL_CHECKS
    kept = [c for c in ALL_CHECKS if c.__name__ != "positive_data_acceptance"]
    return [*kept, only_cross_field_rules_refuse]


EXAMPLES_PER_OPERATION = 6
STATEFUL_EXAMPLES = 8

SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)


@pytest.fixture
def role_app(sqlite_url, tmp_path, clock, request) -> Iterator[tuple[Any, dict[str, str]]]:
    yield from _role_app(sqlite_url, tmp_path, clock, request.param)


def _role_app(
    url: str, tmp_path: Any, clock: Any, role: Role, *, keep: bool = False
) -> Iterator[tuple[Any, dict[str, str]]]:
    """The app with a study to address and a token of the role under test.

    The failed-login limit is raised: schemathesis's ignored_auth check sends
    wrong tokens on purpose, and a locked-out client would test nothing else
    (the limit itself is tested in test_api_roles.py)."""
    settings = CoordinatorSettings(
        database_url=url,
        data_dir=tmp_path / "data",
        operator_token=TOKEN,
        auth_max_failures=10_000,
    )
    service = StudyService.open(settings, clock=clock, seed=7)
    try:
        app = create_app(settings, service=service)
        admin = bearer(TOKEN)
        with TestClient(app) as client:
            client.post("/v1/studies", json={"spec": SMALL, "study_id": "s1"}, headers=admin)
            token = issue(client, admin, role.value)
        yield app, bearer(token)
    finally:
        if not keep:  # keep: the caller closes app.state.service
            service.close()


def _runner(strategy: Any, headers: dict[str, str], checks: list[Any]) -> Any:
    @SETTINGS
    @hypothesis.given(case=strategy)
    def run(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=checks)

    return run


@pytest.mark.parametrize("role_app", list(Role), indirect=True, ids=lambda r: r.value)
def test_every_operation_passes_every_check(role_app) -> None:
    # Prepare
    app, headers = role_app
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    # Execute
    for result in schema.get_all_operations():
        operation = result.ok()

        checks = checks_for(operation.label)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run = _runner(operation.as_strategy(generation_mode=mode), headers, checks)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    run()
            except hypothesis.errors.Unsatisfiable:
                continue  # no negative form (an operation without inputs)
            except Exception as exc:  # collect them all: one report per role
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    # Assert
    assert failures == []


class _Swappable:
    """An ASGI app that forwards to the app of the current example (a fresh one each)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def _empty_postgres(url: str) -> str:
    import psycopg

    with psycopg.connect(
        url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as c:
        c.execute("DROP SCHEMA public CASCADE")
        c.execute("CREATE SCHEMA public")
    return url


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_stateful_runs_pass_every_check(role, tmp_path, clock) -> None:
    _stateful(lambda n: f"sqlite:///{tmp_path / f'run-{n}' / 'db.sqlite'}", tmp_path, clock, role)


@pytest.mark.postgres
def test_stateful_run_on_postgresql(pg_url, tmp_path, clock) -> None:
    _stateful(lambda n: _empty_postgres(pg_url), tmp_path, clock, Role.ADMIN)


def _stateful(url_for: Any, tmp_path: Any, clock: Any, role: Role) -> None:
    """Stateful runs, each example against a fresh coordinator (database, log, tokens).

    Why fresh: Hypothesis replays and explores sequences, and a rule's
    availability depends on what earlier calls created; with state carried over
    from one example to the next, the same choices would meet other bundles
    (Hypothesis reports that as flaky data generation)."""
    # Prepare
    runs = iter(range(10_000))

    def fresh() -> tuple[Any, dict[str, str]]:
        n = next(runs)
        return next(_role_app(url_for(n), tmp_path / f"run-{n}", clock, role, keep=True))

    first_app, _ = fresh()
    proxy = _Swappable(first_app)
    schema = schemathesis.openapi.from_asgi("/openapi.json", proxy)
    base = schema.as_state_machine()

    class Machine(base):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            proxy.app, self.headers = fresh()

        def teardown(self) -> None:
            proxy.app.state.service.close()

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": self.headers}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            checks = checks_for(case.operation.label)
            case.validate_response(response, checks=checks, headers=self.headers)

    links = [n for n, v in inspect.getmembers(Machine) if hasattr(v, "hypothesis_stateful_rule")]
    assert len(links) > 20, "schemathesis inferred no links: the stateful run would test nothing"
    # Execute / Assert
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Machine.run(
                settings=hypothesis.settings(
                    max_examples=STATEFUL_EXAMPLES,
                    stateful_step_count=8,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    suppress_health_check=list(HealthCheck),
                )
            )
    finally:
        first_app.state.service.close()
