"""kill -9 at seeded moments, for tests/test_crash.py and tests/safety (one harness).

A job server (a script the test writes) imports torch and curator once, then runs each job
(one JSON line on stdin) in a forked child and answers with the child's exit status, so a
chain of kills and the reference run cost one import. The child kills itself with SIGKILL
at the n-th outer store transaction of a phase, just before or just after its commit
(``kill_in_transactions``): kill -9 at the moments where state changes. The test draws n
with a seeded generator from the transactions the phase took in an uninterrupted run, runs
the killed jobs one after the other (each resumes what the one before left), runs once
more to the end, and compares the store (``store_contents``) and the exports
(``export_digests``) with the uninterrupted run's.

The server imports this module too (``from tests.kill_harness import ...``): what runs
there is ``kill_in_transactions`` and ``serve``; the rest runs in the test process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


# -- in the job server ---------------------------------------------------------------------


def kill_in_transactions(plan: dict[str, Any]) -> tuple[dict[str, Any], list[str | None]]:
    """Count this process's outer store transactions per phase, and SIGKILL it at the
    ``plan["n"]``-th one of ``plan["phase"]``, ``plan["when"]`` ("before" its commit, or
    "after"); an empty plan kills nothing. Returns the counts and the phase: a one-item
    list the job sets as it goes (``phase[0] = "score"``)."""
    from curator.store import Store

    real_atomic = Store.atomic
    counts: dict[str, Any] = {}
    phase: list[str | None] = [None]

    def due(when: str) -> bool:
        return (phase[0], counts.get(phase[0]), when) == \
            (plan.get("phase"), plan.get("n"), plan.get("when"))

    @contextlib.contextmanager
    def atomic(self):
        outer = not getattr(self._local, "in_tx", False)
        with real_atomic(self) as con:
            yield con
            if outer:
                counts[phase[0]] = counts.get(phase[0], 0) + 1
                if due("before"):
                    os.kill(os.getpid(), signal.SIGKILL)   # not committed
        if outer and due("after"):
            os.kill(os.getpid(), signal.SIGKILL)

    Store.atomic = atomic
    return counts, phase


def serve(run_job: Callable[[dict[str, Any]], None], log_name: str | None = None) -> None:
    """The server's loop: each job line on stdin runs ``run_job(job)`` in a forked child;
    the answer is {"rc": exit status, -9 for SIGKILL}. With ``log_name`` the child's output
    goes to that file in the job's work folder (stdout carries the answers, and a pipe
    nobody reads until the end could fill up)."""
    import traceback

    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            if log_name:
                log = os.open(os.path.join(job["work"], log_name),
                              os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                os.dup2(log, 1)
                os.dup2(log, 2)
            code = 0
            try:
                run_job(job)
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"rc": rc}), flush=True)


# -- in the test process -------------------------------------------------------------------


class KillServer:
    """The job server, started from ``script`` (a file that ends by calling ``serve``)."""

    def __init__(self, script: Path):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)

    def run(self, store: Path, work: Path, plan: dict[str, Any]) -> int:
        """One job: its exit status (-signal.SIGKILL when the plan's kill came). The job
        writes its transaction counts to ``work/counts.json`` when it finishes."""
        job = {"store": str(store), "work": str(work), "plan": plan,
               "counts": str(work / "counts.json")}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, self.close()
        return json.loads(line)["rc"]

    def close(self) -> str:
        """Stop the server; returns what it wrote to stderr (tracebacks of failed jobs),
        or "" when it was stopped before."""
        if self.proc.stderr.closed:
            return ""
        self.proc.stdin.close()
        self.proc.stdout.close()
        try:
            err = self.proc.stderr.read()
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stderr.close()
        return err[-3000:]


@contextlib.contextmanager
def kill_server(script: Path, source: str, logs: str | None = None) -> Iterator[KillServer]:
    """A ``KillServer`` running ``source`` (written to ``script``), closed at the end, also
    on an error; on a failed assertion its stderr, and the job logs matching the glob ``logs`` below the
    script's folder, are printed first."""
    script.write_text(source)
    server = KillServer(script)
    try:
        yield server
    except BaseException as exc:
        err = server.close()
        if isinstance(exc, AssertionError):
            print(err)
            for log in sorted(script.parent.glob(logs)) if logs else ():
                print(log, log.read_text()[-3000:])
        raise
    server.close()


def kill_then_rerun(server: KillServer, ref: tuple[Path, Path], crash: tuple[Path, Path],
                    draw_plans: Callable[[dict[str, int]], list[dict[str, Any]]]
                    ) -> list[dict[str, Any]]:
    """Run once uninterrupted in ``ref`` (store, work), then in ``crash`` once per plan
    ``draw_plans(the reference's counts)`` gives, each of them killed, and once more to the
    end. Returns the plans, for failure messages."""
    assert server.run(*ref, {}) == 0
    plans = draw_plans(json.loads((ref[1] / "counts.json").read_text()))
    for i, plan in enumerate(plans):
        assert server.run(*crash, plan) == -signal.SIGKILL, plans[:i + 1]
    assert server.run(*crash, {}) == 0, plans
    return plans


def question_rows(lo: int, hi: int) -> list[dict[str, Any]]:
    """The inputs' rows i in [lo, hi): a short arithmetic question each."""
    return [{"prompt": f"question {i}: what is {i} times 7?", "response": f"{i * 7}", "n": i}
            for i in range(lo, hi)]


def export_digests(folders: dict[str, Path]) -> dict[str, Any]:
    """The export folders' files by checksum (manifest.json without its time and digest),
    and for a hidden folder among them (a killed export's leftovers) the names in it."""
    from curator.digests import sha256_file

    found: dict[str, Any] = {}
    for name, folder in sorted(folders.items()):
        if name.startswith("."):
            found[f"leftover {name}"] = sorted(p.name for p in folder.iterdir())
            continue
        for f in sorted(folder.rglob("*")):
            key = f"{name}/{f.relative_to(folder)}"
            if f.name == "manifest.json":
                manifest = json.loads(f.read_text())
                for volatile in ("created_at", "manifest_sha256"):
                    manifest.pop(volatile)
                found[key] = manifest
            elif f.is_file():
                found[key] = sha256_file(f)
    return found


def store_contents(store_path: Path) -> dict[str, Any]:
    """What a rerun must reproduce: the data, the scores, the selections and the schedule's
    state; run ids, timestamps and run-named folders aside."""
    from curator.store import Store

    store = Store(store_path)
    q = store.query
    members = q("SELECT dataset, version, sample_id, metadata, source_file, source_line "
                "FROM version_members ORDER BY ALL")
    return {
        "versions": q("SELECT dataset, version, parent, mode, n_read, n_accepted, n_duplicates,"
                      " n_quarantined, n_added, n_removed, n_unchanged, n_members FROM versions"
                      " ORDER BY ALL"),
        "members": sorted((d, v, s, m, Path(f).name, n) for d, v, s, m, f, n in members),
        "samples": q("SELECT sample_id, messages, prompt, response FROM samples ORDER BY ALL"),
        "quarantine": sorted((d, v, Path(f).name, n, r, raw) for d, v, f, n, r, raw in q(
            "SELECT dataset, version, source_file, line, reason, raw FROM quarantine")),
        "embeddings": q("SELECT count(*), count(DISTINCT sample_id) FROM embeddings"),
        "utilities": [(t, e, m, c, round(u, 4) if u is not None else None, v) for t, e, m, c, u, v
                      in q("SELECT target_id, example_id, model, config, utility, valid "
                           "FROM utilities ORDER BY ALL")],
        "selections": [(*r[:-1], round(r[-1], 4) if r[-1] is not None else None) for r in q(
            "SELECT selection_id, dataset, version, stage, method, function, budget, n_pool, "
            "n_selected, model, parent, objective FROM selections ORDER BY ALL")],
        "selection_members": q("SELECT selection_id, layer, sample_id, rank FROM "
                               "selection_members ORDER BY ALL"),
        "ingested_files": sorted((d, s, Path(p).name, v) for d, s, p, v in q(
            "SELECT dataset, sha256, path, version FROM ingested_files")),
        "schedule": [(n, s, f, e, x is not None, o) for n, s, f, e, x, o in q(
            "SELECT name, last_selection_id, failures, last_error, last_export, lock_owner "
            "FROM schedules")],
        "staging": q("SELECT count(*) FROM ingest_staging"),
        "running": q("SELECT kind FROM runs WHERE status = 'running'"),
    }
