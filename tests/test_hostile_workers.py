"""Worker death in a ``--workers 2`` engine (issue 14, defect 3): kill -9 one
worker, then SIGTERM the engine: it exits within the lease period and leaves no
orphan worker behind; the job the dead worker held is reclaimed and done once.

Before the fix the supervisor hung for ever in the shared stop event's ``set()``:
the killed worker still counted as one of its waiters. Real processes, real
signals; the lease is short so "within the lease period" is seconds.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from engine_harness_util import (count, engine_output, events, run_engine,
                                 start_engine, stop, submit, wait_until,
                                 write_test_clip)
from fsexchange.client import job_status
from fsexchange.exchange import Exchange
from hostile import ended, worker_pids

pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
              pytest.mark.slow]

LEASE = 6.0


@pytest.fixture
def setup(tmp_path):
    ex = Exchange(tmp_path / "ex").ensure().root
    logdir = tmp_path / "log"
    logdir.mkdir()
    clip = write_test_clip(tmp_path / "clip.mp4", frames=12)
    return ex, logdir, clip


def _busy_worker(logdir: Path, job_id: str) -> int:
    rows = events(logdir, job_id)
    return int(rows[0][2])


@pytest.mark.parametrize("when", ["at once", "after its restart"])
def test_sigterm_after_a_worker_was_killed_exits_within_the_lease(setup, when):
    ex, logdir, clip = setup
    busy = submit(ex, clip, "busy", frames=12, delay=0.3)
    idle_job = None
    engine = start_engine(ex, logdir, "--workers", "2", "--lease", str(LEASE),
                          "--poll", "0.1")
    pids: list[int] = []
    try:
        wait_until(lambda: len(worker_pids(engine_output(logdir))) >= 2, 60,
                   "the engine's two workers")
        wait_until(lambda: count(events(logdir, busy), "hash", "frame") >= 1, 60,
                   "the busy job running")
        victim = _busy_worker(logdir, busy)  # the worker holding a job
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: ended(victim), 10, "the killed worker ending")
        if when == "after its restart":
            wait_until(lambda: len(worker_pids(engine_output(logdir))) >= 3, 30,
                       "the supervisor restarting the worker")
            idle_job = submit(ex, clip, "after", frames=2)
            wait_until(lambda: job_status(ex, idle_job).state == "done", 60,
                       "a job run by the restarted engine")
        pids = worker_pids(engine_output(logdir))
        t0 = time.monotonic()
        engine.send_signal(signal.SIGTERM)
        try:
            rc = engine.wait(LEASE + 5)
        except Exception:  # noqa: BLE001 - report the hang as a failure
            rc = None
        took = time.monotonic() - t0
        assert rc == 0, (rc, engine_output(logdir)[-3000:])
        assert took <= LEASE, f"shutdown took {took:.1f} s, the lease is {LEASE} s"
        wait_until(lambda: all(ended(pid) for pid in pids), 5, "no orphan workers")
    finally:
        stop(engine, signal.SIGKILL)
        for pid in pids:
            if not ended(pid):
                os.kill(pid, signal.SIGKILL)
    # The dead worker's job is left running under its lease; a later engine (an
    # hour later by its clock) takes it over and finishes it, once.
    assert run_engine(ex, logdir, "--once", "--no-watch", "--clock-offset", "3600",
                      name="drain") == 0, engine_output(logdir, "drain")
    status = job_status(ex, busy)
    assert status.state == "done", status
    assert [f.frame for f in status.result.frames] == list(range(12))
    hashed = sorted(int(r[3]) for r in events(logdir, busy) if r[:2] == ["hash",
                                                                      "frame"])
    assert hashed == list(range(12))  # every frame once across both attempts
    assert count(events(logdir, busy), "deliver", "end") == 1
    print(f"worker death ({when}): SIGTERM to exit {took:.2f} s (lease {LEASE} s), "
          f"{len(pids)} worker processes, none left")


def test_a_worker_that_ignores_the_stop_is_killed_within_the_lease(setup):
    """A worker stuck where no abort check runs (here: stopped with SIGSTOP) holds
    up nothing: the supervisor kills it half a lease after the stop request."""
    ex, logdir, clip = setup
    busy = submit(ex, clip, "stuck", frames=12, delay=0.3)
    engine = start_engine(ex, logdir, "--workers", "2", "--lease", str(LEASE),
                          "--poll", "0.1")
    pids: list[int] = []
    try:
        wait_until(lambda: len(worker_pids(engine_output(logdir))) >= 2, 60,
                   "the engine's two workers")
        wait_until(lambda: count(events(logdir, busy), "hash", "frame") >= 1, 60,
                   "the job running")
        pids = worker_pids(engine_output(logdir))
        stuck = _busy_worker(logdir, busy)
        os.kill(stuck, signal.SIGSTOP)
        t0 = time.monotonic()
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(LEASE + 5) == 0, engine_output(logdir)[-3000:]
        took = time.monotonic() - t0
        assert took <= LEASE, f"shutdown took {took:.1f} s, the lease is {LEASE} s"
        wait_until(lambda: all(ended(pid) for pid in pids), 5, "no orphan workers")
        assert "did not stop in time; killing it" in engine_output(logdir)
    finally:
        stop(engine, signal.SIGKILL)
        for pid in pids:
            if not ended(pid):
                os.kill(pid, signal.SIGKILL)
    assert job_status(ex, busy).state == "running"  # reclaimed when the lease ends
