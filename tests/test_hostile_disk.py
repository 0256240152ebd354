"""A full disk, without root (issue 14, defect 8): the engine process runs under a
file size limit (``RLIMIT_FSIZE``, set in the child before it starts), so every
write past the limit fails for real with ``EFBIG``, as a write to a full disk
fails with ``ENOSPC``; a loop-mounted small file system would need root.

Promised (docs/protocol.md "Guarantees under faults"): the job fails with
``io.no_space`` naming the folder and saying to free space and run it again,
never ``internal``; when not even its full result fits, a minimal failed result
is published; the engine keeps serving other jobs.
"""

from __future__ import annotations

import resource
import sys

import pytest

from engine_harness_util import (count, engine_output, events, run_engine, submit,
                                 write_test_clip)
from fsexchange.client import job_status
from fsexchange.exchange import Exchange

pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE"),
              pytest.mark.slow]

LIMIT = 256 << 10  # bytes any one file of the engine process may reach


def small_disk() -> None:
    """``preexec_fn``: no file of this process may grow past ``LIMIT`` (Python
    ignores SIGXFSZ, so the write fails with EFBIG instead of killing it)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_a_full_disk_fails_the_job_with_io_no_space_naming_the_folder(tmp_path):
    ex = Exchange(tmp_path / "ex").ensure().root
    logdir = tmp_path / "log"
    logdir.mkdir()
    clip = write_test_clip(tmp_path / "clip.mp4", frames=4)
    big = submit(ex, clip, "big-output", frames=3, write_bytes=4 * LIMIT)
    huge = submit(ex, clip, "huge-result", frames=3, warn_bytes=2 * LIMIT)
    good = submit(ex, clip, "fits", frames=3)
    assert run_engine(ex, logdir, "--once", "--no-watch",
                      preexec_fn=small_disk) == 0, engine_output(logdir)
    out = engine_output(logdir)
    s = job_status(ex, big)
    assert (s.state, s.error["code"]) == ("failed", "io.no_space"), s.error
    assert str(ex / "cur" / big / "output") in s.error["message"]
    assert "free some space" in s.error["message"]
    assert "run the job again" in s.error["message"]
    assert s.error["stage"] == "deliver"
    assert not (ex / "failed" / big / "output" / "bulk.bin").exists()
    # Its DONE record and its full result were too big: the smallest failed
    # result was published instead, still naming the folder.
    s = job_status(ex, huge)
    assert (s.state, s.error["code"]) == ("failed", "io.no_space"), s.error
    assert "stages/hash" in s.error["message"]
    assert "its result does not fit" in out
    assert count(events(logdir, huge), "deliver", "start") == 0
    assert job_status(ex, good).state == "done"  # the engine kept serving
    assert "internal" not in {job_status(ex, j).error["code"] for j in (big, huge)}
    assert "Traceback" not in out
    print(f"disk full (RLIMIT_FSIZE {LIMIT} bytes): {big} and {huge} failed with "
          "io.no_space, the other job done")
