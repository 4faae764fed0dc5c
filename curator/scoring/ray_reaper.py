"""Ray processes a command started end with the command, also when it is killed.

``ray.init`` of a local cluster starts a GCS server, a raylet and its agents as children of
the driver. ``ray.shutdown`` stops them; a driver killed with kill -9 cannot, and the raylet
then dies without its two agents (DashboardAgent, RuntimeEnvAgent, about 85 MB each), which
lived on for ever. So once the cluster is up, the driver starts a small reaper holding the
read end of a pipe: when the driver ends, however it ends, the pipe closes and the reaper
kills whatever is left of the processes that were the driver's descendants then (each
checked by its start time, so a pid reused since is left alone). A cluster the command
joined (``--ray-address``) is not the command's: nothing of it is touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Runs in its own process; waits for EOF on stdin, then kills the listed processes.
_REAPER = r"""
import os, signal, sys, time
def start(pid):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]
listed = [arg.split(":", 1) for arg in sys.argv[2:]]
sys.stdin.buffer.read()
time.sleep(float(sys.argv[1]))
for pid, when in listed:
    if start(int(pid)) == when:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
"""


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]


def _is_ray(pid: int) -> bool:
    """Ray's own processes only (gcs_server, raylet, ray/... scripts, ray:: workers)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"/ray/" in cmd or cmd.startswith(b"ray::")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` now (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def start_reaper(grace: float = 1.0) -> subprocess.Popen | None:
    """A reaper for this process's descendants now (the local cluster's processes); close
    its stdin (or end this process) to have them killed ``grace`` seconds later. None
    where processes cannot be listed."""
    listed = [f"{p}:{t}" for p in descendants(os.getpid())
              if _is_ray(p) and (t := _start_time(p))]
    if not listed:
        return None
    return subprocess.Popen([sys.executable, "-c", _REAPER, str(grace), *listed],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def stop_reaper(reaper: subprocess.Popen | None) -> None:
    """The command is done with its cluster: the reaper kills what shutdown left."""
    if reaper is not None and reaper.stdin is not None:
        reaper.stdin.close()
