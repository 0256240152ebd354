"""Chaos: several engine processes (one with two workers) over many jobs while a
seeded schedule kills random engines with SIGKILL and starts fresh ones. Afterwards
every job is done exactly once: nothing lost, nothing delivered twice, no job folder
left behind. Real processes, real folders; short leases so dead workers' jobs are
taken over within seconds."""

from __future__ import annotations

import random
import signal
import sys
import time

import pytest

from engine_harness_util import (count, engine_output, events, run_engine,
                                 start_engine, stop, submit, write_test_clip)
from fsexchange.client import job_status, list_jobs
from fsexchange.documents import Lease, load_document
from fsexchange.exchange import Exchange

pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
              pytest.mark.slow]

JOBS = 12
FRAMES = 8
SEED = 20261121


def test_random_kill_9_loses_and_duplicates_nothing(tmp_path):
    ex = Exchange(tmp_path / "ex").ensure().root
    logdir = tmp_path / "log"
    logdir.mkdir()
    clip = write_test_clip(tmp_path / "clip.mp4", frames=FRAMES)
    ids = [submit(ex, clip, f"chaos{i:02d}", frames=FRAMES, delay=0.08,
                  deliver_delay=0.03) for i in range(JOBS)]
    rng = random.Random(SEED)
    # The schedule may kill one job's workers 3 times or more, which ends the job
    # job.crashed (a guard tested on its own); here it must stay out of reach.
    lease = ("--lease", "2", "--poll", "0.2", "--max-reclaims", "1000")
    engines = [start_engine(ex, logdir, *lease, name="e0"),
               start_engine(ex, logdir, *lease, "--workers", "2", name="e1"),
               start_engine(ex, logdir, *lease, name="e2")]
    kills, spawned = 0, 3
    deadline = time.monotonic() + 25
    try:
        while time.monotonic() < deadline:
            # Not job_status: a job whose reclaimer was killed mid-requeue waits in
            # tmp/ for the sweeper (the drain below), in no state folder meanwhile.
            if sum(s.state == "done" for s in list_jobs(ex)) == JOBS:
                break
            time.sleep(rng.uniform(0.3, 1.0))
            victim = rng.randrange(len(engines))
            stop(engines[victim], signal.SIGKILL)  # the whole process, mid-job
            kills += 1
            engines[victim] = start_engine(ex, logdir, *lease, name=f"e{spawned}")
            spawned += 1
    finally:
        for p in engines:
            stop(p, signal.SIGKILL)
    # Whatever the kills left behind: a later engine takes it over and finishes.
    assert run_engine(ex, logdir, "--once", "--no-watch", *lease,
                      "--clock-offset", "3600", name="drain") == 0, \
        engine_output(logdir, "drain")
    reclaims = sum(load_document(ex / "done" / j / "lease.msgpack", Lease).reclaims
                   for j in ids)
    print(f"chaos: {kills} kill -9 over {spawned} engine processes, {JOBS} jobs, "
          f"{reclaims} jobs taken over from dead workers")
    assert kills >= 3 and reclaims >= 1  # the kills really hit running jobs
    for job_id in ids:
        status = job_status(ex, job_id)
        assert status.state == "done", status
        rows = events(logdir, job_id)
        # Delivered exactly once: one result, every frame in it once. (Like hash
        # below, the deliver stage may end twice: a kill between its end and its
        # DONE record re-runs it. But never two runs at once: a run's rows all
        # follow its own start.)
        assert [f.frame for f in status.result.frames] == list(range(FRAMES))
        starter = None
        for stage, event, pid, *_ in rows:
            if stage == "deliver":
                starter = pid if event == "start" else starter
                assert pid == starter, rows
        assert count(rows, "deliver", "end") >= 1, rows
        # No frame hashed twice: an attempt resumes from the frames the dead one
        # checkpointed. (The stage itself may finish twice: a kill between its end
        # and its DONE record re-runs it, and it finds every frame done. A kill
        # between a frame's checkpoint and its log line leaves the line out.)
        hashed = [int(r[3]) for r in rows if r[:2] == ["hash", "frame"]]
        assert len(hashed) == len(set(hashed)) and set(hashed) <= set(range(FRAMES))
        assert count(rows, "hash", "end") >= 1, rows
    for state in ("new", "cur", "failed", "cancelled"):
        assert list((ex / state).iterdir()) == [], state
    assert sorted(p.name for p in (ex / "done").iterdir()) == sorted(ids)
    assert [p for p in (ex / "tmp").iterdir() if not p.name.startswith(".")] == []
