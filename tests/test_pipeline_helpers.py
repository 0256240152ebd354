"""Helpers for the STIT pipeline tests (no tests here).

The pipeline tests run real jobs on the tiny profile: a few frames of the astronaut
clip at 192x144 (the tiny generator works at 64 px), with PTI and stitching shortened
through job options. The tiny networks are random, so PTI gets a larger learning
rate (``FAST_OPTIONS``) to show a fit within a few passes; everything else keeps
the reference settings unless a test says otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from clips import ClipSpec, render_frames, write_clip

ROOT = Path(__file__).resolve().parents[1]
RATE = Fraction(25)

#: Short, still faithful runs: 10·L2 + LPIPS, Adam, batches; a larger PTI lr for
#: the random tiny networks (1e-3, x3 for the batch of 3); stitching at the
#: reference lr 3e-4; the temporal refinement with 2 + 2 epochs (README: 10 + 3).
FAST_OPTIONS: dict[str, Any] = {
    "profile": "tiny", "device": "cpu",
    "pti": {"steps": 12, "lr": 1e-3, "batch_size": 3, "checkpoint_every": 3},
    "stitch": {"steps": 16, "batch_size": 2},
    "refine": {"epochs_w": 2, "epochs_g": 2},
}


def make_clip(folder: Path, frames: int = 6, name: str = "clip.mp4",
              **spec: Any) -> Path:
    """A real-face clip (astronaut) as H.264 in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    s = ClipSpec(frames=frames, size=(192, 144), face_scale=0.45, **spec)
    return write_clip(folder / name, render_frames(s), RATE)


def make_job(job_id: str, frames: int, *, edits: tuple = (),
             options: dict[str, Any] | None = None, kind: str = "stitch"):
    from fsexchange.documents import FrameRange, Job, Source

    return Job(id=job_id, kind=kind, source=Source("media/clip.mp4"),
               range=FrameRange(0, frames, RATE), edits=tuple(edits),
               options=dict(FAST_OPTIONS if options is None else options))


def submit(exchange: Path, job, clip: Path) -> str:
    from fsexchange.client import submit_job

    return submit_job(exchange, job, attachments={"media/clip.mp4": clip})


def run_engine_inprocess(exchange: Path) -> int:
    from engine.service.worker import EngineOptions, serve

    return serve(EngineOptions(exchange=exchange, once=True, device="cpu",
                               use_watchdog=False, poll_interval=0.1))


def engine_process(exchange: Path, lease: float = 2.0) -> subprocess.Popen:
    """A real ``facestitch engine --once`` process (killable with SIGKILL)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-m", "host_bridge.cli", "engine", "--exchange",
         str(exchange), "--once", "--device", "cpu", "--lease", str(lease),
         "--no-watch", "--poll", "0.1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None,
             poll: float = 0.02) -> None:
    t0 = time.monotonic()
    while not pred():
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise AssertionError(f"engine exited ({proc.returncode}) before {what}:\n"
                                 f"{out[-3000:]}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def read_rgba(path: Path) -> np.ndarray:
    from engine.media.video import read_image

    return read_image(path)


def result_frames(folder: Path) -> tuple[Any, list[np.ndarray]]:
    """A finished job folder's ``Result/1`` and its RGBA frames, in result order."""
    from fsexchange.documents import Result, load_document

    res = load_document(folder / "result.msgpack", Result)
    return res, [read_rgba(folder / f.path) for f in res.frames]


def source_frames(clip: Path, n: int) -> list[np.ndarray]:
    """The source frames as 16-bit RGB, the way the paste stage reads an 8-bit
    source (8-bit decode scaled by 257)."""
    from engine.media.video import read_frames, to_depth

    return [to_depth(f, 16) for _, f in read_frames(clip, 0, n, depth=8)]
