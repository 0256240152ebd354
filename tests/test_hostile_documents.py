"""The one document loader, the exchange and the client against bad entries
(issue 14), in-process and fast: every kind of bad entry per document type is
refused at once with its code (a FIFO never blocks a reader); claims set aside
engine-owned entries of the wrong kind and impossible leases; status sees every
job, wherever it is, and never blocks. Real FIFOs, sockets, symlinks and folders.
"""

from __future__ import annotations

import math
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

import msgpack
import pytest

from fsexchange import documents as d
from fsexchange.client import build_job, job_status, list_jobs, submit_job
from fsexchange.errors import (DocumentFieldError, DocumentNotMsgpack,
                               DocumentTooLarge, FaceStitchError, NotRegularFile,
                               PathUnusable)
from fsexchange.exchange import MAX_CLOCK_AHEAD, Exchange
from fsexchange.fsutil import check_folder, open_regular, unique_name
from hostile import (FILE_KINDS, bad_file, call_with_timeout, close_sockets,
                     make_fifo, nested)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX files")

SAMPLES = {
    "Job": d.Job(id="j", source=d.Source("m.mov"),
                 range=d.FrameRange(0, 2, Fraction(24))),
    "Lease": d.Lease("j", "w", 1, 1e9),
    "Progress": d.Progress("j", "running"),
    "Result": d.Result("j", "done"),
    "StageDone": d.StageDone("track", 1.0),
    "FaceTrack": d.FaceTrack(Fraction(24), (4, 4), (d.TrackFrame(0, False),)),
}
# kind -> the error class the loader raises (root reads mode-000 files anyway,
# so "unreadable" is checked by the engine-process tests)
EXPECT = {"fifo": NotRegularFile, "socket": NotRegularFile, "folder": NotRegularFile,
          "symlink_in": NotRegularFile, "symlink_out": NotRegularFile,
          "dangling": NotRegularFile, "empty": DocumentNotMsgpack,
          "truncated": DocumentNotMsgpack, "oversized": DocumentTooLarge,
          "nested": DocumentNotMsgpack, "nan": DocumentFieldError}


@pytest.fixture(autouse=True)
def _sockets():
    yield
    close_sockets()


def _nan_doc(name: str) -> bytes:
    doc = SAMPLES[name].to_dict()
    key = {"Job": None, "Lease": "expires", "Progress": "fraction",
           "Result": None, "StageDone": "seconds", "FaceTrack": None}[name]
    if name == "Job":
        doc["edits"] = [{"name": "age", "strength": math.nan}]
    elif name == "Result":
        doc["stages"] = [{"name": "track", "seconds": math.inf}]
    elif name == "FaceTrack":
        doc["frames"] = [{"frame": 0, "present": False, "box": [0, 0, math.nan, 1]}]
    else:
        doc[key] = math.nan
    return msgpack.packb(doc)


@pytest.mark.parametrize("kind", [k for k in FILE_KINDS if k != "unreadable"])
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_the_loader_refuses_every_bad_entry_at_once(tmp_path, name, kind):
    cls = d.DOCUMENT_TYPES[name]
    outside = tmp_path / "outside.msgpack"
    outside.write_bytes(SAMPLES[name].to_bytes())  # valid: must still not be read
    path = tmp_path / "job" / "doc.msgpack"
    limit = min(cls.MAX_BYTES, 1 << 20)
    bad_file(path, kind, good=SAMPLES[name].to_bytes(), outside=outside,
             limit=cls.MAX_BYTES if kind == "oversized" else limit,
             nan_doc=_nan_doc(name))
    t0 = time.monotonic()
    with pytest.raises(EXPECT[kind]) as info:
        call_with_timeout(lambda: d.load_document(path, cls), 10)
    assert time.monotonic() - t0 < 5
    err = info.value
    assert err.code and err.message and "doc.msgpack" in err.message
    assert "()" not in err.message  # a reason, not an empty exception's text


def test_following_symlinks_is_a_choice_and_still_never_opens_a_pipe(tmp_path):
    real = tmp_path / "real.msgpack"
    real.write_bytes(SAMPLES["Progress"].to_bytes())
    link = tmp_path / "link.msgpack"
    link.symlink_to(real)
    assert d.load_document(link, d.Progress, follow_symlinks=True).job_id == "j"
    fifo = tmp_path / "pipe.msgpack"
    make_fifo(fifo)
    (tmp_path / "to-pipe").symlink_to(fifo)
    with pytest.raises(NotRegularFile, match="named pipe"):
        call_with_timeout(lambda: d.load_document(tmp_path / "to-pipe", d.Progress,
                                                  follow_symlinks=True))
    with pytest.raises(NotRegularFile):
        call_with_timeout(lambda: open_regular(fifo))
    with pytest.raises(FaceStitchError, match="not a folder"):
        check_folder(real)


def test_deeply_nested_msgpack_is_named():
    with pytest.raises(DocumentNotMsgpack, match="nested deeper"):
        d.decode_document(nested(), d.Job, source="job.msgpack")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 100.5, -1e9])
def test_edit_strengths_and_keyframes_are_finite_and_bounded(value):
    edit = {"name": "age", "strength": value}
    with pytest.raises(DocumentFieldError) as info:
        d.Edit.from_dict(edit, "edits[0]")
    assert info.value.field == "edits[0].strength"
    with pytest.raises(DocumentFieldError):
        d.Edit.from_dict({"name": "age", "keyframes": [[0, 1.0], [5, value]]})
    assert d.Edit.from_dict({"name": "age", "strength": -30.0}).strength == -30.0
    with pytest.raises(DocumentFieldError, match="frame"):
        d.Edit.from_dict({"name": "age", "keyframes": [[-1, 1.0]]})


def test_submit_refuses_nan_strengths_and_subjects(tmp_path):
    job = build_job(source=d.Source("m.mov"), range=d.FrameRange(0, 2, Fraction(24)),
                    edits=[d.Edit("age", -4.0)])
    bad = d.replace(job, edits=(d.Edit("age", math.nan),))
    with pytest.raises(DocumentFieldError):
        submit_job(tmp_path / "ex", bad)
    with pytest.raises(DocumentFieldError):
        build_job(source=d.Source("m.mov"), range=d.FrameRange(0, 2, Fraction(24)),
                  edits=[d.Edit("age", math.inf)])
    with pytest.raises(DocumentFieldError):
        d.Subject.from_dict({"point": [0, math.nan, 3]})
    assert not list((tmp_path / "ex" / "new").iterdir())


# --- the exchange -------------------------------------------------------------------


def _job_folder(ex: Exchange, name: str, where: str = "new", **files: bytes) -> Path:
    staging = ex.staging_folder()
    (staging / "job.msgpack").write_bytes(SAMPLES["Job"].to_bytes())
    for rel, data in files.items():
        (staging / rel).write_bytes(data)
    dest = ex.dir(where) / name
    os.rename(staging, dest)
    return dest


@pytest.mark.parametrize("epoch", [2**64 - 1, 2**53, -1])
def test_an_impossible_epoch_fails_the_job_instead_of_the_claim(tmp_path, epoch):
    ex = Exchange(tmp_path / "ex").ensure()
    lease = SAMPLES["Lease"].to_dict() | {"epoch": epoch}
    _job_folder(ex, "j", **{"lease.msgpack": msgpack.packb(lease)})
    claim = ex.claim("j", "w1", lease_seconds=30)
    assert claim is not None and claim.folder == ex.dir("cur") / "j"
    assert claim.epoch == 1 and claim.problem is not None
    assert claim.problem.code == "document.field"
    assert claim.problem.field == "lease.msgpack:epoch"
    assert ex.check(claim).epoch == 1  # a lease of ours was written
    assert [p.name for p in claim.folder.iterdir()
            if p.name.startswith("lease.msgpack.refused~")]  # kept, set aside


def test_engine_owned_entries_of_the_wrong_kind_are_set_aside(tmp_path):
    ex = Exchange(tmp_path / "ex").ensure()
    folder = _job_folder(ex, "j")
    (folder / "result.msgpack").mkdir()
    make_fifo(folder / "progress.msgpack")
    (folder / "stages").symlink_to(tmp_path)
    claim = call_with_timeout(lambda: ex.claim("j", "w1", lease_seconds=30))
    assert claim.problem.code == "exchange.not_regular_file"
    names = sorted(p.name.split("~")[0] for p in claim.folder.iterdir())
    assert names == ["job.msgpack", "lease.msgpack", "progress.msgpack.refused",
                     "result.msgpack.refused", "stages.refused"]


def test_an_unclaimable_or_vanished_job_is_skipped(tmp_path):
    ex = Exchange(tmp_path / "ex").ensure()
    make_fifo(ex.dir("new") / "pipe")
    assert ex.claim("pipe", "w", lease_seconds=30) is None
    assert ex.claim("gone", "w", lease_seconds=30) is None
    _job_folder(ex, "j")
    (ex.dir("cur") / "j").mkdir()  # a stale copy in the way: skipped, not raised
    (ex.dir("cur") / "j" / "stale.txt").write_text("x")
    assert ex.claim("j", "w", lease_seconds=30) is None


def test_impossible_clocks_and_strays_in_cur_are_taken_care_of(tmp_path):
    ex = Exchange(tmp_path / "ex").ensure()
    far = SAMPLES["Lease"].to_dict() | {"job_id": "far", "worker": "ghost",
                                        "expires": time.time() + 3 * MAX_CLOCK_AHEAD}
    _job_folder(ex, "far", "cur", **{"lease.msgpack": msgpack.packb(far)})
    make_fifo(ex.dir("cur") / "pipe")
    (ex.dir("cur") / "file").write_text("not a job")
    assert ex.reclaim_expired(grace=30) == ["far"]
    assert sorted(p.name for p in ex.dir("cur").iterdir()) == []
    assert (ex.dir("new") / "far").is_dir()
    debris = sorted(p.name.split("~")[1] for p in ex.dir("tmp").iterdir())
    assert debris == ["file", "pipe"]


def test_status_shows_every_job_wherever_it_is_and_never_blocks(tmp_path):
    ex = Exchange(tmp_path / "ex").ensure()
    # caught between cur/ and new/ by a crash: queued, found, listed
    requeue = ex.dir("tmp") / f"requeue~stuck~{unique_name()}"
    _job_folder(ex, "x", "cur")
    os.rename(ex.dir("cur") / "x", requeue)
    # an id that is no valid job id still has a folder: status finds it
    _job_folder(ex, "odd id", "new")
    running = _job_folder(ex, "running", "cur")
    make_fifo(running / "progress.msgpack")
    done = _job_folder(ex, "done-fifo", "done")
    make_fifo(done / "result.msgpack")
    listed = {s.id: s for s in call_with_timeout(lambda: list_jobs(ex))}
    assert set(listed) == {"stuck", "odd id", "running", "done-fifo"}
    assert listed["stuck"].state == "queued" and "requeued" in listed["stuck"].message
    assert job_status(ex, "stuck").folder == requeue
    assert job_status(ex, "odd id").state == "queued"
    assert listed["running"].state == "running"
    s = listed["done-fifo"]  # never a plain "done": the result cannot be read
    assert s.state == "done" and s.error["code"] == "exchange.not_regular_file"
    with pytest.raises(PathUnusable, match="does not exist"):
        list_jobs(tmp_path / "missing")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(PathUnusable, match="not a folder"):
        job_status(tmp_path / "afile", "j")


def test_sweep_restores_requeues_from_any_clock_and_clears_any_cancel(tmp_path):
    ex = Exchange(tmp_path / "ex").ensure()
    future = ex.dir("tmp") / f"requeue~future~{unique_name()}"
    future.mkdir()
    (future / "job.msgpack").write_bytes(SAMPLES["Job"].to_bytes())
    t = time.time() + 10 * MAX_CLOCK_AHEAD
    for p in (future / "job.msgpack", future):
        os.utime(p, (t, t))
    nojob = ex.dir("tmp") / f"requeue~nojob~{unique_name()}"
    nojob.mkdir()
    old = time.time() - 3600
    os.utime(nojob, (old, old))
    _job_folder(ex, "over", "done")
    (ex.dir("cancel") / "over").mkdir()  # a cancel request that is a folder
    make_fifo(ex.dir("cancel") / "gone")
    os.utime(ex.dir("cancel") / "gone", (old, old))
    acted = call_with_timeout(lambda: ex.sweep(max_age=60, requeue_after=60))
    assert (ex.dir("new") / "future").is_dir() and (ex.dir("new") / "nojob").is_dir()
    assert {"cancel/over", "cancel/gone"} <= set(acted)
    assert not list(ex.dir("cancel").iterdir())
    ex.clear_cancel("nothing")  # nothing there: fine
    (ex.dir("cancel") / "dir").mkdir()
    ex.clear_cancel("dir")
    assert not (ex.dir("cancel") / "dir").exists()
