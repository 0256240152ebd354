"""Helpers for tests that drive real engine processes (tests/engine_harness.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import pytest

from fsexchange.client import submit_job
from fsexchange.documents import FrameRange, Job, Source

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HARNESS = HERE / "engine_harness.py"


def write_test_clip(path: Path, frames: int = 12) -> Path:
    """A small real-face clip (astronaut) written with PyAV."""
    from clips import ClipSpec, render_frames, write_clip

    return write_clip(path, render_frames(ClipSpec(frames=frames, size=(64, 48))))


def make_job(job_id: str, *, frames: int = 6, source: str = "media/clip.mp4",
             **test: Any) -> Job:
    return Job(id=job_id, source=Source(source), range=FrameRange(0, frames,
               Fraction(25)), extra={"test": test} if test else {})


def submit(exchange: Path, clip: Path, job_id: str, *, frames: int = 6,
           **test: Any) -> str:
    """Submit a harness job with the clip attached as media/clip.mp4."""
    return submit_job(exchange, make_job(job_id, frames=frames, **test),
                      attachments={"media/clip.mp4": clip})


def engine_env(logdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["FS_HARNESS_LOG"] = str(logdir)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE)])
    return env


def start_engine(exchange: Path, logdir: Path, *args: str,
                 name: str = "engine",
                 preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen:
    """Start a harness engine process; its output goes to ``logdir/<name>.out``.
    ``preexec_fn`` runs in the child before the engine (limits, capabilities)."""
    out = open(logdir / f"{name}.out", "ab")
    try:
        return subprocess.Popen(
            [sys.executable, str(HARNESS), "--exchange", str(exchange), *args],
            stdout=out, stderr=subprocess.STDOUT, env=engine_env(logdir), cwd=ROOT,
            preexec_fn=preexec_fn)
    finally:
        out.close()


def run_engine(exchange: Path, logdir: Path, *args: str, timeout: float = 120,
               name: str = "engine",
               preexec_fn: Callable[[], None] | None = None) -> int:
    """Run a harness engine process to its end (``--once`` runs)."""
    p = start_engine(exchange, logdir, *args, name=name, preexec_fn=preexec_fn)
    try:
        return p.wait(timeout)
    finally:
        stop(p)


def stop(p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if p.poll() is None:
        p.send_signal(sig)
        p.wait(30)


def events(logdir: Path, job_id: str) -> list[list[str]]:
    """The harness stage log of a job: ``[stage, event, pid, (frame)]`` rows."""
    try:
        text = (logdir / f"{job_id}.log").read_text()
    except FileNotFoundError:
        return []
    return [line.split() for line in text.splitlines() if line.strip()]


def count(rows: list[list[str]], stage: str, event: str) -> int:
    return sum(1 for r in rows if r[0] == stage and r[1] == event)


def wait_until(pred: Callable[[], Any], timeout: float = 60.0,
               what: str = "condition") -> Any:
    """Poll ``pred`` until truthy (generous timeouts: CI machines are slow)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def engine_output(logdir: Path, name: str = "engine") -> str:
    try:
        return (logdir / f"{name}.out").read_text(errors="replace")
    except FileNotFoundError:
        return ""


@pytest.fixture
def no_leaked_threads():
    """Fail a test that leaves threads running (watchers, lease monitors)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    leaked: list[threading.Thread] = []
    while time.monotonic() < deadline:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked:
            return
        time.sleep(0.05)
    pytest.fail(f"leaked threads: {leaked}")
