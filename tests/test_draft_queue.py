"""Drafts jump the queue: engines claim higher ``Job.priority`` first and the
oldest first within a priority; a running job is not pre-empted, and with several
workers a draft waits for no more than the jobs already running. Real engine
processes (tests/engine_harness.py) for the order, a real folder for the rule."""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest

from engine_harness_util import (make_job, start_engine, stop, wait_until,
                                 write_test_clip)
from fsexchange.client import job_status, submit_job
from fsexchange.documents import FrameRange, Job, Source
from fsexchange.exchange import JOB_FILE, Exchange


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_test_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=6)


def _job(job_id: str, kind: str = "stitch", priority: int | None = None) -> Job:
    return Job(id=job_id, kind=kind, source=Source("media/clip.mp4"),
               range=FrameRange(0, 2, Fraction(25)), priority=priority)


def test_claim_order_is_priority_then_oldest_first(tmp_path):
    ex = Exchange(tmp_path / "ex").ensure()
    jobs = [("long-old", "stitch", None, 100), ("draft-new", "draft", None, 400),
            ("long-new", "stitch", None, 300), ("draft-old", "draft", None, 200),
            ("urgent", "stitch", 90, 500), ("later", "stitch", -5, 50)]
    for job_id, kind, prio, t in jobs:
        submit_job(ex, _job(job_id, kind, prio))
        os.utime(ex.dir("new") / job_id / JOB_FILE, (t, t))  # submission time
    (ex.dir("new") / "unreadable").mkdir()  # counts as priority 0, by its own time
    (ex.dir("new") / "unreadable" / JOB_FILE).write_bytes(b"\xc1 not msgpack")
    os.utime(ex.dir("new") / "unreadable" / JOB_FILE, (250, 250))
    assert ex.claim_order() == ["urgent", "draft-old", "draft-new", "long-old",
                                "unreadable", "long-new", "later"]
    # a claimed draft leaves the queue; the rest keep their order
    assert ex.claim("urgent", "w", lease_seconds=30) is not None
    assert ex.claim_order()[:2] == ["draft-old", "draft-new"]


def _order(logdir: Path) -> list[tuple[str, str, str]]:
    text = (logdir / "order.log").read_text() if (logdir / "order.log").exists() \
        else ""
    return [tuple(line.split()) for line in text.splitlines() if line.strip()]


def _at(order: list, job_id: str, stage: str, event: str) -> int:
    return order.index((job_id, stage, event))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_draft_behind_queued_long_jobs_runs_next(tmp_path, clip, workers):
    """``workers`` long jobs run; another long job and then a draft are queued.
    The draft runs as soon as a worker is free (after the first running job ends,
    before the other running one does), the queued long job after it."""
    ex, logdir = tmp_path / "ex", tmp_path / "log"
    logdir.mkdir()
    engine = start_engine(ex, logdir, "--workers", str(workers), "--poll", "0.1",
                          "--media-root", str(clip.parent))
    try:
        wait_until(lambda: (ex / "new").is_dir(), 60, "engine start")
        running = [f"run{i}" for i in range(workers)]
        for i, job_id in enumerate(running):  # run1 lasts longer than run0
            submit_job(ex, make_job(job_id, frames=6, delay=0.5 + 1.0 * i),
                       attachments={"media/clip.mp4": clip})
        wait_until(lambda: all((j, "hash", "start") in _order(logdir)
                               for j in running), 60, "the long jobs to start")
        submit_job(ex, make_job("queued-long", frames=6, delay=0.05),
                   attachments={"media/clip.mp4": clip})
        draft = replace(make_job("draft", frames=6, delay=0.05), kind="draft",
                        priority=None)
        assert draft.priority == 50
        submit_job(ex, draft, attachments={"media/clip.mp4": clip})
        done = running + ["queued-long", "draft"]
        wait_until(lambda: all(job_status(ex, j).state == "done" for j in done),
                   120, "every job to finish")
    finally:
        stop(engine, signal.SIGTERM)
    order = _order(logdir)
    draft_start = _at(order, "draft", "hash", "start")
    # not pre-empted: the first running job ended before the draft started...
    assert _at(order, "run0", "deliver", "end") < draft_start
    # ...and the draft went before the long job queued ahead of it
    assert draft_start < _at(order, "queued-long", "hash", "start")
    if workers == 2:  # it waited for one running job, not for both
        assert draft_start < _at(order, "run1", "deliver", "end")
