"""What the audit outbox costs: updates per second, outbox vs the old write-ahead order.

Not a test (no timing is asserted anywhere): a side-by-side measurement in one
process, same workload (one ``submit_update`` per frame, i.e. one transaction
each, the worst case for the extra outbox insert), alternating the two orders
over 3 repetitions and reporting medians and their ratio::

    .venv/bin/python -m tests.coordinator.audit_outbox_cost               # SQLite
    .venv/bin/python -m tests.coordinator.audit_outbox_cost postgresql+psycopg://postgres@127.0.0.1/DB

The PostgreSQL database given is emptied (schema ``public`` dropped) before each run.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.coordinator import audit_crash_worker as worker

ROUNDS = 60
REPEATS = 3


def run(url: str | None, *, write_ahead: bool) -> float:
    from fedward.coordinator.service.core import ServiceCore
    from fedward.coordinator.store.recorder import EventRecorder

    saved = (ServiceCore._audit, EventRecorder._write)
    if write_ahead:
        worker._write_ahead()
    data = Path(tempfile.mkdtemp(prefix="fedward-outbox-cost-"))
    if url:
        import psycopg

        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
    settings = worker.settings_for(url or f"sqlite:///{data / 'coordinator.db'}", data / "data")
    service = worker.StudyService.open(settings, clock=time.time, seed=7)
    try:
        worker.work(service, steps=1)
        start, n = time.perf_counter(), 0
        for _ in range(ROUNDS):
            service.dispatch(worker.STUDY)
            for out in service.pending_tasks(worker.STUDY):
                service.submit_update(worker.STUDY, worker.frame_for(service, out))
                n += 1
        return n / (time.perf_counter() - start)
    finally:
        service.close()
        ServiceCore._audit, EventRecorder._write = saved  # type: ignore[method-assign]


def main() -> None:
    import torch

    torch.set_num_threads(1)
    url = sys.argv[1] if len(sys.argv) > 1 else None
    rates: dict[str, list[float]] = {"outbox": [], "write_ahead": []}
    for rep in range(REPEATS):
        order = ("write_ahead", "outbox") if rep % 2 else ("outbox", "write_ahead")
        for mode in order:
            rates[mode].append(run(url, write_ahead=mode == "write_ahead"))
    for mode, values in rates.items():
        print(
            f"{mode}: {[round(v, 1) for v in values]} updates/s, median {statistics.median(values):.1f}"
        )
    ratio = statistics.median(rates["outbox"]) / statistics.median(rates["write_ahead"])
    print(f"outbox / write-ahead: {ratio:.3f}")


if __name__ == "__main__":
    main()
