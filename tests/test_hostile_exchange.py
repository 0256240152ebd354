"""The hostile exchange (issue 14): real engine processes over an exchange holding,
per document and per reserved name, every kind of bad entry a broken or hostile
bridge can leave (a FIFO, a socket, a folder, a symlink in and out, a dangling
link, no read permission, empty, truncated, oversized, nested too deep, NaN),
impossible leases and clocks, stray entries in every state folder, interrupted
requeues and a job folder nobody may move, beside good jobs.

Promised (docs/protocol.md "Guarantees under faults"): every good job is done
exactly once; every bad one ends in its final folder with its own error code (or,
where the engine simply replaces an engine-owned file of the right kind, is
done); stray entries are moved out of the way; nothing blocks: the engines answer
SIGTERM within the lease period throughout, and ``status`` answers at once.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import msgpack
import pytest

from engine_harness_util import (count, engine_output, events, make_job,
                                 start_engine, stop, submit, wait_until,
                                 write_test_clip)
from fsexchange.client import job_status, list_jobs
from fsexchange.documents import (FaceTrack, Lease, Progress, Result, StageDone,
                                  TrackFrame)
from fsexchange.exchange import Exchange
from fsexchange.fsutil import unique_name
from hostile import (FILE_KINDS, FOLDER_KINDS, bad_file, bad_folder,
                     call_with_timeout, close_sockets, make_fifo, make_socket,
                     permissions_bind, restore_permissions, without_root_powers,
                     worker_pids)

pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="POSIX files"),
              pytest.mark.slow]

LEASE = 8.0  # short enough to wait for, long enough for a loaded CI machine
FRAMES = 2
NOT_FILE = "exchange.not_regular_file"
LINKS = ("fifo", "socket", "folder", "symlink_in", "symlink_out", "dangling")


@dataclass
class Case:
    name: str  # the job id (or the stray entry's name)
    what: str  # "<document or name>/<kind>"
    state: str | None  # expected final state; None: a stray entry moved away
    code: str | None = None  # expected error code
    folder: str = "new"  # where it was put


def _doc(name: str, **changes) -> dict:
    d = make_job(name, frames=FRAMES).to_dict()
    d.update(changes)
    return d


def _track_doc(nan: bool = False) -> bytes:
    lm = [[10.0, 10.0]] * 68
    if nan:
        lm = [[math.nan, 10.0]] + lm[1:]
    frames = [TrackFrame(0, True, (1.0, 1.0, 30.0, 30.0), 1.0,
                         tuple(tuple(p) for p in lm)),  # type: ignore[arg-type]
              TrackFrame(1, False)]
    if nan:  # what a broken bridge writes (FaceTrack itself refuses NaN)
        d = FaceTrack(Fraction(25), (64, 48), (frames[1],)).to_dict()
        d["frames"] = [{"frame": 0, "present": True, "box": [1, 1, 30, 30],
                        "score": 1.0, "landmarks": lm, "interpolated": False}]
        return msgpack.packb(d)
    return FaceTrack(Fraction(25), (64, 48), tuple(frames)).to_bytes()


def _lease_doc(name: str, **changes) -> bytes:
    d = Lease(name, "ghost:1:abc", 1, time.time() - 3600).to_dict()
    d.update(changes)
    return msgpack.packb(d)


class Builder:
    """Publishes hostile job folders (and stray entries) into an exchange."""

    def __init__(self, ex: Path, clip: Path, outside: Path, outside_dir: Path,
                 with_permissions: bool) -> None:
        self.ex, self.clip = ex, clip
        self.outside, self.outside_dir = outside, outside_dir
        self.with_permissions = with_permissions
        self.cases: list[Case] = []
        self.good: list[str] = []

    def folder(self, name: str, *, job: bytes | dict | None = None,
               media: bool = True) -> Path:
        staging = self.ex / "tmp" / unique_name()
        staging.mkdir()
        if job is not False:
            raw = job if isinstance(job, bytes) else msgpack.packb(
                job if job is not None else _doc(name))
            (staging / "job.msgpack").write_bytes(raw)
        if media:
            (staging / "media").mkdir()
            (staging / "media" / "clip.mp4").write_bytes(self.clip.read_bytes())
        return staging

    def publish(self, staging: Path, name: str, where: str = "new") -> None:
        dest = (self.ex / where / name) if where in ("new", "cur") else \
            self.ex / "tmp" / f"requeue~{name}~{unique_name()}"
        os.rename(staging, dest)

    def add(self, name: str, what: str, state: str | None, code: str | None = None,
            folder: str = "new") -> None:
        self.cases.append(Case(name, what, state, code, folder))

    # --- per document, per kind ----------------------------------------------------

    def documents(self) -> None:
        content = {  # kind -> (state, code) for engine-owned files it replaces
            k: ("done", None) for k in ("unreadable", "empty", "truncated",
                                         "oversized", "nested", "nan")}
        table: dict[str, tuple[str, bytes, int, dict, bytes | None]] = {
            # name -> (path in the job, good bytes, limit, expectations, nan doc)
            "job": ("job.msgpack", b"", 1 << 20, {
                **{k: ("failed", NOT_FILE) for k in LINKS},
                "unreadable": ("failed", "io.permission"),
                "empty": ("failed", "document.not_msgpack"),
                "truncated": ("failed", "document.not_msgpack"),
                "oversized": ("failed", "document.too_large"),
                "nested": ("failed", "document.not_msgpack"),
                "nan": ("failed", "document.field")}, None),
            "lease": ("lease.msgpack", b"", 16 << 10, {
                **{k: ("failed", NOT_FILE) for k in LINKS},
                "unreadable": ("failed", "io.permission"),
                "empty": ("failed", "document.not_msgpack"),
                "truncated": ("failed", "document.not_msgpack"),
                "oversized": ("failed", "document.too_large"),
                "nested": ("failed", "document.not_msgpack"),
                "nan": ("failed", "document.field")}, None),
            "progress": ("progress.msgpack", Progress("x", "running").to_bytes(),
                         64 << 10, {**{k: ("failed", NOT_FILE) for k in LINKS},
                                    **content}, None),
            "result": ("result.msgpack", Result("x", "done").to_bytes(), 32 << 20,
                       {**{k: ("failed", NOT_FILE) for k in LINKS}, **content},
                       None),
            "config": ("config.json", b"{}\n", 1 << 20,
                       {**{k: ("failed", NOT_FILE) for k in LINKS}, **content},
                       b'{"pti": NaN}'),
            "done_file": ("stages/hash/DONE.msgpack",
                          StageDone("hash", 1.0, {"frames": FRAMES}).to_bytes(),
                          32 << 20, {**{k: ("failed", NOT_FILE) for k in LINKS},
                                     **content,
                                     "unreadable": ("failed", "io.permission")},
                          None),
            "track": ("facetrack.msgpack", _track_doc(), 64 << 20, {
                "fifo": ("failed", NOT_FILE), "socket": ("failed", NOT_FILE),
                "folder": ("failed", NOT_FILE), "symlink_in": ("done", None),
                "symlink_out": ("failed", "path.escape"),
                "dangling": ("failed", "document.field"),
                "unreadable": ("failed", "io.permission"),
                "empty": ("failed", "document.not_msgpack"),
                "truncated": ("failed", "document.not_msgpack"),
                "nested": ("failed", "document.not_msgpack"),
                "nan": ("failed", "document.field")}, _track_doc(nan=True)),
            "media": ("media/clip.mp4", self.clip.read_bytes(), 0, {
                "fifo": ("failed", NOT_FILE), "socket": ("failed", NOT_FILE),
                "folder": ("failed", "media.missing"),
                "symlink_in": ("done", None),
                "symlink_out": ("failed", "path.escape"),
                "dangling": ("failed", "media.missing"),
                "unreadable": ("failed", "media.unreadable"),
                "empty": ("failed", "media.corrupt"),
                "truncated": ("failed", "media.corrupt")}, None),
        }
        for doc, (rel, good, limit, expect, nan_doc) in table.items():
            for kind in FILE_KINDS:
                if kind not in expect:
                    continue  # oversized media/track/...: nothing new to learn
                if kind == "oversized" and limit > (1 << 20):
                    continue  # the same loader check, without writing 32 MiB
                if kind == "unreadable" and not self.with_permissions:
                    continue
                name = f"{doc}-{kind}"
                job: bytes | dict | None = None
                if doc == "track":
                    job = _doc(name, subject={"track": rel})
                staging = self.folder(name, job=job)
                target = staging / rel
                if doc == "media":
                    target.unlink()
                if doc == "job":
                    target.unlink()
                    good = msgpack.packb(_doc(name))
                    nan_doc = msgpack.packb(_doc(name, edits=[
                        {"name": "age", "strength": math.nan}]))
                if doc == "lease":
                    good = _lease_doc(name)
                    nan_doc = _lease_doc(name, expires=math.nan)
                if doc in ("progress", "result", "done_file"):
                    nan_doc = _nan_variant(doc, name)
                bad_file(target, kind, good=good, outside=self.outside, limit=limit,
                         nan_doc=nan_doc)
                self.publish(staging, name)
                state, code = expect[kind]
                self.add(name, f"{rel}/{kind}", state, code)
        # the folders the engine writes into
        for rel in ("stages", "output"):
            for kind in FOLDER_KINDS:
                name = f"{rel}-{kind}"
                staging = self.folder(name)
                bad_folder(staging / rel, kind, outside_dir=self.outside_dir)
                self.publish(staging, name)
                self.add(name, f"{rel}/{kind}", "failed", "exchange.not_a_folder")

    # --- impossible leases, clocks, stray entries -----------------------------------

    def leases_and_clocks(self) -> None:
        for name, changes, state, code in (
                ("lease-epoch-max", {"epoch": 2**64 - 1}, "failed", "document.field"),
                ("lease-epoch-negative", {"epoch": -1}, "failed", "document.field"),
                ("lease-reclaims-huge", {"reclaims": 2**60}, "failed",
                 "document.field"),
                ("lease-expires-inf", {"expires": math.inf}, "failed",
                 "document.field"),
                ("lease-far-future", {"expires": time.time() + 10 * 365 * 86400},
                 "done", None)):
            staging = self.folder(name)
            (staging / "lease.msgpack").write_bytes(_lease_doc(name, **changes))
            self.publish(staging, name)
            self.add(name, f"new/lease {changes}", state, code)
        # running jobs whose worker is gone, with impossible or broken leases
        for name, lease, state, code in (
                ("cur-expired", _lease_doc("cur-expired"), "done", None),
                ("cur-far-future", _lease_doc("cur-far-future",
                                              expires=time.time() + 3e8), "done",
                 None),
                ("cur-epoch-max", _lease_doc("cur-epoch-max", epoch=2**64 - 1),
                 "failed", "document.field"),
                ("cur-nan-expires", _lease_doc("cur-nan-expires", expires=math.nan),
                 "failed", "document.field"),
                ("cur-lease-folder", None, "failed", NOT_FILE)):
            staging = self.folder(name)
            if lease is None:
                (staging / "lease.msgpack").mkdir()
            else:
                (staging / "lease.msgpack").write_bytes(lease)
            self.publish(staging, name, "cur")
            self.add(name, f"cur/{name}", state, code, "cur")
        # requeues interrupted by a crash (tmp/requeue~<id>~<unique>)
        for name, ahead, job, state, code in (
                ("requeue-old", -120.0, True, "done", None),
                ("requeue-future-clock", 3e8, True, "done", None),
                ("requeue-no-job", -120.0, False, "failed", "document.malformed")):
            staging = self.folder(name, job=None if job else False)
            (staging / "lease.msgpack").write_bytes(
                _lease_doc(name, worker="", released="expired"))
            _age_tree(staging, ahead)
            self.publish(staging, name, "tmp")
            self.add(name, f"tmp/requeue~{name}", state, code, "tmp")
        # stray entries in new/ and cur/: moved away, nothing runs
        real_job = self.folder("linked-job")
        linked = self.outside_dir.parent / "linked-job"
        os.rename(real_job, linked)
        for where, name, make in (
                ("new", "stray-fifo", make_fifo), ("new", "stray-socket", make_socket),
                ("new", "stray-file", lambda p: p.write_text("not a job")),
                ("new", "linked-job", lambda p: os.symlink(linked, p)),
                ("cur", "cur-stray-fifo", make_fifo)):
            make(self.ex / where / name)
            self.add(name, f"{where}/{name}", None, None, where)

    def cancels(self) -> None:
        for kind, make in (("folder", lambda p: p.mkdir()), ("fifo", make_fifo),
                           ("socket", make_socket),
                           ("symlink_out", lambda p: os.symlink(self.outside, p)),
                           ("dangling", lambda p: os.symlink(p.with_name("x"), p))):
            name = f"cancel-{kind}"
            self.publish(self.folder(name), name)
            make(self.ex / "cancel" / name)
            self.add(name, f"cancel/{kind}", "cancelled", "cancelled")


def _nan_variant(doc: str, name: str) -> bytes:
    if doc == "progress":
        d = Progress(name, "running").to_dict()
        d["fraction"] = math.nan
    elif doc == "result":
        d = Result(name, "done").to_dict()
        d["stages"] = [{"name": "hash", "seconds": math.nan}]
    else:
        d = StageDone("hash", 1.0).to_dict()
        d["seconds"] = math.nan
    return msgpack.packb(d)


def _age_tree(root: Path, ahead: float) -> None:
    """Set every mtime in a tree to now + ``ahead`` (fake time, no sleeping)."""
    t = time.time() + ahead
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            os.utime(Path(dirpath) / n, (t, t), follow_symlinks=False)
    os.utime(root, (t, t))


def test_engines_survive_a_hostile_exchange(tmp_path):
    ex = Exchange(tmp_path / "ex").ensure().root
    logdir = tmp_path / "log"
    logdir.mkdir()
    clip = write_test_clip(tmp_path / "clip.mp4", frames=FRAMES + 2)
    outside = tmp_path / "outside" / "secret.txt"
    outside.parent.mkdir()
    outside.write_text("secret outside the exchange")
    outside_dir = tmp_path / "outside" / "dir"
    outside_dir.mkdir()
    perms = permissions_bind()
    b = Builder(ex, clip, outside, outside_dir, perms)
    b.documents()
    b.leases_and_clocks()
    b.cancels()
    good = [submit(ex, clip, f"good-{i}", frames=FRAMES) for i in range(6)]
    locked = None
    if perms:  # a job folder no engine may move (another user's, on a NAS)
        locked = submit(ex, clip, "locked", frames=FRAMES)
        (ex / "new" / locked).chmod(0)
    # status sees every job, including those caught between cur/ and new/
    listed = {s.id: s for s in call_with_timeout(lambda: list_jobs(ex))}
    for c in b.cases:
        if c.folder == "tmp":
            assert listed[c.name].state == "queued", listed.get(c.name)
            assert job_status(ex, c.name).state == "queued"
    n_cases = len(b.cases) + (locked is not None)
    print(f"hostile exchange: {n_cases} bad cases ({len(FILE_KINDS)} file kinds and "
          f"{len(FOLDER_KINDS)} folder kinds over 10 documents and names, leases, "
          f"clocks, strays, cancels{', permissions' if perms else ''}) beside "
          f"{len(good)} good jobs")

    args = ("--lease", str(LEASE), "--poll", "0.2")
    engines = [start_engine(ex, logdir, *args, name="e1",
                            preexec_fn=without_root_powers),
               start_engine(ex, logdir, *args, "--workers", "2", name="e2",
                            preexec_fn=without_root_powers)]
    expected = [c for c in b.cases if c.state is not None]
    try:
        # Responsive throughout: a third engine joins mid-run and is stopped.
        extra = start_engine(ex, logdir, *args, name="e3",
                             preexec_fn=without_root_powers)
        wait_until(lambda: worker_pids(engine_output(logdir, "e3")), 60, "e3 up")
        t0 = time.monotonic()
        extra.send_signal(signal.SIGTERM)
        assert extra.wait(LEASE + 10) == 0, engine_output(logdir, "e3")[-2000:]
        assert time.monotonic() - t0 <= LEASE, "e3 was slow to stop"

        def settled() -> bool:
            states = {s.id: s.state for s in list_jobs(ex)}
            return all(states.get(c.name) == c.state for c in expected) and all(
                states.get(g) == "done" for g in good)

        wait_until(settled, 150, "every case in its final state")
        if locked is not None:
            assert job_status(ex, locked).state == "queued"  # skipped, not fatal
            (ex / "new" / locked).chmod(0o755)  # fixed: it runs now
            wait_until(lambda: job_status(ex, locked).state == "done", 60,
                       "the unlocked job")
        status_time = time.monotonic()
        listing = call_with_timeout(lambda: list_jobs(ex))
        status_time = time.monotonic() - status_time
        for p in engines:
            t0 = time.monotonic()
            p.send_signal(signal.SIGTERM)
            assert p.wait(LEASE + 10) == 0
            assert time.monotonic() - t0 <= LEASE, "an engine was slow to stop"
    finally:
        for p in engines:
            stop(p, signal.SIGKILL)
        close_sockets()
        restore_permissions(tmp_path)
    out = "".join(engine_output(logdir, n) for n in ("e1", "e2", "e3"))
    problems = []
    for c in expected:
        s = job_status(ex, c.name)
        got = (s.state, (s.error or {}).get("code"))
        if got != (c.state, c.code):
            problems.append(f"{c.what}: expected {(c.state, c.code)}, got {got}: "
                            f"{(s.error or {}).get('message')}")
        if s.state in ("failed", "cancelled"):
            assert s.error["message"], c
    assert not problems, "\n".join(problems)
    for c in b.cases:
        if c.state is None:  # strays are moved out of the state folders
            assert not os.path.lexists(ex / c.folder / c.name), c
    assert not events(logdir, "linked-job")  # a symlinked job never ran
    published = sorted(p.name for p in (ex / "done").iterdir())
    for job_id in good + [c.name for c in expected if c.state == "done"] + (
            [locked] if locked else []):
        rows = events(logdir, job_id)
        assert count(rows, "deliver", "end") >= 1, (job_id, rows)
        # done exactly once: one published folder (a second publication would be
        # kept as <id>.dup...), every frame once in its result
        assert [n for n in published if n.split(".dup")[0] == job_id] == [job_id]
        assert [f.frame for f in job_status(ex, job_id).result.frames] == \
            list(range(FRAMES))
    for c in expected:
        if c.state != "done":
            assert count(events(logdir, c.name), "deliver", "end") == 0, c
    assert not list((ex / "cur").iterdir()), list((ex / "cur").iterdir())
    assert not [p for p in (ex / "cancel").iterdir()]
    assert "secret outside the exchange" not in out
    assert "Traceback" not in out, out[out.find("Traceback") - 500:][:3000]
    if locked is not None:
        # reported, not 40 tracebacks a minute: one line per engine process
        warnings = out.count(f"cannot claim job {locked}")
        assert 1 <= warnings <= 4, warnings  # e1, e2's two workers, e3
    assert len(listing) >= len(expected) + len(good) and status_time < 5
    print(f"hostile exchange: all {n_cases} cases ended as promised; engines "
          f"stopped within the {LEASE:g} s lease; status over the whole exchange "
          f"took {status_time:.2f} s")
