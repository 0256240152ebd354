"""What the panel's buttons do: cancel, retry, archive, and a draft's strength as
the full job. Each reads the exchange through ``fsexchange.client`` and writes
only where a bridge may (docs/protocol.md "Writing a bridge for another editor"):

- cancel: :func:`fsexchange.client.cancel_job` (a cancel request; a queued job
  is cancelled at once the way the protocol lets any canceller do it);
- retry and pick: a new job made by :func:`fsexchange.client.build_job` from the
  old job's document, published by :func:`fsexchange.client.submit_job` (into
  ``tmp/``, then ``new/`` by one rename), with the media it names copied from the
  old job folder when the old job carried them;
- archive: a finished job folder moved (one rename, never deleted, never copied)
  into the panel's archive folder, which no engine or status reader looks at.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from fsexchange.client import (JobStatus, build_job, cancel_job, job_status,
                               submit_job)
from fsexchange.documents import Edit, Job, load_document
from fsexchange.errors import (DocumentError, EditInvalid, JobStateError,
                               PathUnusable, io_error)
from fsexchange.exchange import FINAL_STATES, JOB_FILE, Exchange
from fsexchange.fsutil import fsync_dir, unique_name
from fsexchange.grammar import parse_sweep, sweep_row_label, sweep_rows
from fsexchange.options import PipelineConfig
from fsexchange.paths import confine

__all__ = ["cancel", "retry", "pick_strength", "archive", "draft_rows",
           "default_archive"]

_STAMPED = re.compile(r"^(?P<prefix>[A-Za-z0-9][A-Za-z0-9._-]*?)-\d{8}-\d{6}-"
                      r"[0-9a-f]{8}$")
_STRENGTH_TOLERANCE = 1e-6  # Result/1 strengths against the sweep's (both rounded)


def default_archive(exchange: Path) -> Path:
    """``<exchange>/archive``: beside the state folders, on the same disk (an
    archive is one rename), ignored by engines and by ``facestitch status``."""
    return Path(exchange) / "archive"


def _prefix(job_id: str, suffix: str = "") -> str:
    """The id prefix of a new job made from ``job_id`` (``shot010-2026...-ab12cd34``
    gives ``shot010``), so the new id says where it came from."""
    m = _STAMPED.match(job_id)
    base = m.group("prefix") if m else "panel"
    base = base[:64] + suffix
    return base if re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$", base) else "panel"


def _job_of(status: JobStatus) -> Job:
    if status.folder is None:
        raise JobStateError(f"job {status.id} has no folder", field="id")
    try:
        return load_document(status.folder / JOB_FILE, Job)
    except FileNotFoundError:
        raise DocumentError(f"job {status.id} has no job.msgpack to start again "
                            "from", field=JOB_FILE) from None


def _attachments(job: Job, folder: Path) -> dict[str, Path]:
    """The files the job names relative to its folder (its media, its face
    track), to copy into the new job; absolute paths stay as they are."""
    out: dict[str, Path] = {}
    names = [("source.path", job.source.path)]
    if job.subject.track:
        names.append(("subject.track", job.subject.track))
    for field, rel in names:
        if os.path.isabs(rel) or PurePosixPath(rel).is_absolute() or \
                PureWindowsPath(rel).is_absolute():
            continue
        real = confine(rel, folder, field=field)  # no .., no link pointing out
        if not real.exists():
            raise DocumentError(f"job {job.id}: {field} {rel!r} is no longer in its "
                                "folder; submit the shot again", field=field)
        out[rel.replace("\\", "/")] = real
    return out


def _submit_from(ex: Exchange, old: Job, folder: Path, *, kind: str,
                 edits: tuple[Edit, ...], options: dict[str, Any],
                 host: dict[str, Any], prefix: str,
                 priority: int | None) -> str:
    job = build_job(source=old.source, range=old.range, kind=kind, edits=edits,
                    subject=old.subject, options=options, output=old.output,
                    host=host, id_prefix=prefix, priority=priority)
    # unknown top-level keys of the old document travel with it (docs/protocol.md
    # "Documents": a newer writer's additions survive)
    job = dataclasses.replace(job, extra=dict(old.extra))
    return submit_job(ex, job, attachments=_attachments(old, folder))


def cancel(ex: Exchange, job_id: str) -> JobStatus:
    """Cancel a queued or running job (:func:`fsexchange.client.cancel_job`).

    Raises:
        JobNotFound: no such job.
        JobStateError: it has already finished.
    """
    status = job_status(ex, job_id)
    if status.final:
        raise JobStateError(f"job {job_id} is {status.state} already; only queued "
                            "or running jobs can be cancelled", field="id")
    return cancel_job(ex, job_id)


def retry(ex: Exchange, job_id: str) -> str:
    """A new job from a failed (or cancelled) job's document: the same source,
    range, subject, edits, options and output, a new id; returns the new id.

    Raises:
        JobStateError: the job has not failed or been cancelled.
        DocumentError: its document cannot be read (it cannot be rebuilt).
    """
    status = job_status(ex, job_id)
    if status.state not in ("failed", "cancelled"):
        raise JobStateError(f"job {job_id} is {status.state}; only failed or "
                            "cancelled jobs are retried", field="id")
    old = _job_of(status)
    host = {**old.host, "panel": {"retry_of": old.id}}
    return _submit_from(ex, old, status.folder, kind=old.kind, edits=old.edits,
                        options=dict(old.options), host=host,
                        prefix=_prefix(old.id), priority=old.priority)


def draft_rows(job: Job) -> list[tuple[tuple[str, float], ...]]:
    """A draft's rows in sweep order (``Result/1`` ``variants`` order): the swept
    strengths of each (:func:`fsexchange.grammar.sweep_rows`); one empty row
    when the draft sweeps nothing (its own edits once)."""
    cfg = PipelineConfig.from_options(dict(job.options))
    return sweep_rows(parse_sweep(cfg.draft.sweep))


def pick_strength(ex: Exchange, job_id: str, row: int) -> str:
    """Submit the full job for a draft's row: the draft's source, range, subject,
    options (less the draft section) and output, kind ``stitch``, its own edits
    plus the row's swept strengths; returns the new id.

    The row is checked against the draft's ``Result/1`` ``variants`` (its label
    and strengths), so what is submitted is what the sheet showed.

    Raises:
        JobStateError: the job is not a finished draft.
        EditInvalid: no such row, or the result does not match the draft's sweep.
    """
    status = job_status(ex, job_id)
    result = status.result
    if status.state != "done" or result is None:
        raise JobStateError(f"job {job_id} is {status.state}; strengths are picked "
                            "from a finished draft", field="id")
    old = _job_of(status)
    if old.kind != "draft":
        raise JobStateError(f"job {job_id} is a {old.kind} job, not a draft",
                            field="kind")
    rows = draft_rows(old)
    if not 0 <= row < len(result.variants):
        raise EditInvalid(f"draft {job_id} has {len(result.variants)} strength(s); "
                          f"there is no row {row}", field="row")
    variant = result.variants[row]
    strengths = rows[row] if row < len(rows) else None
    same = strengths is not None and len(rows) == len(result.variants) and \
        len(strengths) == len(variant.strengths) and all(
            n == vn and abs(s - vs) <= _STRENGTH_TOLERANCE
            for (n, s), (vn, vs) in zip(strengths, variant.strengths))
    if not same:
        raise EditInvalid(f"draft {job_id}: row {row} ({variant.label}) does not "
                          "match the draft's sweep; pick from a draft the engine "
                          "finished for this document", field="row")
    edits = tuple(old.edits) + tuple(Edit(name, strength)
                                     for name, strength in strengths)
    options = {k: v for k, v in old.options.items() if k != "draft"}
    host = {**old.host, "panel": {"from_draft": old.id, "row": row,
                                  "strengths": sweep_row_label(strengths,
                                                               old.edits)}}
    return _submit_from(ex, old, status.folder, kind="stitch", edits=edits,
                        options=options, host=host, prefix=_prefix(old.id),
                        priority=None)


def archive(ex: Exchange, job_id: str, archive_dir: Path) -> Path:
    """Move a finished job folder into ``archive_dir`` (one rename; the results
    stay as they are, nothing is deleted); returns where it went.

    Raises:
        JobStateError: the job has not finished.
        PathUnusable: the archive folder is on another disk than the exchange
            (a move would be a copy), or is not a folder.
    """
    status = job_status(ex, job_id)
    if not status.final or status.folder is None:
        raise JobStateError(f"job {job_id} is {status.state}; only finished jobs "
                            "are archived", field="id")
    if status.folder.parent.name not in FINAL_STATES:
        raise JobStateError(f"job {job_id} is not in a final state folder",
                            field="id")
    try:
        archive_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise PathUnusable(f"archive folder {archive_dir} is not a folder",
                           field="archive") from None
    except OSError as exc:
        raise io_error(exc, archive_dir, doing="creating the archive") from None
    dest = archive_dir / job_id
    if os.path.lexists(dest):
        dest = archive_dir / f"{job_id}~{unique_name()}"
    try:
        os.rename(status.folder, dest)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise PathUnusable(f"archive folder {archive_dir} is on another disk "
                               f"than the exchange {ex.root}; give an archive "
                               "folder on the same disk (archiving is one rename)",
                               field="archive") from None
        if exc.errno in (errno.ENOENT, errno.ESTALE):
            raise JobStateError(f"job {job_id} moved while it was archived",
                                field="id") from None
        raise io_error(exc, status.folder, doing="archiving") from None
    fsync_dir(archive_dir)
    return dest
