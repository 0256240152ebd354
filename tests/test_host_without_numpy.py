"""The Resolve side works in a Python without numpy, OpenCV, PyAV or torch (Resolve's
own interpreter): a bridge process sends a shot, follows the job while an engine
process runs it, and places the result."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from fractions import Fraction
from pathlib import Path

import pytest

from clips import ClipSpec, render_frames, write_clip
from test_resolve_roundtrip import run_engine

pytestmark = pytest.mark.slow  # real engines / whole pipelines

ROOT = Path(__file__).resolve().parents[1]

BRIDGE = textwrap.dedent("""
    import importlib.abc, sys
    from fractions import Fraction

    BLOCKED = {"torch", "torchvision", "numpy", "cv2", "av", "dlib"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in the bridge test")

    sys.meta_path.insert(0, Blocker())
    sys.path[:0] = [sys.argv[3], sys.argv[3] + "/tests"]
    from fake_resolve import FakeResolve
    from host_bridge.resolve import open_session
    from host_bridge.roundtrip import SendOptions, follow, import_job, send_shot

    clip, exchange = sys.argv[1], sys.argv[2]
    resolve = FakeResolve(rate=Fraction(25))
    timeline = resolve.project.add_timeline("Edit 1")
    mpi = resolve.project.add_virtual_media("plate.mov", {
        "File Path": clip, "Type": "Video", "FPS": 25.0, "Frames": "8",
        "Start TC": "00:59:59:00"})
    item = timeline.place(mpi, record=90100, duration=5, left_offset=2)
    session = open_session(resolve)
    sent = send_shot(session, exchange, item, SendOptions(kind="align-preview",
                                                          handles=1))
    print("SENT", sent.job_id, sent.faces, sent.tracked_locally, flush=True)
    follow(exchange, sent.job_id, timeout=120, poll=0.05)
    placement = import_job(session, exchange, sent.job_id)
    print("PLACED", placement.record_start, placement.duration, placement.track_index,
          placement.clip_start)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
""")


@pytest.mark.parametrize("local_engine", [False, True])
def test_send_follow_and_import_without_numpy(tmp_path, local_engine):
    """Without an engine on this machine the engine picks the face; with one (named
    by $FACESTITCH_ENGINE_PYTHON, as an editor's own Python cannot see it), the
    bridge lists and tracks faces through it in a child process, and still never
    imports numpy itself."""
    clip = write_clip(tmp_path / "plate.mov", render_frames(ClipSpec(frames=8)),
                      Fraction(25))
    exchange = tmp_path / "exchange"
    env = dict(os.environ, FACESTITCH_ENGINE_PYTHON=sys.executable if local_engine
               else "off")
    bridge = subprocess.Popen([sys.executable, "-c", BRIDGE, str(clip), str(exchange),
                               str(ROOT)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (exchange / "new").is_dir() or not any((exchange / "new").iterdir()):
            assert bridge.poll() is None, bridge.stderr.read()
            assert time.monotonic() < deadline, "the bridge never published the job"
            time.sleep(0.05)
        assert run_engine(exchange, tmp_path) == 1
        out, err = bridge.communicate(timeout=120)
    finally:
        if bridge.poll() is None:
            bridge.kill()
            bridge.wait()
    assert bridge.returncode == 0, err
    sent = out.split("SENT", 1)[1].split("\n", 1)[0].split()
    # no engine here: no faces listed, no local track; else one face, tracked here
    assert sent[1:] == (["1", "True"] if local_engine else ["None", "False"])
    placed = out.split("PLACED", 1)[1].split()
    # record frame, frames, V2, handle skipped
    assert placed == ["90100", "5", "2", "1"]
