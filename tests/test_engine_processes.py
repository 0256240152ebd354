"""Real engine processes on real folders: races, kill -9, SIGTERM, cancel, polling,
hostile job documents. Stages are the small real ones of tests/engine_harness.py
(PyAV decoding, per-frame checkpoints, per-job execution logs). Time is faked with
the harness's ``--clock-offset`` instead of sleeping through leases.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from engine_harness_util import (count, engine_env, engine_output, events,
                                 make_job, run_engine, start_engine, stop, submit,
                                 wait_until, write_test_clip)
from fsexchange.client import job_status, list_jobs, wait_job
from fsexchange.documents import Lease, Result, load_document
from fsexchange.exchange import Exchange
from fsexchange.fsutil import unique_name

pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
              pytest.mark.slow]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_test_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=12)


@pytest.fixture
def ex(tmp_path) -> Path:
    return Exchange(tmp_path / "ex").ensure().root


@pytest.fixture
def logdir(tmp_path) -> Path:
    d = tmp_path / "log"
    d.mkdir()
    return d


def ready(logdir: Path, name: str = "engine", n: int = 1):
    return lambda: (engine_output(logdir, name).count("engine.service.worker: worker ")
                    >= n)


def frames_logged(logdir: Path, job_id: str, stage: str = "hash") -> int:
    return count(events(logdir, job_id), stage, "frame")


def hostile(ex: Path, name: str, job: bytes | dict | None,
            files: dict[str, bytes] | None = None,
            links: dict[str, str] | None = None) -> None:
    """Publish a job folder the way a buggy or hostile bridge might."""
    staging = ex / "tmp" / unique_name()
    staging.mkdir()
    if job is not None:
        raw = job if isinstance(job, bytes) else msgpack.packb(job)
        (staging / "job.msgpack").write_bytes(raw)
    for rel, data in (files or {}).items():
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_bytes(data)
    for rel, target in (links or {}).items():
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, staging / rel)
    os.rename(staging, ex / "new" / name)


def test_hostile_documents_fail_with_their_own_codes_beside_good_jobs(
        ex, logdir, clip, tmp_path):
    media = {"media/clip.mp4": clip.read_bytes()}
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")

    def doc(name, **changes):
        d = make_job(name, frames=2).to_dict()
        for key, value in changes.items():
            node = d
            *path, last = key.split(".")
            for k in path:
                node = node[k]
            if value is None:
                del node[last]
            else:
                node[last] = value
        return d

    expect = {  # job folder -> (error code, error field)
        "not-msgpack": ("document.not_msgpack", None),
        "wrong-version": ("document.version", "schema"),
        "wrong-type": ("document.version", "schema"),
        "missing-field": ("document.field", "range"),
        "bad-field": ("document.field", "range.rate"),
        "oversized": ("document.too_large", None),
        "no-job-file": ("document.malformed", "job.msgpack"),
        "id-mismatch": ("document.field", "id"),
        "escape-dotdot": ("path.escape", "source.path"),
        "escape-absolute": ("path.escape", "source.path"),
        "escape-symlink": ("path.escape", "source.path"),
        "escape-track": ("path.escape", "subject.track"),
        "escape-attachment": ("path.escape", "attachments/notes.txt"),
        "no-media": ("media.missing", "source.path"),
        "bad-option": ("document.field", "options.stitch.lr"),
    }
    hostile(ex, "not-msgpack", b"\xc1\xc1 this is not msgpack", media)
    hostile(ex, "wrong-version", doc("wrong-version", schema="facestitch.Job/9"), media)
    hostile(ex, "wrong-type", doc("wrong-type", schema="facestitch.Result/1"), media)
    hostile(ex, "missing-field", doc("missing-field", range=None), media)
    hostile(ex, "bad-field", doc("bad-field", **{"range.rate": [24, 0]}), media)
    hostile(ex, "oversized", doc("oversized", padding="x" * (2 << 20)), media)
    hostile(ex, "no-job-file", None, media)
    hostile(ex, "id-mismatch", doc("someone-else"), media)
    hostile(ex, "escape-dotdot",
            doc("escape-dotdot", **{"source.path": "../../../../etc/passwd"}), media)
    hostile(ex, "escape-absolute",
            doc("escape-absolute", **{"source.path": str(outside)}), media)
    hostile(ex, "escape-symlink", doc("escape-symlink"),
            links={"media/clip.mp4": str(outside)})
    hostile(ex, "escape-track",
            doc("escape-track", **{"subject.track": "../../cur/x/track.msgpack"}),
            media)
    hostile(ex, "escape-attachment", doc("escape-attachment"), media,
            links={"notes.txt": str(outside)})
    hostile(ex, "no-media", doc("no-media", **{"source.path": "media/none.mp4"}))
    hostile(ex, "bad-option", doc("bad-option", options={"stitch": {"lr": "fast"}}),
            media)
    (ex / "new" / "stray-file.msgpack").write_bytes(b"a file, not a job folder")
    good = [submit(ex, clip, f"good-{i}", frames=3) for i in range(3)]

    assert run_engine(ex, logdir, "--once", "--no-watch") == 0, engine_output(logdir)
    for name, (code, field) in expect.items():
        status = job_status(ex, name)
        assert status.state == "failed", name
        assert (status.error["code"], status.error["field"]) == (code, field), (
            name, status.error)
        assert status.error["message"]
        result = load_document(ex / "failed" / name / "result.msgpack", Result)
        assert result.job_id == name
    for job_id in good:
        assert job_status(ex, job_id).state == "done"
    assert not (ex / "new" / "stray-file.msgpack").exists()
    assert sorted(p.name for p in (ex / "failed").iterdir()) == sorted(expect)
    assert list((ex / "cur").iterdir()) == [] and list((ex / "new").iterdir()) == []
    assert "secret" not in engine_output(logdir)


def test_racing_engines_run_each_job_exactly_once(ex, logdir, clip):
    engines = [start_engine(ex, logdir, "--poll", "0.1", name=f"e{i}")
               for i in range(2)]
    engines.append(start_engine(ex, logdir, "--poll", "0.1", "--workers", "2",
                                name="e2"))
    try:
        for i in range(2):
            wait_until(ready(logdir, f"e{i}"), 60, f"engine e{i}")
        wait_until(ready(logdir, "e2", 2), 60, "engine e2's two workers")
        jobs = [submit(ex, clip, f"race-{i:02d}", frames=2, delay=0.02)
                for i in range(24)]
        wait_until(lambda: all(s.state == "done" for s in list_jobs(ex))
                   and len(list_jobs(ex)) == 24, 120, "all jobs done")
    finally:
        for p in engines:
            stop(p, signal.SIGTERM)
    pids = set()
    for job_id in jobs:
        rows = events(logdir, job_id)
        assert count(rows, "hash", "start") == 1, (job_id, rows)
        assert count(rows, "deliver", "start") == 1, (job_id, rows)
        assert sorted(int(r[3]) for r in rows if r[1] == "frame") == [0, 1]
        pids |= {r[2] for r in rows}
        assert load_document(ex / "done" / job_id / "result.msgpack",
                             Result).state == "done"
    assert len(pids) >= 2, "the engines did not share the work"
    assert all(p.returncode == 0 for p in engines)


def test_kill_9_then_restart_resumes_without_duplicates(ex, logdir, clip):
    job_id = submit(ex, clip, "crash", frames=12, delay=0.15, deliver_delay=0.15)
    first = start_engine(ex, logdir, "--lease", "30", name="first")
    try:
        wait_until(lambda: frames_logged(logdir, job_id) >= 3, 60, "3 frames hashed")
    finally:
        stop(first, signal.SIGKILL)
    assert job_status(ex, job_id).state == "running"  # orphaned, lease still valid
    # An hour later by the second engine's clock: the lease has expired.
    second = start_engine(ex, logdir, "--lease", "30", "--clock-offset", "3600",
                          name="second")
    try:
        wait_until(lambda: count(events(logdir, job_id), "deliver", "start") >= 1,
                   60, "the second engine reaching the deliver stage")
    finally:
        stop(second, signal.SIGKILL)
    assert run_engine(ex, logdir, "--once", "--no-watch", "--clock-offset", "7200",
                      name="third") == 0, engine_output(logdir, "third")
    status = job_status(ex, job_id)
    assert status.state == "done", status
    rows = events(logdir, job_id)
    hashed = sorted(int(r[3]) for r in rows if r[:2] == ["hash", "frame"])
    assert hashed == list(range(12))  # every frame exactly once across 2 attempts
    assert count(rows, "hash", "start") == 2 and count(rows, "hash", "end") == 1
    assert count(rows, "deliver", "start") == 2 and count(rows, "deliver", "end") == 1
    assert len({r[2] for r in rows}) == 3  # three processes took part
    result = status.result
    assert [(s.name, s.resumed) for s in result.stages] == [("hash", True),
                                                            ("deliver", False)]
    assert [f.frame for f in result.frames] == list(range(12))
    lease = load_document(ex / "done" / job_id / "lease.msgpack", Lease)
    assert (lease.epoch, lease.reclaims) == (3, 2)
    assert list((ex / "cur").iterdir()) == [] and list((ex / "tmp").iterdir()) == []


def ended(pid: int) -> bool:
    """Whether a process has ended; a zombie, not yet reaped by its new parent,
    has (``/proc`` tells them apart where there is one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return Path("/proc/self").exists()  # reaped just now; else no /proc
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_kill_9_of_a_two_worker_engine_kills_its_workers(ex, logdir, clip):
    """SIGKILL of an engine ends its worker processes with it. Workers that
    outlived their supervisor ran on unsupervised: a later engine (here an hour
    ahead, as in the chaos test's drain) took their jobs as expired while they
    still ran them, so jobs ran twice, and it exited while an orphan still held
    a job, which was then missing from done/."""
    job_id = submit(ex, clip, "orphan", frames=12, delay=0.15)
    engine = start_engine(ex, logdir, "--lease", "30", "--workers", "2")
    workers: list[int] = []
    try:
        wait_until(ready(logdir, "engine", 2), 60, "the engine's two workers")
        workers = [int(pid) for pid in re.findall(
            r"engine\.service\.worker: worker \S+?:(\d+):[0-9a-f]+ on ",
            engine_output(logdir))]
        assert len(workers) == 2, engine_output(logdir)
        wait_until(lambda: frames_logged(logdir, job_id) >= 3, 60, "3 frames hashed")
        stop(engine, signal.SIGKILL)  # the supervisor process, as kill -9 does
        wait_until(lambda: all(ended(pid) for pid in workers), 10,
                   "the workers ending with their engine")
    finally:
        stop(engine, signal.SIGKILL)
        for pid in workers:  # before the fix: orphans this test started
            if not ended(pid):
                os.kill(pid, signal.SIGKILL)
    assert job_status(ex, job_id).state == "running"  # left as its worker died
    assert run_engine(ex, logdir, "--once", "--no-watch", "--clock-offset", "3600",
                      name="drain") == 0, engine_output(logdir, "drain")
    status = job_status(ex, job_id)
    assert status.state == "done", status
    rows = events(logdir, job_id)
    hashed = sorted(int(r[3]) for r in rows if r[:2] == ["hash", "frame"])
    assert hashed == list(range(12))  # every frame once across the two attempts
    assert count(rows, "hash", "start") == 2 and count(rows, "deliver", "end") == 1
    lease = load_document(ex / "done" / job_id / "lease.msgpack", Lease)
    assert (lease.epoch, lease.reclaims) == (2, 1)


def test_sigterm_releases_the_running_job(ex, logdir, clip):
    job_id = submit(ex, clip, "term", frames=10, delay=0.2)
    engine = start_engine(ex, logdir)
    try:
        wait_until(lambda: frames_logged(logdir, job_id) >= 2, 60, "2 frames hashed")
        t0 = time.monotonic()
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(60) == 0
        assert time.monotonic() - t0 < 30
    finally:
        stop(engine)
    assert job_status(ex, job_id).state == "queued"
    lease = load_document(ex / "new" / job_id / "lease.msgpack", Lease)
    assert (lease.released, lease.worker) == ("shutdown", "")
    done_before = frames_logged(logdir, job_id)
    assert run_engine(ex, logdir, "--once", "--no-watch", name="again") == 0
    assert job_status(ex, job_id).state == "done"
    rows = events(logdir, job_id)
    hashed = sorted(int(r[3]) for r in rows if r[:2] == ["hash", "frame"])
    assert hashed == list(range(10)) and done_before >= 2


def test_cancel_running_job_via_cli(ex, logdir, clip):
    job_id = submit(ex, clip, "long", frames=12, delay=1.0)
    engine = start_engine(ex, logdir)
    env = engine_env(logdir)
    try:
        wait_until(lambda: job_status(ex, job_id).state == "running", 60, "running")
        out = subprocess.run([sys.executable, "-m", "host_bridge.cli", "cancel",
                              "--exchange", str(ex), job_id], capture_output=True,
                             text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        assert job_id in out.stdout
        t0 = time.monotonic()
        status = wait_job(ex, job_id, timeout=60, poll=0.1)
        assert status.state == "cancelled"
        assert time.monotonic() - t0 < 20  # "within seconds", generously
        out = subprocess.run([sys.executable, "-m", "host_bridge.cli", "status",
                              "--exchange", str(ex), job_id, "--json"],
                             capture_output=True, text=True, env=env, timeout=60)
        data = json.loads(out.stdout)
        assert data["id"] == job_id and data["state"] == "cancelled"
        assert 0.0 <= data["progress"] <= 1.0
        assert data["error"]["code"] == "cancelled" and data["error"]["message"]
        assert count(events(logdir, job_id), "hash", "end") == 0
        assert (ex / "cancelled" / job_id / "result.msgpack").is_file()
        assert not (ex / "cancel" / job_id).exists()
    finally:
        stop(engine, signal.SIGTERM)


def test_polling_mode_picks_up_new_jobs(ex, logdir, clip):
    engine = start_engine(ex, logdir, "--no-watch", "--poll", "0.2")
    try:
        wait_until(ready(logdir), 60, "engine start")
        assert "polling every" in engine_output(logdir)
        job_id = submit(ex, clip, "polled", frames=2)
        assert wait_job(ex, job_id, timeout=60, poll=0.1).state == "done"
    finally:
        stop(engine, signal.SIGTERM)
    assert engine.returncode == 0
