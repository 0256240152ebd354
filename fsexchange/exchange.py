"""The exchange folder lifecycle, Maildir-style (see ``docs/protocol.md``).

::

    ROOT/tmp/<unique>/     a submitter writes a job here, then renames it to new/
    ROOT/new/<job_id>/     queued: job.msgpack + attachments
    ROOT/cur/<job_id>/     running: claimed by rename new->cur; lease.msgpack,
                           progress.msgpack, config.json, stages/, output/
    ROOT/done|failed|cancelled/<job_id>/   final, published by rename; result.msgpack
    ROOT/cancel/<job_id>   a cancel request (any content)

Every state change is one ``rename`` of the job folder, so a job is always in
exactly one state folder and nothing half-written is ever visible: a submitter
publishes tmp->new, a worker claims new->cur (exactly one racing worker wins; the
others see the source vanish), a result is written inside ``cur/<id>`` and the
folder is renamed to its final state folder.

Requeueing (a worker shutting down, or a reclaimer taking over a job whose lease
expired) first renames ``cur/<id>`` to a private ``tmp/requeue~<id>~<unique>``
(exactly one reclaimer wins), marks the lease there as released with a grace
period, then renames it to ``new/<id>``. The grace period keeps other reclaimers
off the job while its next claimer writes its own lease. A requeue entry left
behind by a crash is restored to ``new/`` by the sweeper, never deleted.

Leases carry an ``epoch`` (one more per claim). A worker renews its lease only while
it is still valid by its own clock and still names it; otherwise it has lost the
job (:class:`~fsexchange.errors.LeaseLost`) and must stop without publishing.

Nothing a hostile or broken exchange holds may stop an engine, lose a job or pass
as done (docs/protocol.md "Guarantees under faults"). Entries are looked at before
they are opened (:func:`fsexchange.fsutil.open_regular`); a job folder that cannot
be moved is skipped and reported, never fatal; a claimed job whose engine-owned
entries are of the wrong type or hold an impossible lease is set aside as data
(``Claim.problem``) and fails with that error's code; a lease claiming to last
beyond any lease an engine writes is treated as expired.

Time comes from an injectable ``clock`` (POSIX seconds) so tests fake it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import stat
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from fsexchange.documents import (MAX_EPOCH, PRIORITY_NORMAL, Job, Lease, Result,
                                  load_document, valid_job_id)
from fsexchange.errors import (DocumentError, DocumentFieldError, FaceStitchError,
                               JobExists, LeaseLost, NotAFolder, NotRegularFile,
                               PathUnusable, io_error)
from fsexchange.fsutil import (atomic_write_bytes, describe_mode, fsync_dir,
                               unique_name)

__all__ = [
    "FOLDERS",
    "STATE_FOLDERS",
    "FINAL_STATES",
    "JOB_FILE",
    "LEASE_FILE",
    "PROGRESS_FILE",
    "RESULT_FILE",
    "CONFIG_FILE",
    "STAGES_DIR",
    "OUTPUT_DIR",
    "RESERVED_NAMES",
    "Claim",
    "Exchange",
    "read_result",
    "utc_now",
]

log = logging.getLogger(__name__)

#: Every folder directly under the exchange root.
FOLDERS = ("tmp", "new", "cur", "done", "failed", "cancelled", "cancel")
#: Job folder -> job state, in the order a job moves through them.
STATE_FOLDERS = {"new": "queued", "cur": "running", "done": "done",
                 "failed": "failed", "cancelled": "cancelled"}
FINAL_STATES = ("done", "failed", "cancelled")

JOB_FILE = "job.msgpack"
LEASE_FILE = "lease.msgpack"
PROGRESS_FILE = "progress.msgpack"
RESULT_FILE = "result.msgpack"
CONFIG_FILE = "config.json"
STAGES_DIR = "stages"
OUTPUT_DIR = "output"
#: Names inside a job folder that belong to the engine; attachments may not use them.
RESERVED_NAMES = frozenset({JOB_FILE, LEASE_FILE, PROGRESS_FILE, RESULT_FILE,
                            CONFIG_FILE, STAGES_DIR, OUTPUT_DIR})

_REQUEUE = "requeue~"  # tmp/requeue~<id>~<unique>: a job between cur/ and new/
_DEBRIS = "debris~"  # tmp/debris~<id>~<unique>: leftovers, swept like tmp entries
_REFUSED = ".refused~"  # <name>.refused~<unique>: a bad entry set aside in a job
_HOST = socket.gethostname() or "host"
#: A lease or a file time further ahead than this is an impossible clock (no
#: engine writes a lease longer than an hour, and hosts keep their clocks in sync).
MAX_CLOCK_AHEAD = 86_400.0
_WARN_EVERY = 600.0  # seconds between repeated warnings about one entry
#: Engine-owned entries of a job folder: what each must be. The engine replaces
#: these, so a wrong kind is set aside at claim before anything is written.
_OWNED_FILES = (LEASE_FILE, PROGRESS_FILE, RESULT_FILE, CONFIG_FILE)
_OWNED_FOLDERS = (STAGES_DIR, OUTPUT_DIR)


def utc_now(clock: Callable[[], float] = time.time) -> str:
    """ISO 8601 UTC time of ``clock()`` (second precision)."""
    return datetime.fromtimestamp(clock(), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Claim:
    """A worker's hold on one running job (what :meth:`Exchange.claim` returns).

    ``expires`` moves forward with every successful :meth:`Exchange.renew`.
    """

    job_id: str
    folder: Path  # ROOT/cur/<job_id>
    worker: str
    epoch: int
    expires: float
    lease_seconds: float
    reclaims: int = 0  # how often the job was taken from a dead worker before
    # What was wrong with the folder when it was claimed (an engine-owned entry of
    # the wrong kind, an impossible lease): the runner fails the job with it.
    problem: FaceStitchError | None = None


def _is_gone(exc: OSError) -> bool:
    return exc.errno in (errno.ENOENT, errno.ESTALE)


def _is_taken(exc: OSError) -> bool:
    # rename onto an existing non-empty folder
    return exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR)


def entry_name_ok(name: str) -> bool:
    """Whether ``name`` can be an entry of a state folder that we list and look up:
    one plain path component (a job whose id is not valid still has a folder, and
    ``status`` must find what it lists)."""
    return bool(name) and name not in (".", "..") and not name.startswith(".") and \
        not any(c in name for c in "/\\\x00")


class Exchange:
    """One exchange folder. Cheap to construct; all state lives on disk.

    Args:
        root: the exchange folder (shared by the bridge and every engine).
        clock: POSIX-seconds clock for leases and sweeping (tests fake it).
    """

    def __init__(self, root: str | os.PathLike[str],
                 clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root).absolute()
        self.clock = clock
        self._warned: dict[str, float] = {}  # entry -> monotonic time last warned
        # job id -> (job.msgpack's stat key, Job.priority); job files never change
        self._priorities: dict[str, tuple[tuple[int, int, int], int]] = {}

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        """Log a warning about one entry at most every ``_WARN_EVERY`` seconds (an
        engine retries a bad entry every poll; the log must stay readable)."""
        now = time.monotonic()
        if now - self._warned.get(key, -_WARN_EVERY) >= _WARN_EVERY:
            self._warned[key] = now
            log.warning(msg, *args)

    def __repr__(self) -> str:
        return f"Exchange({str(self.root)!r})"

    # --- layout ------------------------------------------------------------------

    def dir(self, name: str) -> Path:
        """``ROOT/<name>`` for one of :data:`FOLDERS`."""
        if name not in FOLDERS:
            raise ValueError(f"not an exchange folder: {name!r}")
        return self.root / name

    def ensure(self) -> "Exchange":
        """Create the layout (idempotent, safe to race).

        Raises:
            PathUnusable: the root is not a folder.
            NotAFolder: one of :data:`FOLDERS` is something else.
            AccessDenied: it cannot be created (permissions, a read-only share).
        """
        self.require(missing_ok=True)
        for name in FOLDERS:
            p = self.root / name
            try:
                p.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                raise NotAFolder(f"{p} is {_kind(p)}, not a folder; the exchange "
                                 f"needs its {name}/ folder there") from None
            except OSError as exc:
                raise io_error(exc, p, doing="creating the exchange folders"
                               ) from None
        return self

    def require(self, *, missing_ok: bool = False) -> "Exchange":
        """Check that the root is a folder (a missing one only if ``missing_ok``).

        Raises:
            PathUnusable: missing, or not a folder.
        """
        try:
            mode = os.stat(self.root).st_mode
        except FileNotFoundError:
            if missing_ok:
                return self
            raise PathUnusable(f"exchange folder {self.root} does not exist",
                               field="exchange") from None
        except OSError as exc:
            raise io_error(exc, self.root, doing="opening the exchange") from None
        if not stat.S_ISDIR(mode):
            raise PathUnusable(f"exchange folder {self.root} is "
                               f"{describe_mode(mode)}, not a folder", field="exchange")
        return self

    def check_writable(self) -> "Exchange":
        """Create and remove a probe file in ``tmp/`` (an engine on a read-only
        share would otherwise idle forever, unable to claim anything).

        Raises:
            AccessDenied: not writable (permissions, a read-only share).
        """
        probe = self.dir("tmp") / f".probe-{unique_name()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise io_error(exc, self.dir("tmp"), doing="writing") from None
        return self

    def job_folder(self, state_folder: str, job_id: str) -> Path:
        return self.dir(state_folder) / job_id

    def locate(self, job_id: str, *, tries: int = 3) -> tuple[str, Path] | None:
        """``(state folder name, path)`` of a job, or None.

        Looks in lifecycle order (new, cur, final folders) and retries, so a job
        that moves while we look is still found.
        """
        if not entry_name_ok(job_id):
            return None
        for attempt in range(tries):
            for name in STATE_FOLDERS:
                p = self.root / name / job_id
                if os.path.lexists(p):
                    return name, p
            if attempt + 1 < tries:
                # between cur/ and new/ during a requeue, or not there at all
                time.sleep(0.02)
        requeued = self.requeue_entries().get(job_id)
        return ("tmp", requeued) if requeued is not None else None

    def requeue_entries(self) -> dict[str, Path]:
        """``job id -> tmp/requeue~<id>~<unique>`` for jobs between cur/ and new/
        (the sweeper restores them; ``status`` shows them as queued)."""
        out = {}
        for e in self._entries("tmp"):
            if e.name.startswith(_REQUEUE):
                job_id = e.name[len(_REQUEUE):].split("~", 1)[0]
                if entry_name_ok(job_id):
                    out[job_id] = Path(e.path)
        return out

    def _entries(self, name: str) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(self.dir(name)) as it:
                return [e for e in it if not e.name.startswith(".")]
        except FileNotFoundError:
            return []

    def ids(self, state_folder: str) -> list[str]:
        """Job ids in one state folder, oldest submission first.

        Ordered by the mtime of ``job.msgpack`` (never modified after publication,
        so a requeued job keeps its place), else of the entry itself, then name.
        """
        out = []
        for e in self._entries(state_folder):
            try:
                st = os.stat(os.path.join(e.path, JOB_FILE))
            except OSError:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
            out.append((st.st_mtime, e.name))
        return [name for _, name in sorted(out)]

    def claim_order(self) -> list[str]:
        """Queued job ids in the order engines claim them: higher ``Job.priority``
        first (drafts before long jobs), oldest submission first within a priority
        (the order of :meth:`ids`)."""
        ids = self.ids("new")
        queued = set(ids)
        self._priorities = {k: v for k, v in self._priorities.items() if k in queued}
        return sorted(ids, key=lambda job_id: -self._priority(job_id))  # stable

    def _priority(self, job_id: str) -> int:
        path = self.dir("new") / job_id / JOB_FILE
        try:
            st = os.stat(path)
        except OSError:
            return PRIORITY_NORMAL
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._priorities.get(job_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            priority = int(load_document(path, Job).priority or 0)
        except (OSError, FaceStitchError):
            priority = PRIORITY_NORMAL  # the runner fails it with its own error
        self._priorities[job_id] = (key, priority)
        return priority

    # --- submitting --------------------------------------------------------------

    def staging_folder(self) -> Path:
        """A new private folder ``tmp/<unique>/`` to assemble a job in."""
        self.ensure()
        p = self.dir("tmp") / unique_name()
        try:
            p.mkdir()
        except OSError as exc:
            raise io_error(exc, p.parent, doing="creating a job") from None
        return p

    def publish(self, staging: Path, job_id: str) -> Path:
        """Publish a staged job folder as ``new/<job_id>`` with one rename.

        Refuses an id that exists in any state folder (ids are never reused).

        Raises:
            JobExists: the id is taken.
        """
        if not valid_job_id(job_id):
            raise DocumentError(f"job id {job_id!r} is not a valid name", field="id")
        where = self.locate(job_id, tries=1)
        if where is not None:
            raise JobExists(f"job {job_id} already exists (in {where[0]}/); "
                            "job ids are never reused", field="id")
        dest = self.dir("new") / job_id
        fsync_dir(staging)
        try:
            os.rename(staging, dest)
        except OSError as exc:
            if _is_taken(exc):
                raise JobExists(f"job {job_id} already exists (in new/)",
                                field="id") from None
            raise
        fsync_dir(dest.parent)
        fsync_dir(staging.parent)
        return dest

    # --- leases ------------------------------------------------------------------

    def read_lease(self, folder: Path) -> Lease | None:
        """The lease in a job folder; None if there is none (or it is unreadable).

        Raises:
            FileNotFoundError: the folder itself is gone.
        """
        try:
            return load_document(folder / LEASE_FILE, Lease)
        except FileNotFoundError:
            if not folder.is_dir():
                raise
            return None
        except (DocumentError, OSError) as exc:
            log.warning("unreadable lease in %s: %s", folder, exc)
            return None

    def _write_lease(self, folder: Path, lease: Lease) -> None:
        atomic_write_bytes(folder / LEASE_FILE, lease.to_bytes())

    def claim(self, job_id: str, worker: str, *, lease_seconds: float
              ) -> Claim | None:
        """Claim a queued job by renaming ``new/<id>`` to ``cur/<id>``.

        Exactly one of several racing workers gets a :class:`Claim`; the others
        get None. The claimer writes a lease with the previous epoch + 1.
        """
        src = self.dir("new") / job_id
        dest = self.dir("cur") / job_id
        try:
            if not stat.S_ISDIR(os.lstat(src).st_mode):
                return None  # not a job folder: quarantine_stray() moves it away
            os.rename(src, dest)
        except OSError as exc:
            if _is_gone(exc):
                return None  # another worker won, or the job was cancelled
            if _is_taken(exc):
                self._warn_once(f"cur/{job_id}", "cannot claim %s: cur/%s already "
                                "exists", job_id, job_id)
                return None
            # A folder we may not move (another user's on a NAS, chmod 000): skip
            # it, report it, try again later; the other jobs run.
            self._warn_once(f"new/{job_id}", "cannot claim job %s: %s; skipping it "
                            "(other jobs run; it is tried again later)", job_id,
                            io_error(exc, src, doing="moving it to cur/").message)
            return None
        try:
            problem = self._inspect_claimed(dest)
            prev, lease_problem = self._claimed_lease(dest)
        except FileNotFoundError:
            return None
        problem = problem or lease_problem
        epoch = (prev.epoch + 1) if prev else 1
        if epoch >= MAX_EPOCH:  # only a forged lease gets here; it fails the job
            problem = problem or DocumentFieldError(
                f"{LEASE_FILE}: epoch {prev.epoch if prev else 0} leaves no next "
                "epoch", field=f"{LEASE_FILE}:epoch")
            epoch = 1
        now = self.clock()
        lease = Lease(job_id=job_id, worker=worker, epoch=epoch,
                      expires=now + lease_seconds, acquired=utc_now(self.clock),
                      renewed=utc_now(self.clock), host=_HOST, pid=os.getpid(),
                      reclaims=prev.reclaims if prev else 0)
        try:
            self._write_lease(dest, lease)
        except FileNotFoundError:
            return None  # requeued under us (only after a stall past the grace)
        if problem is not None:
            log.warning("job %s: %s", job_id, problem)
        return Claim(job_id, dest, worker, lease.epoch, lease.expires, lease_seconds,
                     lease.reclaims, problem)

    def _set_aside(self, folder: Path, name: str) -> None:
        """Rename an engine-owned entry of the wrong kind out of the engine's way
        (``<name>.refused~<unique>``, kept with the job: nothing is deleted)."""
        try:
            os.rename(folder / name, folder / f"{name}{_REFUSED}{unique_name()}")
        except FileNotFoundError:
            if not folder.is_dir():
                raise
        except OSError as exc:
            log.error("cannot set aside %s/%s: %s", folder, name, exc)

    def _inspect_claimed(self, folder: Path) -> FaceStitchError | None:
        """Check the engine-owned entries of a just-claimed job folder.

        Files the engine replaces (lease, progress, result, config) must be regular
        files, folders it writes into (stages, output) real folders holding only
        folders and regular files. A wrong one at the top is set aside so the
        engine can write its own; the first problem found is returned.

        Raises:
            FileNotFoundError: the folder itself is gone.
        """
        problem: FaceStitchError | None = None
        for name in _OWNED_FILES + _OWNED_FOLDERS:
            try:
                mode = os.lstat(folder / name).st_mode
            except FileNotFoundError:
                if not folder.is_dir():
                    raise
                continue
            except OSError as exc:
                problem = problem or io_error(exc, folder / name, doing="inspecting")
                continue
            want_dir = name in _OWNED_FOLDERS
            if stat.S_ISDIR(mode) if want_dir else stat.S_ISREG(mode):
                if want_dir:
                    problem = problem or self._inspect_tree(folder, name)
                continue
            what = describe_mode(mode)
            err: FaceStitchError = (
                NotAFolder(f"{name} in the job folder is {what}, not a folder; "
                           "it was set aside", field=name) if want_dir else
                NotRegularFile(f"{name} in the job folder is {what}, not a regular "
                               "file; it was set aside unopened", field=name))
            self._set_aside(folder, name)
            problem = problem or err
        return problem

    def _inspect_tree(self, folder: Path, name: str) -> FaceStitchError | None:
        # One lstat per entry (a resumed long job holds tens of thousands: well
        # under a second on a local disk); what is read later was checked here.
        for dirpath, dirnames, filenames in os.walk(folder / name):
            for entry in dirnames + filenames:
                p = Path(dirpath) / entry
                rel = p.relative_to(folder).as_posix()
                try:
                    mode = os.lstat(p).st_mode
                except OSError:
                    continue
                if stat.S_ISDIR(mode) and entry != "DONE.msgpack":
                    continue
                if stat.S_ISREG(mode):
                    continue
                return NotRegularFile(f"{rel} in the job folder is "
                                      f"{describe_mode(mode)}; the engine writes "
                                      "only folders and regular files there",
                                      field=rel)
        return None

    def _claimed_lease(self, folder: Path
                       ) -> tuple[Lease | None, FaceStitchError | None]:
        """The lease a claimer found (None: none), and what is wrong with it: an
        impossible or unreadable lease is set aside and fails the job."""
        try:
            return load_document(folder / LEASE_FILE, Lease), None
        except FileNotFoundError:
            if not folder.is_dir():
                raise
            return None, None
        except FaceStitchError as exc:
            err = exc
        except OSError as exc:
            err = io_error(exc, folder / LEASE_FILE, doing="reading")
        if err.field and err.field != LEASE_FILE:
            err.field = f"{LEASE_FILE}:{err.field}"
        err.field = err.field or LEASE_FILE
        self._set_aside(folder, LEASE_FILE)
        return None, err

    def check(self, claim: Claim) -> Lease:
        """Verify ``claim`` still holds its job; returns the current lease.

        Raises:
            LeaseLost: the lease expired by our clock, the folder moved away, or a
                later claimer's lease is there.
        """
        if self.clock() >= claim.expires:
            raise LeaseLost(f"the lease on job {claim.job_id} expired before it was "
                            "renewed (this worker stalled)")
        try:
            current = self.read_lease(claim.folder)
        except FileNotFoundError:
            raise LeaseLost(f"job {claim.job_id} was moved away from this worker") \
                from None
        if current is None:
            raise LeaseLost(f"job {claim.job_id} has no lease any more")
        if current.epoch > claim.epoch or (current.epoch == claim.epoch
                                           and current.worker != claim.worker):
            raise LeaseLost(f"job {claim.job_id} was taken over by {current.worker}")
        return current

    def renew(self, claim: Claim) -> None:
        """Extend the lease (the heartbeat). Raises :class:`LeaseLost`."""
        current = self.check(claim)
        # A lower epoch here is a late write by an earlier holder: ours wins.
        new = Lease(job_id=claim.job_id, worker=claim.worker, epoch=claim.epoch,
                    expires=self.clock() + claim.lease_seconds,
                    acquired=current.acquired if current.epoch == claim.epoch else "",
                    renewed=utc_now(self.clock), host=_HOST, pid=os.getpid(),
                    reclaims=claim.reclaims)
        try:
            self._write_lease(claim.folder, new)
        except FileNotFoundError:
            raise LeaseLost(f"job {claim.job_id} was moved away from this worker") \
                from None
        claim.expires = new.expires

    def lease_expired(self, folder: Path, grace: float) -> bool:
        """Whether the job in ``cur/<id>`` may be reclaimed now.

        A folder without a lease (a claimer between its rename and its lease
        write) counts from its last change: expired ``grace`` seconds after it.
        """
        try:
            lease = self.read_lease(folder)
            if lease is not None:
                if lease.expires > self.clock() + MAX_CLOCK_AHEAD:
                    self._warn_once(f"lease/{folder.name}", "job %s: its lease runs "
                                    "until %s, beyond any lease an engine writes (an "
                                    "impossible clock); taking it as expired",
                                    folder.name, lease.expires)
                    return True
                return lease.expires <= self.clock()
            st = folder.stat()
        except FileNotFoundError:
            return False
        return max(st.st_mtime, st.st_ctime) + grace <= self.clock()

    def requeue(self, folder: Path, *, reason: str, grace: float) -> bool:
        """Move a running job back to ``new/`` (see the module docstring).

        Args:
            folder: ``cur/<id>``.
            reason: ``"shutdown"`` (its worker let go) or ``"expired"`` (a
                reclaimer took it from a dead worker; counted in ``reclaims``).
            grace: seconds the next claimer has to write its own lease.

        Returns:
            False when another reclaimer (or the job's publication) got there first.
        """
        job_id = folder.name
        private = self.dir("tmp") / f"{_REQUEUE}{job_id}~{unique_name()}"
        try:
            os.rename(folder, private)
        except OSError as exc:
            if _is_gone(exc):
                return False
            raise
        try:
            old = load_document(private / LEASE_FILE, Lease)
        except FileNotFoundError:
            if not private.is_dir():
                return False
            old = None
        except (FaceStitchError, OSError) as exc:
            # Left as it is: its next claimer sets it aside and fails the job with
            # this error (a released lease written here would hide it).
            log.warning("requeueing %s with an unusable lease: %s", job_id, exc)
            return self._restore(private, job_id)
        lease = Lease(job_id=job_id, worker="", epoch=old.epoch if old else 0,
                      expires=self.clock() + grace, acquired="",
                      renewed=utc_now(self.clock), host=_HOST, pid=os.getpid(),
                      reclaims=(old.reclaims if old else 0) + int(reason == "expired"),
                      released=reason)
        try:
            self._write_lease(private, lease)
        except FileNotFoundError:
            return True  # the sweeper restored it to new/ already
        return self._restore(private, job_id)

    def _restore(self, private: Path, job_id: str) -> bool:
        dest = self.dir("new") / job_id
        try:
            os.rename(private, dest)
        except OSError as exc:
            if _is_gone(exc):
                return True
            if _is_taken(exc):
                log.error("cannot requeue %s: new/%s exists; left in %s", job_id,
                          job_id, private)
                return False
            raise
        fsync_dir(dest.parent)
        log.info("requeued job %s", job_id)
        return True

    def reclaim_expired(self, *, grace: float) -> list[str]:
        """Requeue every running job whose lease expired; returns their ids.

        Args:
            grace: the lease length this engine uses (grace for a fresh claimer
                and for folders without a lease).
        """
        out = []
        for job_id in self.ids("cur"):
            folder = self.dir("cur") / job_id
            try:
                if not stat.S_ISDIR(os.lstat(folder).st_mode):
                    log.warning("cur/%s is not a job folder; moving it to tmp/",
                                job_id)
                    self._to_debris(folder, job_id)
                    continue
                if not self.lease_expired(folder, grace):
                    continue
                if not (folder / JOB_FILE).exists() and any(
                        os.path.lexists(self.root / name / job_id)
                        for name in STATE_FOLDERS if name != "cur"):
                    # A stale writer re-created cur/<id> after the job moved on.
                    self._to_debris(folder, job_id)
                    continue
                log.warning("lease of job %s expired; requeueing it", job_id)
                if self.requeue(folder, reason="expired", grace=grace):
                    out.append(job_id)
            except OSError as exc:  # one folder we cannot handle stops no other
                self._warn_once(f"cur/{job_id}", "cannot requeue job %s: %s", job_id,
                                io_error(exc, folder, doing="requeueing").message)
        return out

    def _to_debris(self, path: Path, job_id: str) -> None:
        try:
            os.rename(path, self.dir("tmp") / f"{_DEBRIS}{job_id}~{unique_name()}")
            log.warning("moved stray %s to tmp/ for sweeping", path)
        except OSError:
            pass

    def release(self, claim: Claim, *, grace: float | None = None) -> bool:
        """Give a claimed job back to the queue (shutdown); its checkpoints stay."""
        try:
            self.check(claim)
        except LeaseLost:
            return False
        return self.requeue(claim.folder, reason="shutdown",
                            grace=claim.lease_seconds if grace is None else grace)

    # --- results -----------------------------------------------------------------

    def finish(self, claim: Claim, result: Result) -> Path:
        """Write ``result.msgpack`` and publish the job folder to its final state
        folder with one rename. Returns the published folder.

        Raises:
            LeaseLost: the claim no longer holds the job (nothing is published).
        """
        if result.state not in FINAL_STATES:
            raise ValueError(f"not a final state: {result.state}")
        self.check(claim)
        try:
            atomic_write_bytes(claim.folder / RESULT_FILE, result.to_bytes())
        except FileNotFoundError:
            raise LeaseLost(f"job {claim.job_id} was moved away from this worker") \
                from None
        dest = self.dir(result.state) / claim.job_id
        try:
            os.rename(claim.folder, dest)
        except OSError as exc:
            if _is_gone(exc):
                raise LeaseLost(f"job {claim.job_id} was moved away from this worker"
                                ) from None
            if not _is_taken(exc):
                raise
            # Never overwrite a published job: keep both.
            dest = self.dir(result.state) / f"{claim.job_id}.{unique_name('dup')}"
            log.error("%s/%s already exists; publishing this run as %s",
                      result.state, claim.job_id, dest.name)
            os.rename(claim.folder, dest)
        fsync_dir(dest.parent)
        self.clear_cancel(claim.job_id)
        return dest

    # --- cancel ------------------------------------------------------------------

    def cancel_path(self, job_id: str) -> Path:
        return self.dir("cancel") / job_id

    def request_cancel(self, job_id: str, note: str = "") -> Path:
        """Drop ``cancel/<job_id>``. Any content is allowed; we write a note."""
        if not valid_job_id(job_id):
            raise DocumentError(f"job id {job_id!r} is not a valid name", field="id")
        self.ensure()
        p = self.cancel_path(job_id)
        text = note or f"cancel requested {utc_now(self.clock)} on {_HOST}"
        atomic_write_bytes(p, (text + "\n").encode("utf-8"))
        return p

    def cancel_requested(self, job_id: str) -> bool:
        return os.path.lexists(self.cancel_path(job_id))

    def clear_cancel(self, job_id: str) -> None:
        """Remove a cancel request, whatever its kind (a folder goes to tmp/)."""
        p = self.cancel_path(job_id)
        try:
            if stat.S_ISDIR(os.lstat(p).st_mode):
                self._to_debris(p, job_id)
            else:
                os.unlink(p)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._warn_once(f"cancel/{job_id}", "cannot remove cancel/%s: %s",
                            job_id, exc)

    def cancel_queued(self, job_id: str, who: str) -> Path | None:
        """Cancel a queued job directly: claim it like a worker would, then publish
        it to ``cancelled/`` with a ``Result/1``. None if a worker claimed it first
        (the running job then sees the cancel request)."""
        claim = self.claim(job_id, who, lease_seconds=60.0)
        if claim is None:
            return None
        now = utc_now(self.clock)
        result = Result(job_id=job_id, state="cancelled",
                        error={"code": "cancelled", "message": "cancelled before it "
                               "started", "stage": None, "frame": None, "field": None},
                        started=now, finished=now)
        try:
            return self.finish(claim, result)
        except LeaseLost:
            return None

    # --- housekeeping -------------------------------------------------------------

    def _newest_mtime(self, path: Path, limit: int = 10000) -> float:
        """Newest mtime in a tree (a slow copy keeps a staging folder fresh)."""
        newest = path.lstat().st_mtime
        if not path.is_dir() or path.is_symlink():
            return newest
        seen = 0
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                seen += 1
                try:
                    newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
                except FileNotFoundError:
                    pass
                if seen >= limit:
                    return newest
        return newest

    def sweep(self, *, max_age: float = 3600.0, requeue_after: float = 60.0
              ) -> list[str]:
        """Remove abandoned ``tmp/`` entries and stale cancel requests.

        Args:
            max_age: seconds without change after which a ``tmp/`` entry is
                abandoned (a submitter that died mid-write).
            requeue_after: seconds after which a ``tmp/requeue~<id>~*`` entry (a
                requeue interrupted by a crash) is restored to ``new/<id>``.

        Returns:
            The names acted on (``tmp/<name>``, ``cancel/<id>``).
        """
        now = self.clock()
        out = []
        for e in self._entries("tmp"):
            p = Path(e.path)
            try:
                age = now - self._newest_mtime(p)
            except OSError:
                continue
            if age < -MAX_CLOCK_AHEAD:
                # Changed "in the future": a writer with an impossible clock. Its
                # age cannot be known; count it from now instead of never.
                self._warn_once(f"tmp/{e.name}", "tmp/%s was modified in the future "
                                "(an impossible clock); treating it as abandoned",
                                e.name)
                age = max(max_age, requeue_after)
            if e.name.startswith(_REQUEUE):
                if age >= requeue_after:
                    job_id = e.name[len(_REQUEUE):].split("~", 1)[0]
                    # Never deleted: restored even without a job.msgpack (its
                    # claimer fails it with a clear error instead).
                    if entry_name_ok(job_id) and p.is_dir() and not p.is_symlink():
                        log.warning("restoring interrupted requeue of %s", job_id)
                        if self._restore(p, job_id):
                            out.append(f"tmp/{e.name}")
                        continue
                else:
                    continue
            if age >= max_age:
                log.info("sweeping abandoned tmp/%s", e.name)
                if _remove(p):
                    out.append(f"tmp/{e.name}")
        for e in self._entries("cancel"):
            where = self.locate(e.name, tries=1)
            try:
                age = now - e.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            if (where is not None and where[0] in FINAL_STATES) or (
                    where is None and (age >= max_age or age < -MAX_CLOCK_AHEAD)):
                if _remove(Path(e.path)):
                    out.append(f"cancel/{e.name}")
        return out

    def quarantine_stray(self) -> list[str]:
        """Move entries of ``new/`` that are not folders (a bridge wrote a file
        there by mistake) to ``tmp/`` where the sweeper removes them."""
        out = []
        for e in self._entries("new"):
            if not e.is_dir(follow_symlinks=False):
                log.warning("new/%s is not a job folder; moving it to tmp/", e.name)
                self._to_debris(Path(e.path), e.name)
                out.append(e.name)
        return out

    def iter_jobs(self) -> Iterator[tuple[str, str, Path]]:
        """``(job_id, state folder, path)`` of every job, state by state; then jobs
        caught between cur/ and new/ (``"tmp"``, ``tmp/requeue~<id>~<unique>``),
        so that every job that exists anywhere is listed."""
        seen = set()
        for name in STATE_FOLDERS:
            for job_id in self.ids(name):
                seen.add(job_id)
                yield job_id, name, self.dir(name) / job_id
        for job_id, path in sorted(self.requeue_entries().items()):
            if job_id not in seen:
                yield job_id, "tmp", path


def _kind(path: Path) -> str:
    try:
        return describe_mode(os.lstat(path).st_mode)
    except OSError:
        return "unreadable"


def _remove(path: Path) -> bool:
    """Delete a swept entry of any kind; False if it could not be removed."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)
            return not os.path.lexists(path)
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)
        return False
    return True


def read_result(folder: Path) -> Result | None:
    """The ``Result/1`` of a published job folder, or None if unreadable."""
    try:
        return load_document(folder / RESULT_FILE, Result)
    except (OSError, FaceStitchError):
        return None
