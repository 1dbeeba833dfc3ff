"""Issue 14 item 8: a tiny study on a Ray cluster joined by address, and mapped worker data.

The Ray test starts a real one-node Ray cluster (``ray start --head`` in its
own temporary folder, every port chosen free, so it neither joins nor
disturbs any other Ray on the machine), joins it the way a user joins a
cluster (``make_executor(..., ray_address="host:port")``, the CLI's
``RAY_ADDRESS``), and runs the tiny study there: the figures must be the
serial executor's. The cluster is stopped through the process this test
started.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedward.simulation.executor import ExecutorKind, make_executor, mapped_study_data
from fedward.simulation.scenario import PRESETS, Scenario, StrategyRun
from fedward.simulation.sensordata import load_study_data
from fedward.simulation.study import Study

TINY = PRESETS["tiny"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_JOIN_AND_RUN = """
import json, sys
import ray
from tests.simulation.test_ray_tiny_study import TINY, study_figures
from fedward.simulation.executor import ExecutorKind
figures = study_figures(TINY, ExecutorKind.RAY, ray_address=sys.argv[1])
resources = ray.cluster_resources()
ray.shutdown()
print(json.dumps({"figures": figures, "resources": resources}))
"""


def study_figures(scenario: Scenario, kind: ExecutorKind, **options: Any) -> dict[str, Any]:
    run = StrategyRun.FTTE
    pool = make_executor(
        kind, scenario.data_config(), scenario.study_spec(run).model_settings(), **options
    )
    try:
        result = Study(scenario, run, executor=pool).run().as_dict()
    finally:
        pool.close()
    return {k: v for k, v in result.items() if k not in {"wall_s", "setup_s"}}


def test_mapped_worker_data_is_the_loaded_data_on_an_empty_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.setenv("FEDWARD_CACHE", str(tmp_path))
    config = TINY.model_copy(update={"mislabelled_fraction": 0.25}).data_config()
    # Execute
    mapped = mapped_study_data(config)  # generates and caches on the empty cache
    loaded = load_study_data(config)
    # Assert
    assert isinstance(mapped.device_x[0], np.memmap)
    assert len(mapped.device_x) == len(loaded.device_x) == TINY.devices
    for mx, lx, my, ly in zip(
        mapped.device_x, loaded.device_x, mapped.device_y, loaded.device_y, strict=True
    ):
        assert np.array_equal(mx, lx)
        assert np.array_equal(my, ly)  # mislabelled devices relabelled the same way
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(mapped.device_y, load_study_data(TINY.data_config()).device_y, strict=True)
    )


@pytest.fixture
def ray_cluster() -> Iterator[str]:
    """A one-node Ray cluster of our own; yields its address (host:port)."""
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    temp_dir = tempfile.mkdtemp(prefix="fwray", dir="/tmp")  # short: Ray's socket paths
    port = free_port()
    ports = {
        "--port": port,
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--runtime-env-agent-port": free_port(),
    }
    command = [ray_cli, "start", "--head", "--block", "--num-cpus=2", "--include-dashboard=false"]
    command += ["--disable-usage-stats", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}"]
    command += ["--object-store-memory=100000000"]
    command += [f"{flag}={value}" for flag, value in ports.items()]
    # no token authentication: Ray enables it when ~/.ray/auth_token exists (another
    # Ray may have written one), and a test cluster on loopback needs none
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    head = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (Path(temp_dir) / "ray_current_cluster").exists():
            if head.poll() is not None or time.monotonic() > deadline:
                output = head.stdout.read() if head.stdout else ""
                pytest.fail(f"ray start did not come up: {output[-2000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()  # ray start --block stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_a_tiny_study_on_a_ray_cluster_joined_by_address_matches_serial(
    ray_cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    serial = study_figures(TINY, ExecutorKind.SERIAL)
    # Execute: a fresh driver process joins the cluster, as a user's command does (a
    # driver that already ran and shut down a local Ray in this test process, as the
    # executor-equivalence test does, lost its actors when re-initialised by address)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"  # as the cluster was started
    done = subprocess.run(
        [sys.executable, "-c", _JOIN_AND_RUN, ray_cluster],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    on_cluster, resources = report["figures"], report["resources"]
    # Assert
    assert resources.get("CPU") == 2  # the cluster we started, not a new local Ray
    assert on_cluster == json.loads(json.dumps(serial))
    assert serial["updates"] == TINY.update_budget


def test_a_ray_address_is_refused_for_other_executors() -> None:
    # Prepare
    data, model = TINY.data_config(), TINY.study_spec(StrategyRun.FTTE).model_settings()
    # Execute / Assert
    with pytest.raises(ValueError, match="ray executor"):
        make_executor(ExecutorKind.PROCESS, data, model, ray_address="127.0.0.1:6379")


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_an_address_is_refused_when_this_process_already_holds_a_ray_session() -> None:
    import ray

    # Prepare: a local Ray in this process
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    data, model = TINY.data_config(), TINY.study_spec(StrategyRun.FTTE).model_settings()
    try:
        # Execute / Assert: not silently run on the local session instead of the cluster
        with pytest.raises(ValueError, match="already initialised"):
            make_executor(ExecutorKind.RAY, data, model, ray_address="127.0.0.1:6379")
    finally:
        ray.shutdown()
