"""The submitter's side of the exchange: submit, inspect, cancel and wait for jobs.

Torch-free (stdlib + msgpack): this is what an editor's bridge calls.

Example::

    job = Job(id=new_job_id(), source=Source("media/plate.mov"),
              range=FrameRange(0, 48, Fraction(24)), kind="align-preview")
    submit_job(exchange, job, attachments={"media/plate.mov": Path("plate.mov")})
    status = wait_job(exchange, job.id, timeout=600)
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping, Sequence

from fsexchange.documents import (JOB_KINDS, Edit, FrameRange, Job, OutputSpec,
                                  Progress, Result, Source, Subject, decode_document,
                                  load_document)
from fsexchange.errors import (DocumentError, DocumentFieldError, EditInvalid,
                               FaceStitchError, JobExists, JobNotFound)
from fsexchange.exchange import (FINAL_STATES, JOB_FILE, PROGRESS_FILE, RESERVED_NAMES,
                                 RESULT_FILE, STATE_FOLDERS, Exchange)
from fsexchange.fsutil import fsync_dir, open_regular, write_synced
from fsexchange.grammar import check_sweep_edits, parse_sweep
from fsexchange.options import PipelineConfig, refine_options

__all__ = [
    "new_job_id",
    "build_job",
    "submit_job",
    "JobStatus",
    "job_status",
    "list_jobs",
    "cancel_job",
    "wait_job",
]

def _exchange(exchange: Any) -> Exchange:
    return exchange if isinstance(exchange, Exchange) else Exchange(exchange)


def new_job_id(prefix: str = "job") -> str:
    """A fresh job id: ``<prefix>-<UTC yyyymmdd-hhmmss>-<8 random hex>``."""
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$", prefix):
        raise ValueError(f"job id prefix {prefix!r} must be letters, digits, '._-'")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{prefix}-{stamp}-{secrets.token_hex(4)}"


def build_job(*, source: Source, range: FrameRange, kind: str = "stitch",
              edits: Sequence[Edit] = (), subject: Subject | None = None,
              options: Mapping[str, Any] | None = None,
              output: OutputSpec | None = None, host: Mapping[str, Any] | None = None,
              job_id: str | None = None, id_prefix: str = "job",
              priority: int | None = None, refine: bool | None = None) -> Job:
    """The one way every client (CLI, OpenFX, Resolve, preview, demo) makes a job.

    Fills the id (:func:`new_job_id`) and the creation time (microseconds, so the
    newest of several sends of one shot sorts last), checks the kind, that a
    draft has an edit or a sweep, and validates ``options`` the way the engine
    will (:meth:`fsexchange.options.PipelineConfig.from_options`, which parses a
    draft's sweep), so a bad value is refused before anything is queued.
    ``priority`` None: the kind's default (drafts high,
    :func:`fsexchange.documents.default_priority`). A stitch job records whether
    the temporal refinement runs (``options.refine.enabled``): ``refine`` when
    given (the ``--no-refine`` switches), else what ``options`` say, else on.

    Raises:
        DocumentFieldError: a bad kind, option, edit, subject or priority.
        EditInvalid: a malformed sweep, a draft with nothing to render, an edit
            both swept and fixed.
    """
    if kind not in JOB_KINDS:
        raise DocumentFieldError(f"unknown job kind {kind!r}; known: "
                                 f"{', '.join(JOB_KINDS)}", field="kind")
    if kind == "stitch":
        options = refine_options(options, refine)
    cfg = PipelineConfig.from_options(dict(options or {}))
    if kind == "draft":
        sweep = parse_sweep(cfg.draft.sweep)
        if not edits and not sweep:
            raise EditInvalid("a draft renders an edit: give NAME=STRENGTH or a sweep "
                              "NAME=FROM:TO:COUNT (e.g. age=-8:8:5)", field="edits")
        check_sweep_edits(sweep, edits)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    job = Job(id=job_id or new_job_id(id_prefix), source=source, range=range,
              kind=kind, subject=subject or Subject(), edits=tuple(edits),
              options=dict(options or {}), output=output or OutputSpec(),
              host=dict(host or {}), created=created, priority=priority)
    # Every field as the engine will check it (NaN strengths, bad subjects, the
    # priority range...).
    decode_document(job.to_bytes(), Job, source=JOB_FILE)
    return job


def _attachment_path(rel: str) -> PurePosixPath:
    p = PurePosixPath(str(rel).replace("\\", "/"))
    if (not p.parts or p.is_absolute() or ".." in p.parts or ":" in p.parts[0]
            or p.parts[0] in RESERVED_NAMES or p.parts[0].startswith(".")):
        raise DocumentError(
            f"attachment name {rel!r} must be a relative path inside the job folder, "
            f"not starting with '.' and not one of {', '.join(sorted(RESERVED_NAMES))}",
            field="attachments")
    return p


def _copy_synced(src: Path, dest: Path) -> None:
    if src.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        for child in sorted(src.iterdir()):
            _copy_synced(child, dest / child.name)
        fsync_dir(dest)
        return
    # a pipe or socket among the attachments is refused, never read (it blocks)
    with open_regular(src, follow_symlinks=True) as fi, open(dest, "wb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 22)
        fo.flush()
        os.fsync(fo.fileno())
    shutil.copystat(src, dest)


def submit_job(exchange: Any, job: Job, *,
               attachments: Mapping[str, Path | bytes] = {}) -> str:
    """Publish ``job`` to ``exchange/new/<job.id>`` atomically; returns the id.

    The job folder gets ``job.msgpack`` plus the attachments, copied to the given
    relative paths (``{"facetrack.msgpack": b"...", "media/plate.mov": Path(...)}``;
    a ``Path`` to a folder copies the folder). Everything is written into
    ``tmp/<unique>/`` and fsynced first, then renamed into ``new/`` in one step.

    Raises:
        DocumentError: the job does not validate, or a bad attachment name.
        JobExists: a job with this id was already submitted.
        FileNotFoundError: an attachment source is missing.
    """
    ex = _exchange(exchange).ensure()
    raw = job.to_bytes()
    decode_document(raw, Job, source=JOB_FILE)  # what the engine will check
    names = {rel: _attachment_path(rel) for rel in attachments}
    where = ex.locate(job.id, tries=1)
    if where is not None:
        raise JobExists(f"job {job.id} already exists (in {where[0]}/)", field="id")
    staging = ex.staging_folder()
    try:
        write_synced(staging / JOB_FILE, raw)
        for rel, src in attachments.items():
            dest = staging.joinpath(*names[rel].parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, (bytes, bytearray, memoryview)):
                write_synced(dest, bytes(src))
            else:
                _copy_synced(Path(src), dest)
            fsync_dir(dest.parent)
        ex.publish(staging, job.id)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return job.id


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands. ``folder`` is where the job folder is now."""

    id: str
    state: str  # queued | running | done | failed | cancelled
    progress: float  # whole job, 0..1
    stage: str | None
    message: str
    error: dict | None  # {code, message, stage, frame, field}
    result: Result | None
    folder: Path | None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        """The ``facestitch status --json`` object."""
        out: dict[str, Any] = {
            "id": self.id, "state": self.state, "progress": self.progress,
            "stage": self.stage, "message": self.message, "error": self.error,
            "folder": str(self.folder) if self.folder else None, "result": None,
        }
        if self.result is not None:
            r = self.result
            out["result"] = {
                "stages": [s.to_dict() for s in r.stages], "frames": len(r.frames),
                "outputs": dict(r.outputs), "warnings": list(r.warnings),
                "started": r.started, "finished": r.finished,
            }
        return out


def _read_progress(folder: Path) -> Progress | None:
    try:
        return load_document(folder / PROGRESS_FILE, Progress)
    except (OSError, FaceStitchError):
        return None


def _status_at(ex: Exchange, job_id: str, state_folder: str, folder: Path
               ) -> JobStatus:
    if state_folder == "tmp":  # tmp/requeue~<id>~<unique>: between cur/ and new/
        return JobStatus(job_id, "queued", 0.0, None, "being requeued (an engine "
                         "moves it back to new/)", None, None, folder)
    state = STATE_FOLDERS[state_folder]
    cancel = ex.cancel_requested(job_id)
    if state == "queued":
        msg = "cancel requested" if cancel else "waiting for an engine"
        if not os.access(folder, os.W_OK | os.X_OK) or not os.path.isdir(folder):
            msg += ("; engines cannot take it: new/" + job_id + " is not a folder "
                    "they may move (check its owner and permissions)")
        return JobStatus(job_id, state, 0.0, None, msg, None, None, folder)
    prog = _read_progress(folder)
    if state == "running":
        msg = prog.message if prog else "starting"
        if cancel:
            msg = f"cancel requested; {msg}"
        return JobStatus(job_id, state, prog.fraction if prog else 0.0,
                         prog.stage if prog else None, msg, None, None, folder)
    try:
        result = load_document(folder / RESULT_FILE, Result)
    except (OSError, FaceStitchError) as exc:
        # A final folder without a readable result has no result: say why (it
        # never passes as a plain "done"); the state is still the folder's.
        reason = "it is missing" if isinstance(exc, FileNotFoundError) else \
            getattr(exc, "strerror", None) or str(exc)  # errors of ours have none
        err = exc if isinstance(exc, FaceStitchError) else DocumentError(
            f"{folder.name}/{RESULT_FILE} cannot be read: {reason}",
            field=RESULT_FILE)
        error = err.to_dict()
        return JobStatus(job_id, state, 0.0, None,
                         f"{state}, but its result cannot be read: {err.message}",
                         error, None, folder)
    error = result.error
    if state == "done":
        fraction, msg = 1.0, f"done: {len(result.frames)} frames"
    else:
        fraction = prog.fraction if prog else 0.0
        msg = f"{state}: {error['message']}" if error else state
    return JobStatus(job_id, state, fraction, prog.stage if prog else None, msg,
                     error, result, folder)


def job_status(exchange: Any, job_id: str) -> JobStatus:
    """The status of one job.

    Raises:
        JobNotFound: no job with that id in any state folder.
        PathUnusable: the exchange folder is missing or not a folder.
    """
    ex = _exchange(exchange).require()
    for _ in range(3):
        where = ex.locate(job_id)
        if where is None:
            break
        try:
            return _status_at(ex, job_id, *where)
        except FileNotFoundError:
            continue  # it moved while we read it
    raise JobNotFound(f"no job {job_id!r} in {ex.root}", field="id")


def list_jobs(exchange: Any) -> list[JobStatus]:
    """Every job in the exchange, queued first, then running, then final ones,
    then jobs caught between folders (a requeue interrupted by a crash).

    Raises:
        PathUnusable: the exchange folder is missing or not a folder.
    """
    ex = _exchange(exchange).require()
    out = []
    for job_id, name, folder in ex.iter_jobs():
        try:
            out.append(_status_at(ex, job_id, name, folder))
        except FileNotFoundError:
            continue
    return out


def cancel_job(exchange: Any, job_id: str) -> JobStatus:
    """Request cancellation. A queued job is cancelled at once; a running one stops
    within seconds (poll :func:`job_status`); a finished one is left as it is."""
    ex = _exchange(exchange)
    status = job_status(ex, job_id)
    if status.final:
        return status
    ex.request_cancel(job_id)
    if status.state == "queued":
        ex.cancel_queued(job_id, f"cancel@{socket.gethostname()}:{os.getpid()}")
    return job_status(ex, job_id)


def wait_job(exchange: Any, job_id: str, *, timeout: float | None = None,
             poll: float = 0.5,
             on_progress: Callable[[JobStatus], None] | None = None) -> JobStatus:
    """Poll until the job is done, failed or cancelled.

    Args:
        timeout: seconds; None waits forever.
        poll: seconds between looks.
        on_progress: called with each status that differs from the previous one.

    Raises:
        TimeoutError: the job did not finish in time.
        JobNotFound: no such job.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    while True:
        status = job_status(exchange, job_id)
        key = (status.state, round(status.progress, 3), status.stage, status.message)
        if on_progress is not None and key != last:
            on_progress(status)
        last = key
        if status.final:
            return status
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"job {job_id} still {status.state} after {timeout} s")
        time.sleep(poll)
