"""The local Ray cluster a command starts ends with it, also after kill -9 of the driver
(issue 28: DashboardAgent and RuntimeEnvAgent, about 85 MB each, outlived it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray")

from curator.scoring.ray_reaper import _start_time  # noqa: E402

pytestmark = pytest.mark.slow  # Ray: a local cluster whose driver is killed: make test-slow

DRIVER = """
import os, sys, time
from curator.scoring.ray_engine import RayEngine
from curator.scoring.ray_reaper import descendants
RayEngine(workers=1).connect()
time.sleep(3)  # the raylet's agents start after init returns
print(" ".join(f"{p}" for p in descendants(os.getpid())), flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="lists processes through /proc")
def test_a_killed_drivers_local_cluster_is_gone():
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE,
                              text=True)
    try:
        line = driver.stdout.readline()
        pids = [int(p) for p in line.split()]
        started = {p: _start_time(p) for p in pids}
        assert len(pids) >= 3, line   # gcs, raylet, agents
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    deadline = time.monotonic() + 30
    left = pids
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = [p for p in pids if _start_time(p) == started[p] and _start_time(p)]
    assert left == [], [open(f"/proc/{p}/cmdline").read() for p in left]
