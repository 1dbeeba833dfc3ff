"""Prometheus metrics of the live coordinator, read from the service at scrape time.

Why a collector instead of counters bumped on every event: the service already
keeps the authoritative, persisted counts (the engine's stats and the rejection
counters restored after a restart), so a scrape reads them under the service
lock and can never drift from what ``/v1/studies/{id}/status`` reports. Each
app gets its own :class:`CollectorRegistry` (never prometheus-client's global
one), so two apps in one process -- tests, ``fedward up`` -- do not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..service import StudyNotFound, StudyService, StudyStatus


class ServiceCollector(Collector):
    """Per-study counters and gauges of a :class:`StudyService`.

    ``per_study=False`` sums every series over the studies and drops the
    ``study`` label: what an anonymous scrape of ``/metrics`` gets, so study
    ids are shown only to a token that may read them (``metrics:read``).
    """

    def __init__(
        self, source: Callable[[], StudyService | None], *, per_study: bool = True
    ) -> None:
        self._source = source
        self._per_study = per_study

    def _statuses(self) -> Iterator[tuple[str, StudyStatus]]:
        service = self._source()
        if service is None:
            return
        for study_id in service.study_ids():
            try:
                yield study_id, service.status(study_id)
            except StudyNotFound:  # removed since study_ids()
                continue

    def collect(self) -> Iterator[Metric]:
        families = list(self._collect())
        if self._per_study:
            yield from families
            return
        for family in families:
            yield _without_study(family)

    def _collect(self) -> Iterator[Metric]:
        accepted = CounterMetricFamily(
            "fedward_updates_accepted", "Updates accepted by the engine.", labels=["study"]
        )
        rejected = CounterMetricFamily(
            "fedward_updates_rejected", "Updates refused, by reason.", labels=["study", "reason"]
        )
        duplicates = CounterMetricFamily(
            "fedward_update_redeliveries",
            "Re-delivered updates acknowledged again (since start).",
            labels=["study"],
        )
        merges = CounterMetricFamily("fedward_merges", "Model merges.", labels=["study"])
        dispatched = CounterMetricFamily(
            "fedward_tasks_dispatched", "Tasks dispatched.", labels=["study"]
        )
        failed = CounterMetricFamily(
            "fedward_tasks_failed",
            "Tasks failed (deadline, rejection, revocation, stop).",
            labels=["study"],
        )
        in_flight = GaugeMetricFamily(
            "fedward_tasks_in_flight", "Tasks in flight.", labels=["study"]
        )
        buffered = GaugeMetricFamily(
            "fedward_updates_buffered", "Updates buffered, not yet merged.", labels=["study"]
        )
        version = GaugeMetricFamily(
            "fedward_model_version", "Current model version.", labels=["study"]
        )
        devices = GaugeMetricFamily(
            "fedward_devices", "Enrolled devices by state.", labels=["study", "state"]
        )
        wire = CounterMetricFamily(
            "fedward_wire_refused",
            "Messages refused on the wire since start (unsigned, bad_signature, replayed, "
            "not_enrolled, enrolment_denied, enrol_rate_limited, heartbeat_refused, chunk, "
            "route, malformed, ...).",
            labels=["study", "reason"],
        )
        fills = CounterMetricFamily(
            "fedward_secagg_fills",
            "Secure-aggregation fills (one SecAgg instance per merge) since start, by "
            "outcome: opened, merged, aborted.",
            labels=["study", "outcome"],
        )
        dropouts = CounterMetricFamily(
            "fedward_secagg_dropouts",
            "Fill members declared dropped since start, by the phase they missed.",
            labels=["study", "phase"],
        )
        secagg_bytes = CounterMetricFamily(
            "fedward_secagg_bytes",
            "Secure-aggregation frame bytes since start (in: from members, out: to them).",
            labels=["study", "direction"],
        )
        service = self._source()
        for study_id, st in self._statuses():
            if service is not None:
                for reason, n in sorted(service.wire_refusals(study_id).items()):
                    wire.add_metric([study_id, reason], n)
                secagg = service.secagg_stats(study_id)
                for outcome in ("opened", "merged", "aborted"):
                    fills.add_metric([study_id, outcome], secagg["fills"].get(outcome, 0))
                for phase, n in sorted(secagg["dropouts"].items()):
                    dropouts.add_metric([study_id, phase], n)
                secagg_bytes.add_metric([study_id, "in"], secagg["bytes_in"])
                secagg_bytes.add_metric([study_id, "out"], secagg["bytes_out"])
            accepted.add_metric([study_id], st.updates_accepted)
            for reason, n in sorted(st.rejections.items()):
                rejected.add_metric([study_id, reason.value], n)
            duplicates.add_metric([study_id], st.duplicates)
            merges.add_metric([study_id], st.merges)
            dispatched.add_metric([study_id], st.tasks_dispatched)
            failed.add_metric([study_id], st.tasks_failed)
            in_flight.add_metric([study_id], st.in_flight)
            buffered.add_metric([study_id], st.buffered)
            version.add_metric([study_id], st.model_version)
            for state, n in sorted(st.devices_by_state.items()):
                devices.add_metric([study_id, state.value], n)
        yield from (
            accepted, rejected, duplicates, merges, dispatched, failed, in_flight, buffered,
            version, devices, wire, fills, dropouts, secagg_bytes,
        )  # fmt: skip


def _without_study(family: Metric) -> Metric:
    """The family summed over studies, without the ``study`` label."""
    totals: dict[tuple[tuple[str, str], ...], float] = {}
    names: dict[tuple[tuple[str, str], ...], str] = {}
    for sample in family.samples:
        labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "study"))
        totals[labels] = totals.get(labels, 0.0) + sample.value
        names[labels] = sample.name
    out = Metric(family.name, family.documentation, family.type)
    for labels, value in totals.items():
        out.add_sample(names[labels], dict(labels), value)
    return out


class ApiCollector(Collector):
    """The API's own refusals: failed logins and role denials (each also audited)."""

    def __init__(self, counters: Mapping[str, int]) -> None:
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        failures = CounterMetricFamily(
            "fedward_api_auth_failures", "Requests with a wrong, expired or revoked token."
        )
        failures.add_metric([], self._counters.get("auth_failures", 0))
        denied = CounterMetricFamily(
            "fedward_api_access_denied", "Requests refused because the role lacks the permission."
        )
        denied.add_metric([], self._counters.get("access_denied", 0))
        locked = CounterMetricFamily(
            "fedward_api_locked_out", "Requests answered 429: their source failed too often."
        )
        locked.add_metric([], self._counters.get("locked_out", 0))
        yield from (failures, denied, locked)


def metrics_registry(
    source: Callable[[], StudyService | None],
    *,
    per_study: bool = True,
    api_counters: Mapping[str, int] | None = None,
) -> CollectorRegistry:
    """A fresh registry holding only this service's metrics (and the API's refusals)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(source, per_study=per_study))
    if api_counters is not None:
        registry.register(ApiCollector(api_counters))
    return registry
