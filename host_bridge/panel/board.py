"""The job list the panel shows: every job of the exchange, kept current by polling.

:class:`JobBoard` holds one summary per job (a plain JSON map: state, stage,
progress, times, worker, error) and a ``version`` that grows with every change,
so the page asks for the changes since the version it has (server-sent events)
instead of the whole list.

Every job is read through ``fsexchange.client.job_status`` (which never blocks on
a hostile entry and reports an unreadable result as such), its documents through
the protocol's one loader. What makes thousands of jobs cheap: a finished job
never changes (docs/protocol.md "The state machine"), so its summary is kept until
its folder or its ``result.msgpack`` changes; queued jobs are read again when
``new/`` or ``cancel/`` changed (or every ``full_every`` seconds, as network
shares may not update folder times); only running jobs are read at every poll.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable
from urllib.parse import quote

from fsexchange.client import JobStatus, job_status
from fsexchange.documents import Job, Lease, Progress, load_document
from fsexchange.errors import FaceStitchError, JobNotFound
from fsexchange.exchange import (FINAL_STATES, JOB_FILE, LEASE_FILE, PROGRESS_FILE,
                                 RESULT_FILE, STATE_FOLDERS, Exchange)

__all__ = ["FILTERS", "JobBoard", "summarise", "job_detail", "parse_time",
           "edits_text", "read_json_limited", "IMAGE_SUFFIXES"]

log = logging.getLogger(__name__)

#: What the page can filter by: one state, the unfinished ones, or all.
FILTERS = ("all", "active", "queued", "running", "done", "failed", "cancelled")
#: Frame files a browser shows (a filmstrip); EXR and PAM frames are not shown.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
FILMSTRIP = 8  # frames in a finished job's filmstrip
MAX_LISTED_FRAMES = 500  # frames named in a job's details ("and N more")
_REMOVED_KEPT = 20_000  # removals remembered for clients catching up
_TEXT_LIMIT = 300  # characters of a label or message kept in a summary
_STATE_ORDER = {"running": 0, "queued": 1}


def parse_time(text: Any) -> float | None:
    """An ISO 8601 UTC time of the documents (``2026-01-02T03:04:05Z``, with or
    without microseconds) as POSIX seconds; None when absent or malformed."""
    if not isinstance(text, str) or not text:
        return None
    t = text.strip()
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def edits_text(job: Job) -> str:
    """What a job does, for people: ``age -4``, ``draft age=-8:8:5``."""
    parts = [f"{e.name} (keyframed)" if e.keyframes else
             f"{e.name} {e.text!r}" if e.space == "text" else
             f"{e.name} {e.strength:g}" for e in job.edits]
    draft = job.options.get("draft") if isinstance(job.options, dict) else None
    sweep = draft.get("sweep") if isinstance(draft, dict) else None
    if isinstance(sweep, str) and sweep.strip():
        parts.append(f"sweep {sweep.strip()}")
    return ", ".join(parts) or ("no edit" if job.kind != "align-preview" else "")


def _clip(text: Any, limit: int = _TEXT_LIMIT) -> str:
    s = str(text) if text is not None else ""
    return s if len(s) <= limit else s[:limit - 1] + "…"


def _stat_key(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when a file is replaced (a rename gives a new inode)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode)


def _load(path: Path, kind: type) -> Any:
    """A document, or None when it is missing or unreadable (never blocks: the
    loader opens only regular files, non-blocking)."""
    try:
        return load_document(path, kind)
    except (OSError, FaceStitchError):
        return None


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def summarise(ex: Exchange, status: JobStatus, job: Job | None) -> dict[str, Any]:
    """A job's summary (one row of the list) from its status and document."""
    folder = status.folder
    state = status.state
    prog = lease = None
    if folder is not None and state != "queued":
        prog = _load(folder / PROGRESS_FILE, Progress)
        lease = _load(folder / LEASE_FILE, Lease)
    created = parse_time(job.created) if job else None
    if created is None and folder is not None:
        key = _stat_key(folder / JOB_FILE) or _stat_key(folder)
        created = key[0] / 1e9 if key else None
    started = finished = None
    if status.result is not None:
        started = parse_time(status.result.started)
        finished = parse_time(status.result.finished)
    elif state == "running" and lease is not None:
        started = parse_time(lease.acquired)
    worker = (prog.worker if prog and prog.worker else
              lease.worker if lease and lease.worker else "")
    error = None
    if status.error:
        error = {"code": _clip(status.error.get("code"), 64),
                 "message": _clip(status.error.get("message"), 2000)}
    label = ""
    if job is not None:
        label = str(job.host.get("item_name") or "") or \
            PurePosixPath(job.source.path.replace("\\", "/")).name
    return {
        "id": status.id,
        "state": state,
        "folder": folder.parent.name if folder is not None else "",
        "kind": job.kind if job else None,
        "priority": job.priority if job else 0,
        "label": _clip(label),
        "edits": _clip(edits_text(job)) if job else "",
        "readable": job is not None,
        "stage": status.stage,
        "stage_index": prog.stage_index if prog and state == "running" else None,
        "stage_count": prog.stage_count if prog and state == "running" else None,
        "fraction": max(0.0, min(1.0, float(status.progress))),
        "message": _clip(status.message, 2000),
        "error": error,
        "worker": _clip(worker, 200),
        "created": created,
        "started": started,
        "finished": finished,
        "cancel_requested": bool(state in ("queued", "running")
                                 and ex.cancel_requested(status.id)),
    }


@dataclass
class _Known:
    where: tuple[str, str]  # (state folder, job folder path)
    stamp: tuple | None  # result.msgpack's stat key (final jobs)
    summary: dict[str, Any]
    rev: int


class JobBoard:
    """Every job of one exchange as the panel shows it.

    Call :meth:`refresh` regularly (the app's poller does, twice a second); read
    with :meth:`page` and :meth:`changes_since`. Thread-safe: one poller writes,
    any number of requests read.

    Args:
        exchange: the exchange folder.
        full_every: seconds between complete re-reads of the listing and of the
            queued jobs (folder times of a network share may lag).
        clock: POSIX time (tests fake it).
    """

    def __init__(self, exchange: str | os.PathLike[str] | Exchange, *,
                 full_every: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.ex = exchange if isinstance(exchange, Exchange) else Exchange(exchange)
        self.full_every = full_every
        self.clock = clock
        self.version = 0
        self.error: dict[str, Any] | None = None  # the exchange itself is unusable
        self._lock = threading.Lock()
        self._jobs: dict[str, _Known] = {}
        self._removed: list[tuple[int, str]] = []  # (version, job id), oldest first
        self._entries: list[tuple[str, str, Path]] = []
        self._stamps: tuple | None = None
        self._last_full = -math.inf
        self._job_docs: dict[str, tuple[tuple | None, Job | None]] = {}

    # --- reading the exchange ----------------------------------------------------

    def _folder_stamps(self) -> tuple:
        out = []
        for name in (*STATE_FOLDERS, "tmp", "cancel"):
            try:
                st = os.stat(self.ex.root / name)
                out.append((st.st_mtime_ns, st.st_ino))
            except OSError:
                out.append(None)
        return tuple(out)

    def _job_doc(self, folder: Path) -> Job | None:
        """The job's ``Job/1`` (cached: ``job.msgpack`` never changes once
        published); None when it cannot be read."""
        path = folder / JOB_FILE
        key = _stat_key(path)
        cached = self._job_docs.get(str(folder))
        if cached is not None and cached[0] == key:
            return cached[1]
        job = _load(path, Job)
        self._job_docs[str(folder)] = (key, job)
        return job

    def _read(self, job_id: str) -> tuple[tuple[str, str], tuple | None,
                                          dict[str, Any]] | None:
        try:
            status = job_status(self.ex, job_id)
        except JobNotFound:
            return None
        except FaceStitchError as exc:  # e.g. a job folder no one may read
            log.warning("panel: job %s: %s", job_id, exc)
            return None
        folder = status.folder
        where = (folder.parent.name if folder else "", str(folder))
        stamp = _stat_key(folder / RESULT_FILE) if folder and status.final else None
        job = self._job_doc(folder) if folder is not None else None
        return where, stamp, summarise(self.ex, status, job)

    def refresh(self, *, full: bool = False) -> bool:
        """Look at the exchange again; True when any job changed, appeared or went.

        Never raises for what the exchange holds: a missing or unusable exchange
        folder is kept in :attr:`error` (the page says so) until it is back.
        """
        now = time.monotonic()
        full = full or now - self._last_full >= self.full_every
        try:
            stamps = self._folder_stamps()
            listing = full or stamps != self._stamps
            queued_too = full or self._stamps is None or \
                stamps[0] != self._stamps[0] or stamps[-1] != self._stamps[-1]
            if listing:
                self.ex.require()
                self._entries = list(self.ex.iter_jobs())
                live = {str(p) for _, _, p in self._entries}
                self._job_docs = {k: v for k, v in self._job_docs.items()
                                  if k in live}
            self._stamps = stamps
            if full:
                self._last_full = now
            updates: dict[str, _Known | None] = {}
            seen: set[str] = set()
            for job_id, name, path in self._entries:
                if job_id in seen:  # listed twice (a copy in two state folders)
                    continue
                seen.add(job_id)
                old = self._jobs.get(job_id)
                state = "queued" if name == "tmp" else STATE_FOLDERS[name]
                if old is not None and old.where == (name, str(path)):
                    if state in FINAL_STATES and \
                            old.stamp == _stat_key(path / RESULT_FILE):
                        continue  # a finished job never changes
                    if state == "queued" and not queued_too:
                        continue
                read = self._read(job_id)
                if read is None:
                    updates[job_id] = None
                    continue
                where, stamp, summary = read
                if old is None or old.summary != summary or old.where != where:
                    updates[job_id] = _Known(where, stamp, summary, 0)
                elif old.stamp != stamp:
                    old.stamp = stamp
            gone = [j for j in self._jobs if j not in seen] if listing else []
            self.error = None
        except FaceStitchError as exc:
            return self._fail(exc.to_dict())
        except OSError as exc:
            return self._fail({"code": "io.error", "message": str(exc)})
        if not updates and not gone:
            return False
        with self._lock:
            self.version += 1
            for job_id, known in updates.items():
                if known is None:
                    if self._jobs.pop(job_id, None) is not None:
                        self._removed.append((self.version, job_id))
                else:
                    known.rev = self.version
                    self._jobs[job_id] = known
            for job_id in gone:
                self._jobs.pop(job_id, None)
                self._removed.append((self.version, job_id))
            if len(self._removed) > _REMOVED_KEPT:
                del self._removed[:len(self._removed) - _REMOVED_KEPT]
        return True

    def _fail(self, error: dict[str, Any]) -> bool:
        changed = self.error != error
        self.error = error
        if changed:
            log.warning("panel: the exchange cannot be read: %s", error["message"])
            with self._lock:
                self.version += 1
        return changed

    # --- what the page asks for --------------------------------------------------

    @staticmethod
    def _sort_key(s: dict[str, Any]) -> tuple:
        state = s["state"]
        if state == "running":
            return (0, -(s["started"] or 0.0), s["id"])
        if state == "queued":  # claim order: priority, then oldest first
            return (1, -(s["priority"] or 0), s["created"] or 0.0, s["id"])
        return (2, -(s["finished"] or s["created"] or 0.0), s["id"])

    @staticmethod
    def counts_of(summaries: list[dict[str, Any]]) -> dict[str, int]:
        counts = {f: 0 for f in FILTERS}
        for s in summaries:
            counts[s["state"]] += 1
        counts["all"] = len(summaries)
        counts["active"] = counts["queued"] + counts["running"]
        return counts

    def page(self, state: str = "all", page: int = 1, per_page: int = 50,
             query: str = "") -> dict[str, Any]:
        """One page of the list, filtered by state (:data:`FILTERS`) and by a text
        (in the id, shot, kind or edits), running jobs first, then the queue in
        claim order, then finished jobs newest first."""
        if state not in FILTERS:
            raise ValueError(f"state must be one of {', '.join(FILTERS)}")
        with self._lock:
            summaries = [k.summary for k in self._jobs.values()]
            version = self.version
        counts = self.counts_of(summaries)
        if state == "active":
            chosen = [s for s in summaries if s["state"] in ("queued", "running")]
        elif state != "all":
            chosen = [s for s in summaries if s["state"] == state]
        else:
            chosen = summaries
        q = query.strip().lower()
        if q:
            chosen = [s for s in chosen if q in s["id"].lower()
                      or q in s["label"].lower() or q in (s["kind"] or "")
                      or q in s["edits"].lower()]
        chosen.sort(key=self._sort_key)
        per_page = max(1, per_page)
        pages = max(1, math.ceil(len(chosen) / per_page))
        page = min(max(1, page), pages)
        start = (page - 1) * per_page
        return {"jobs": chosen[start:start + per_page], "total": len(chosen),
                "page": page, "pages": pages, "per_page": per_page,
                "state": state, "query": query, "counts": counts,
                "version": version, "now": self.clock(), "error": self.error}

    def changes_since(self, version: int) -> dict[str, Any]:
        """The jobs that changed after ``version`` and those that went; ``reset``
        True when the client is too far behind (it should fetch its page again)."""
        with self._lock:
            changed = [k.summary for k in self._jobs.values() if k.rev > version]
            removed = [j for v, j in self._removed if v > version]
            reset = bool(self._removed) and version < self._removed[0][0] - 1 and \
                len(self._removed) >= _REMOVED_KEPT
            counts = self.counts_of([k.summary for k in self._jobs.values()])
            current = self.version
        return {"version": current, "changed": changed, "removed": removed,
                "reset": reset, "counts": counts, "now": self.clock(),
                "error": self.error}


# --- one job's details -----------------------------------------------------------


def _file_url(job_id: str, *parts: object) -> str:
    return "/api/jobs/" + "/".join(quote(str(p), safe="") for p in (job_id, *parts))


def _metrics(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The scalar temporal metrics of ``Result/1`` with their definitions."""
    defs = metrics.get("definitions")
    defs = defs if isinstance(defs, dict) else {}
    out = []
    for name, value in metrics.items():
        v = _finite(value)
        if v is None:
            continue
        text = defs.get(name)
        out.append({"name": _clip(name, 64), "value": v,
                    "definition": _clip(text, 1000) if isinstance(text, str) else ""})
    return out


def _sheet(job_id: str, layout: Any) -> dict[str, Any] | None:
    """The sweep sheet's rows (``output/sweep.json``, docs/protocol.md "Drafts"):
    pixel rows per strength, so a click on the sheet picks that row."""
    if not isinstance(layout, dict) or not isinstance(layout.get("rows"), list):
        return None
    rows, row, height = [], 0, 0.0
    for entry in layout["rows"]:
        if not isinstance(entry, dict):
            return None
        y0, y1 = _finite(entry.get("y0")), _finite(entry.get("y1"))
        if y0 is None or y1 is None or y1 <= y0:
            return None
        height = max(height, y1)
        if "strengths" in entry:  # the header row of source faces has none
            rows.append({"row": row, "label": _clip(entry.get("label"), 200),
                         "y0": y0, "y1": y1})
            row += 1
    cols = layout.get("columns") if isinstance(layout.get("columns"), list) else []
    width = max([_finite(c.get("x1")) or 0.0 for c in cols if isinstance(c, dict)]
                or [0.0])
    return {"url": _file_url(job_id, "outputs", "sheet"), "rows": rows,
            "height": height, "width": width}


def job_detail(ex: Exchange, job_id: str, *,
               read_layout: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Everything the page shows about one job: its document's essentials, the
    result's files (as URLs of the panel, never paths), a filmstrip, metrics,
    stage timings, warnings, and a draft's strengths and sheet.

    Args:
        read_layout: reads the draft's ``sheet_layout`` output (JSON) by job id;
            None: no clickable sheet rows.

    Raises:
        JobNotFound: no such job.
    """
    status = job_status(ex, job_id)
    folder = status.folder
    job = _load(folder / JOB_FILE, Job) if folder is not None else None
    out: dict[str, Any] = summarise(ex, status, job)
    out["folder_path"] = str(folder) if folder is not None else ""
    out["actions"] = {
        "cancel": status.state in ("queued", "running"),
        "retry": status.state in ("failed", "cancelled") and job is not None,
        "archive": status.final,
        "pick": False,
    }
    if job is not None:
        out["job"] = {
            "kind": job.kind, "source": _clip(job.source.path, 1000),
            "range": [job.range.start, job.range.end],
            "rate": [job.range.rate.numerator, job.range.rate.denominator],
            "start_timecode": job.range.start_timecode, "edits": edits_text(job),
            "priority": job.priority, "created": job.created,
            "format": job.output.format,
        }
    result = status.result
    if result is None:
        return out
    outputs = [{"key": _clip(k, 200), "name": PurePosixPath(str(p)).name,
                "url": _file_url(job_id, "outputs", k)}
               for k, p in result.outputs.items() if isinstance(p, str)]
    frames = [{"frame": f.frame, "name": PurePosixPath(f.path).name,
               "edited": f.edited, "url": _file_url(job_id, "frames", i)}
              for i, f in enumerate(result.frames[:MAX_LISTED_FRAMES])]
    viewable = [i for i, f in enumerate(result.frames)
                if PurePosixPath(f.path).suffix.lower() in IMAGE_SUFFIXES]
    if len(viewable) > FILMSTRIP:  # spread over the shot, first and last included
        step = (len(viewable) - 1) / (FILMSTRIP - 1)
        viewable = [viewable[round(k * step)] for k in range(FILMSTRIP)]
    out["result"] = {
        "outputs": outputs,
        "frames": frames,
        "frame_count": len(result.frames),
        "filmstrip": [{"frame": result.frames[i].frame,
                       "url": _file_url(job_id, "frames", i)} for i in viewable],
        "metrics": _metrics(result.metrics),
        "stages": [s.to_dict() for s in result.stages],
        "warnings": [_clip(w, 2000) for w in result.warnings[:100]],
        "started": result.started, "finished": result.finished,
    }
    keys = set(result.outputs)
    out["links"] = {k: _file_url(job_id, "outputs", k)
                    for k in ("report", "preview", "movie", "contact_sheet", "sheet")
                    if k in keys}
    if result.variants:
        out["variants"] = [
            {"row": r, "label": _clip(v.label, 200),
             "strengths": [{"name": n, "strength": s} for n, s in v.strengths],
             "frames": [{"frame": f.frame,
                         "url": _file_url(job_id, "variants", r, "frames", i)}
                        for i, f in enumerate(v.frames[:FILMSTRIP])]}
            for r, v in enumerate(result.variants)]
        out["actions"]["pick"] = (status.state == "done" and job is not None
                                  and job.kind == "draft")
        if "sheet" in keys and read_layout is not None and "sheet_layout" in keys:
            try:
                out["sheet"] = _sheet(job_id, read_layout(job_id))
            except (OSError, FaceStitchError, ValueError, LookupError) as exc:
                log.info("panel: no sheet layout for %s: %s", job_id, exc)
        if "sheet" in keys and not out.get("sheet"):
            out["sheet"] = {"url": _file_url(job_id, "outputs", "sheet"),
                            "rows": [], "height": 0, "width": 0}
    return out


def read_json_limited(data: bytes) -> Any:
    """JSON from a job's file (a layout), refusing NaN and infinities."""
    def bad(token: str) -> Any:
        raise ValueError(f"{token} is not a number")
    return json.loads(data.decode("utf-8"), parse_constant=bad)
