"""Cache entries written by many writers at once: every writer finishes, readers see a whole file."""

from __future__ import annotations

import threading

import numpy as np

from fedward.simulation.atomic import write_npz


def test_concurrent_writers_of_one_entry_all_finish_and_leave_a_whole_file(tmp_path) -> None:
    # Prepare: eight writers of the same entry, released together
    path = tmp_path / "cache" / "entry.npz"
    start, errors = threading.Barrier(8), []

    def writer(i: int) -> None:
        start.wait()
        try:
            for _ in range(20):
                write_npz(path, x=np.full(50_000, i, np.float32), y=np.arange(3))
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    # Execute
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Assert: no writer failed, one complete entry, no temporary left behind
    assert errors == []
    with np.load(path) as f:
        assert len(set(f["x"].tolist())) == 1 and f["y"].tolist() == [0, 1, 2]
    assert [p.name for p in path.parent.iterdir()] == ["entry.npz"]
