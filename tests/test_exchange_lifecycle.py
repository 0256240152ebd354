"""The exchange folder lifecycle on real folders, with faked time (no sleeping)."""

from __future__ import annotations

import os
import threading
from fractions import Fraction

import pytest

from fsexchange.client import (cancel_job, job_status, list_jobs, new_job_id,
                               submit_job, wait_job)
from fsexchange.documents import (FrameRange, Job, Lease, Result, Source,
                                  load_document, valid_job_id)
from fsexchange.errors import (DocumentError, DocumentFieldError, JobExists,
                               JobNotFound, LeaseLost)
from fsexchange.exchange import (LEASE_FILE, RESULT_FILE, Exchange)


class FakeClock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def job(job_id: str, **kw) -> Job:
    return Job(id=job_id, source=Source("media/clip.mp4"),
               range=FrameRange(0, 10, Fraction(24000, 1001)), **kw)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ex(tmp_path, clock) -> Exchange:
    return Exchange(tmp_path / "exchange", clock).ensure()


def test_new_job_ids_are_unique_valid_names():
    ids = {new_job_id() for _ in range(200)}
    assert len(ids) == 200 and all(valid_job_id(i) for i in ids)
    assert new_job_id("shot-010").startswith("shot-010-")
    with pytest.raises(ValueError):
        new_job_id("../x")


def test_submit_publishes_atomically_with_attachments(ex, tmp_path):
    media = tmp_path / "plate.mov"
    media.write_bytes(b"movie")
    seq = tmp_path / "seq"
    seq.mkdir()
    (seq / "a.0001.png").write_bytes(b"png")
    submit_job(ex.root, job("j1"), attachments={
        "media/plate.mov": media, "facetrack.msgpack": b"track", "media/seq": seq})
    folder = ex.dir("new") / "j1"
    assert load_document(folder / "job.msgpack", Job).id == "j1"
    assert (folder / "media/plate.mov").read_bytes() == b"movie"
    assert (folder / "facetrack.msgpack").read_bytes() == b"track"
    assert (folder / "media/seq/a.0001.png").read_bytes() == b"png"
    assert list(ex.dir("tmp").iterdir()) == []  # staging renamed away
    status = job_status(ex.root, "j1")
    assert (status.state, status.progress, status.folder) == ("queued", 0.0, folder)


def test_submit_never_overwrites_an_existing_id(ex):
    submit_job(ex.root, job("j1"))
    with pytest.raises(JobExists):
        submit_job(ex.root, job("j1"))
    # also once it moved on to another state
    claim = ex.claim("j1", "w", lease_seconds=30)
    ex.finish(claim, Result(job_id="j1", state="done"))
    with pytest.raises(JobExists):
        submit_job(ex.root, job("j1"))
    assert list(ex.dir("tmp").iterdir()) == []


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "job.msgpack", "stages/x",
                                  ".hidden", "result.msgpack"])
def test_submit_refuses_bad_attachment_names(ex, name):
    with pytest.raises(DocumentError):
        submit_job(ex.root, job("j1"), attachments={name: b"x"})
    assert not (ex.dir("new") / "j1").exists()
    assert list(ex.dir("tmp").iterdir()) == []


def test_submit_refuses_an_invalid_job(ex):
    bad = job("j1", kind="stitch")
    object.__setattr__(bad, "kind", "bogus")
    with pytest.raises(DocumentFieldError) as err:
        submit_job(ex.root, bad)
    assert err.value.field == "kind"


def test_claim_race_has_exactly_one_winner(ex):
    submit_job(ex.root, job("j1"))
    barrier = threading.Barrier(8)
    wins = []

    def racer(i: int) -> None:
        barrier.wait()
        c = ex.claim("j1", f"w{i}", lease_seconds=30)
        if c is not None:
            wins.append(c)

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    lease = load_document(ex.dir("cur") / "j1" / LEASE_FILE, Lease)
    assert (lease.worker, lease.epoch) == (wins[0].worker, 1)
    assert job_status(ex.root, "j1").state == "running"


def test_lease_expiry_reclaim_and_epochs(ex, clock):
    submit_job(ex.root, job("j1"))
    a = ex.claim("j1", "A", lease_seconds=30)
    clock.t += 20
    ex.renew(a)  # heartbeat: now valid until +50
    clock.t += 25
    assert ex.reclaim_expired(grace=30) == []  # 5 s left
    clock.t += 6  # A died: no renewal
    assert ex.reclaim_expired(grace=30) == ["j1"]
    assert job_status(ex.root, "j1").state == "queued"
    released = load_document(ex.dir("new") / "j1" / LEASE_FILE, Lease)
    assert (released.worker, released.released, released.reclaims) == ("", "expired", 1)
    # the grace period keeps other reclaimers off while the next claimer starts
    b = ex.claim("j1", "B", lease_seconds=30)
    assert (b.epoch, b.reclaims) == (2, 1)
    # A wakes up: it can neither renew nor publish
    with pytest.raises(LeaseLost):
        ex.renew(a)
    with pytest.raises(LeaseLost):
        ex.finish(a, Result(job_id="j1", state="done"))
    ex.finish(b, Result(job_id="j1", state="done"))
    assert job_status(ex.root, "j1").state == "done"


def test_stale_holder_cannot_renew_after_its_lease_ran_out(ex, clock):
    submit_job(ex.root, job("j1"))
    a = ex.claim("j1", "A", lease_seconds=30)
    clock.t += 31  # stalled past its lease, nobody reclaimed yet
    with pytest.raises(LeaseLost):
        ex.renew(a)


def test_late_write_of_an_earlier_holder_does_not_win(ex, clock):
    submit_job(ex.root, job("j1"))
    a = ex.claim("j1", "A", lease_seconds=30)
    clock.t += 31
    ex.reclaim_expired(grace=30)
    b = ex.claim("j1", "B", lease_seconds=30)
    # A's delayed heartbeat write lands in B's folder (lower epoch)
    stale = Lease(job_id="j1", worker="A", epoch=a.epoch, expires=clock.t + 30)
    (b.folder / LEASE_FILE).write_bytes(stale.to_bytes())
    ex.renew(b)  # B still owns it (higher epoch) and rewrites its lease
    assert load_document(b.folder / LEASE_FILE, Lease).worker == "B"


def test_lease_missing_counts_from_the_folder_change(ex, clock, tmp_path):
    submit_job(ex.root, job("j1"))
    ex.claim("j1", "A", lease_seconds=30)
    (ex.dir("cur") / "j1" / LEASE_FILE).unlink()  # a claimer before its lease write
    clock.t = os.stat(ex.dir("cur") / "j1").st_mtime + 5
    assert ex.reclaim_expired(grace=30) == []
    clock.t += 60
    assert ex.reclaim_expired(grace=30) == ["j1"]


def test_release_requeues_with_checkpoints(ex, clock):
    submit_job(ex.root, job("j1"))
    a = ex.claim("j1", "A", lease_seconds=30)
    (a.folder / "stages" / "track").mkdir(parents=True)
    (a.folder / "stages" / "track" / "DONE.msgpack").write_bytes(b"x")
    assert ex.release(a)
    folder = ex.dir("new") / "j1"
    assert (folder / "stages/track/DONE.msgpack").exists()
    lease = load_document(folder / LEASE_FILE, Lease)
    assert (lease.released, lease.reclaims) == ("shutdown", 0)
    assert ex.claim("j1", "B", lease_seconds=30).epoch == 2


def test_interrupted_requeue_is_restored_not_swept(ex, clock):
    submit_job(ex.root, job("j1"))
    ex.claim("j1", "A", lease_seconds=30)
    # a reclaimer died right after moving the job to its private tmp/ entry
    private = ex.dir("tmp") / "requeue~j1~123.456_0.host"
    os.rename(ex.dir("cur") / "j1", private)
    clock.t = os.stat(private / "job.msgpack").st_mtime + 10
    assert ex.sweep(requeue_after=60) == []
    clock.t += 3600 * 5
    assert ex.sweep(requeue_after=60) == [f"tmp/{private.name}"]
    assert (ex.dir("new") / "j1" / "job.msgpack").exists()


def test_sweeper_removes_only_abandoned_tmp_entries(ex, clock):
    old = ex.staging_folder()
    (old / "job.msgpack").write_bytes(b"half")
    fresh = ex.staging_folder()
    growing = ex.staging_folder()
    (growing / "big.mov").write_bytes(b"still copying")
    t0 = clock.t
    for p in (old, old / "job.msgpack", growing):
        os.utime(p, (t0 - 7200, t0 - 7200))
    for p in (fresh, growing / "big.mov"):
        os.utime(p, (t0 - 60, t0 - 60))
    swept = ex.sweep(max_age=3600)
    assert swept == [f"tmp/{old.name}"]
    assert not old.exists() and fresh.exists() and growing.exists()


def test_sweeper_drops_stale_cancel_requests(ex, clock):
    submit_job(ex.root, job("j1"))
    c = ex.claim("j1", "A", lease_seconds=30)
    ex.finish(c, Result(job_id="j1", state="done"))
    ex.request_cancel("j1")  # too late: the job is done
    ex.request_cancel("ghost")
    os.utime(ex.cancel_path("ghost"), (clock.t - 10, clock.t - 10))
    assert ex.sweep(max_age=3600) == ["cancel/j1"]
    os.utime(ex.cancel_path("ghost"), (clock.t - 7200, clock.t - 7200))
    assert ex.sweep(max_age=3600) == ["cancel/ghost"]


def test_cancel_queued_job_directly(ex):
    submit_job(ex.root, job("j1"))
    status = cancel_job(ex.root, "j1")
    assert status.state == "cancelled"
    assert status.error["code"] == "cancelled"
    result = load_document(ex.dir("cancelled") / "j1" / RESULT_FILE, Result)
    assert result.state == "cancelled"
    assert not ex.cancel_requested("j1")
    assert wait_job(ex.root, "j1", timeout=5).state == "cancelled"


def test_cancel_running_job_leaves_a_request(ex):
    submit_job(ex.root, job("j1"))
    ex.claim("j1", "A", lease_seconds=30)
    status = cancel_job(ex.root, "j1")
    assert status.state == "running"
    assert "cancel requested" in status.message
    assert ex.cancel_requested("j1")


def test_stray_files_in_new_are_quarantined(ex):
    (ex.dir("new") / "oops.msgpack").write_bytes(b"not a folder")
    assert ex.claim("oops.msgpack", "A", lease_seconds=30) is None
    assert ex.quarantine_stray() == ["oops.msgpack"]
    assert list(ex.dir("new").iterdir()) == []


def test_debris_in_cur_is_moved_aside(ex, clock):
    submit_job(ex.root, job("j1"))
    c = ex.claim("j1", "A", lease_seconds=30)
    ex.finish(c, Result(job_id="j1", state="done"))
    # a stale writer re-created cur/j1 after the job was published
    (ex.dir("cur") / "j1" / "stages").mkdir(parents=True)
    clock.t += 3600
    assert ex.reclaim_expired(grace=30) == []
    assert not (ex.dir("cur") / "j1").exists()
    assert job_status(ex.root, "j1").state == "done"


def test_status_json_shape(ex):
    submit_job(ex.root, job("q1"))
    submit_job(ex.root, job("f1"))
    c = ex.claim("f1", "A", lease_seconds=30)
    err = {"code": "face.not_found", "message": "no face", "stage": "track",
           "frame": None, "field": None}
    ex.finish(c, Result(job_id="f1", state="failed", error=err))
    by_id = {s.id: s.to_dict() for s in list_jobs(ex.root)}
    assert set(by_id) == {"q1", "f1"}
    for d in by_id.values():
        assert {"id", "state", "progress", "error", "stage", "message"} <= set(d)
        assert 0.0 <= d["progress"] <= 1.0
    assert by_id["q1"]["state"] == "queued" and by_id["q1"]["error"] is None
    assert by_id["f1"]["state"] == "failed"
    assert by_id["f1"]["error"]["code"] == "face.not_found"
    with pytest.raises(JobNotFound):
        job_status(ex.root, "nope")


def test_a_requeued_job_keeps_its_place_in_the_queue(ex, clock):
    for i, name in enumerate(("first", "second")):
        submit_job(ex.root, job(name))
        t = clock.t - 100 + i
        os.utime(ex.dir("new") / name / "job.msgpack", (t, t))
    a = ex.claim("first", "A", lease_seconds=30)
    ex.release(a)
    assert ex.ids("new") == ["first", "second"]
