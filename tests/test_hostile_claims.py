"""Job folders an engine may not move, media it may not read (issue 14, defects 2
and 12), with real engine processes that run without root's capabilities, so
permission bits bind them as they bind any user on a NAS."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction

import pytest

from engine_harness_util import (ROOT, engine_output, run_engine, submit,
                                 write_test_clip)
from fsexchange.client import job_status, submit_job
from fsexchange.documents import FrameRange, Job, Source
from fsexchange.exchange import Exchange
from hostile import permissions_bind, without_root_powers

pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes"),
              pytest.mark.skipif(not permissions_bind(),
                                 reason="permission bits do not bind here"),
              pytest.mark.slow]


@pytest.fixture
def place(tmp_path):
    ex = Exchange(tmp_path / "ex").ensure().root
    logdir = tmp_path / "log"
    logdir.mkdir()
    clip = write_test_clip(tmp_path / "clip.mp4", frames=4)
    yield ex, logdir, clip, tmp_path
    for dirpath, dirnames, _ in os.walk(tmp_path):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
    os.chmod(tmp_path, 0o755)


def test_a_job_folder_the_engine_cannot_move_is_skipped_and_reported(place):
    ex, logdir, clip, _ = place
    locked = submit(ex, clip, "a-locked", frames=2)  # the oldest: tried first
    (ex / "new" / locked).chmod(0)
    good = [submit(ex, clip, f"good-{i}", frames=2) for i in range(2)]
    assert run_engine(ex, logdir, "--once", "--no-watch",
                      preexec_fn=without_root_powers) == 0, engine_output(logdir)
    out = engine_output(logdir)
    assert all(job_status(ex, j).state == "done" for j in good)
    assert job_status(ex, locked).state == "queued"
    assert out.count(f"cannot claim job {locked}") == 1, out  # once, not per poll
    assert "Permission denied" in out and "Traceback" not in out
    status = subprocess.run(
        [sys.executable, "-m", "host_bridge.cli", "status", "--exchange", str(ex),
         locked], capture_output=True, text=True, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)), preexec_fn=without_root_powers)
    assert status.returncode == 0 and "engines cannot take it" in status.stdout
    (ex / "new" / locked).chmod(0o755)  # fixed: the next scan runs it
    assert run_engine(ex, logdir, "--once", "--no-watch", name="again",
                      preexec_fn=without_root_powers) == 0
    assert job_status(ex, locked).state == "done"


def test_unreadable_media_is_reported_as_unreadable_not_missing(place):
    ex, logdir, clip, tmp = place
    root = tmp / "media"
    shut = root / "shut"  # a folder on the way that the engine may not enter
    shut.mkdir(parents=True)
    (shut / "clip.mp4").write_bytes(clip.read_bytes())
    (root / "locked.mp4").write_bytes(clip.read_bytes())
    jobs = {"in-shut-folder": shut / "clip.mp4", "locked-file": root / "locked.mp4",
            "really-missing": root / "none.mp4"}
    for job_id, path in jobs.items():
        submit_job(ex, Job(id=job_id, source=Source(str(path)),
                           range=FrameRange(0, 2, Fraction(25))))
    shut.chmod(0)
    (root / "locked.mp4").chmod(0)
    assert run_engine(ex, logdir, "--once", "--no-watch", "--media-root", str(root),
                      preexec_fn=without_root_powers) == 0
    codes = {j: job_status(ex, j).error["code"] for j in jobs}
    assert codes == {"in-shut-folder": "media.unreadable",
                     "locked-file": "media.unreadable",
                     "really-missing": "media.missing"}
    assert "permission denied" in job_status(ex, "in-shut-folder").error["message"]
