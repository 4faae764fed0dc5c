"""`curator app` must not leave a live server behind when it is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts `curator app` and stops it with SIGTERM: make test-slow

REPO = Path(__file__).resolve().parents[2]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_sigterm_to_curator_app_stops_the_server(tmp_path, free_port):
    port = free_port()
    url = f"http://127.0.0.1:{port}/_stcore/health"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # its own session, so a server left behind can be cleaned up below by its group
    proc = subprocess.Popen([sys.executable, "-m", "curator.cli", "app", "--store",
                             str(tmp_path / "nowhere"), "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not answers(url):
            assert proc.poll() is None, "curator app exited early"
            assert time.monotonic() < deadline, "curator app did not answer within 90 s"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)  # the process we started, not its group
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while answers(url) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not answers(url), "the port still answers after curator app was killed"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
