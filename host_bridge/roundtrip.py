"""The Resolve round trip: send timeline shots as jobs, follow them, and put the
finished results back above their shots.

Sending (per shot): read the item (media path, source in/out with handles, rates,
timecodes); export the range by rendering when the media cannot be read directly;
list the faces at the first frame and let the editor choose when there are several;
track the chosen face on this CPU when the engine extra is installed (otherwise the
engine tracks); publish ``Job/1`` whose ``host`` map holds what re-import needs.

Importing: for each finished job of the current timeline, newest per shot, import
the RGBA sequence and place it at the exact record frame, replacing an earlier
result of the same shot. Failures become a message with what to do
(:mod:`host_bridge.advice`). A draft's frames (a few, spread over the shot) go on
as one-frame clips at their record frames: the strength the editor chose, or the
middle one (:func:`import_draft`).
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from fsexchange.client import (JobStatus, build_job, job_status, list_jobs, new_job_id,
                               submit_job, wait_job)
from fsexchange.documents import Edit, FrameRange, Job, OutputSpec, Source, Subject, \
    load_document
from fsexchange.errors import FaceStitchError, HostError
from fsexchange.exchange import JOB_FILE

from host_bridge.advice import explain_status
from host_bridge.faces import FacesAt, compute_track, list_faces
from host_bridge.resolve.connect import ResolveSession
from host_bridge.resolve.place import (Placement, ResultMedia, find_results,
                                       place_result, place_stills)
from host_bridge.resolve.render import render_range
from host_bridge.resolve.shot import Shot, read_shot

__all__ = ["SendOptions", "SentJob", "Cancelled", "FaceChooser", "output_name",
           "shot_job", "send_shot", "send_items", "import_job", "import_draft",
           "TimelineJob",
           "timeline_jobs", "ImportReport", "import_finished", "follow"]

log = logging.getLogger(__name__)


class Cancelled(HostError):
    """The editor cancelled a choice; nothing was sent."""


#: (shot, faces found) -> chosen face index, or None to cancel the shot
FaceChooser = Callable[[Shot, FacesAt], "int | None"]


@dataclass(frozen=True)
class SendOptions:
    """What to ask of the engine for each shot."""

    kind: str = "stitch"  # "stitch" | "align-preview" | "draft"
    edits: tuple[Edit, ...] = ()
    # source frames each side, clamped to the media (docs/hosts.md "Round-trip
    # conventions")
    handles: int = 8
    options: Mapping[str, Any] = field(default_factory=dict)  # Job.options
    output_format: str = "png16"  # 16-bit PNG, straight alpha: what Resolve imports
    track_locally: bool = True  # dlib on this CPU when the engine extra is here
    subject: Subject | None = None  # set: no face listing, no prompt
    job_prefix: str = "resolve"


@dataclass(frozen=True)
class SentJob:
    job_id: str
    shot: Shot
    subject: Subject
    faces: int | None  # faces found at the first frame; None: not detected here
    tracked_locally: bool
    warnings: tuple[str, ...] = ()

    def describe(self) -> str:
        out = f"sent {self.shot.describe()} as job {self.job_id}"
        if self.faces and self.faces > 1:
            out += f" ({self.faces} faces, subject chosen)"
        return out


def output_name(shot: Shot) -> str:
    """A result file prefix from the clip name: ``A001_C002_fs`` (OutputSpec rules)."""
    stem = Path(shot.item_name).stem if "." in shot.item_name else shot.item_name
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._-")[:90] or "shot"
    name = re.sub(r"\.{2,}", ".", name)
    if not name[0].isalnum():
        name = "s" + name
    return f"{name}_fs"


def shot_job(shot: Shot, job_id: str, opts: SendOptions, *, source: Source,
             subject: Subject, product: str = "",
             version: tuple[int, ...] = ()) -> Job:
    """The ``Job/1`` for a shot. Output files are numbered by source timecode frame
    (``start_number`` None), which import reads back from ``Result/1``."""
    # a rendered shot's "media" is its record range: frames 0..N-1 at the timeline
    # rate from the record timecode (read_shot sets it up so)
    rng = FrameRange(shot.range_start, shot.range_end, shot.media_rate,
                     shot.media_start_timecode)
    options = dict(opts.options)
    colour = dict(options.get("colour") or {})
    if shot.colour_source and not colour.get("source"):
        # the clip's Input Color Space, unless the editor chose one for the send
        options["colour"] = dict(colour, source=shot.colour_source)
    return build_job(job_id=job_id, source=source, range=rng, kind=opts.kind,
                     subject=subject, edits=opts.edits, options=options,
                     output=OutputSpec(format=opts.output_format,
                                       name=output_name(shot), start_number=None),
                     host=shot.host_dict(product, version))


def _choose_subject(shot: Shot, media: Path | str, opts: SendOptions,
                    choose_face: FaceChooser | None, warnings: list[str]
                    ) -> tuple[Subject, int | None]:
    if opts.subject is not None:
        return opts.subject, None
    found = list_faces(media, shot.source_in, rate=shot.media_rate)
    if found is None:
        return Subject(), None  # the engine chooses (largest face)
    if not found.faces:
        warnings.append(f"no face found in the first frames of '{shot.item_name}'; the "
                        "engine will look through the whole shot")
        return Subject(), 0
    if len(found.faces) == 1:
        return found.faces[0].subject(found.frame), 1
    if choose_face is None:
        warnings.append(f"{len(found.faces)} faces in '{shot.item_name}': the largest "
                        "was chosen")
        index = 0
    else:
        index = choose_face(shot, found)
        if index is None:
            raise Cancelled(f"'{shot.item_name}' was not sent (no face chosen)")
        if not 0 <= index < len(found.faces):
            raise HostError(f"there is no face {index + 1} in '{shot.item_name}'")
    return found.faces[index].subject(found.frame), len(found.faces)


def send_shot(session: ResolveSession, exchange: str | Path, item: Any,
              opts: SendOptions = SendOptions(), *,
              choose_face: FaceChooser | None = None,
              work_dir: str | Path | None = None) -> SentJob:
    """Send one timeline item as a job; returns once it is published (not done).

    Raises:
        MediaMissing: the clip is offline. HostError: Resolve refused something (a
        broken item, a failed export render). Cancelled: the editor cancelled.
        NoFaceFound, SubjectInvalid: local tracking found no usable face.
    """
    shot = read_shot(session, item, handles=opts.handles)
    warnings = list(shot.warnings)
    job_id = new_job_id(opts.job_prefix)
    with tempfile.TemporaryDirectory(prefix="facestitch-send-", dir=work_dir) as tmp:
        attachments: dict[str, Path | bytes] = {}
        if shot.export == "render":
            rendered = render_range(session, shot, Path(tmp) / "render")
            warnings += rendered.warnings
            media: Path | str = rendered.folder
            source = Source("media/render", "sequence")
            attachments["media/render"] = rendered.folder
        else:
            media = str(shot.media_path)
            source = Source(str(shot.media_path), shot.media_kind)
        subject, faces = _choose_subject(shot, media, opts, choose_face, warnings)
        track = None
        if opts.track_locally and faces:
            track = compute_track(media, shot.range_start, shot.range_end, subject,
                                  rate=shot.media_rate)
        if track is not None:
            attachments["facetrack.msgpack"] = track.to_bytes()
            subject = replace(subject, track="facetrack.msgpack")
        job = shot_job(shot, job_id, opts, source=source, subject=subject,
                       product=session.edition.product,
                       version=session.edition.version)
        submit_job(exchange, job, attachments=attachments)
    sent = SentJob(job_id, shot, subject, faces, track is not None, tuple(warnings))
    log.info("%s", sent.describe())
    return sent


def send_items(session: ResolveSession, exchange: str | Path, items: Sequence[Any],
               opts: SendOptions = SendOptions(), *,
               choose_face: FaceChooser | None = None
               ) -> tuple[list[SentJob], list[str]]:
    """Send several items; one failing shot does not stop the others.
    Returns (sent jobs, one message per shot that was not sent)."""
    sent, problems = [], []
    for item in items:
        name = item.GetName() or "a clip"
        try:
            sent.append(send_shot(session, exchange, item, opts,
                                  choose_face=choose_face))
        except Cancelled as exc:
            problems.append(exc.message)
        except FaceStitchError as exc:
            problems.append(f"'{name}' was not sent: {exc.message}")
    return sent, problems


# ---- following and importing -----------------------------------------------------


def _load_job(status: JobStatus) -> Job:
    if status.folder is None:
        raise HostError(f"job {status.id} has no folder")
    return load_document(status.folder / JOB_FILE, Job)


def follow(exchange: str | Path, job_id: str, *,
           on_progress: Callable[[JobStatus], None] | None = None,
           timeout: float | None = None, poll: float = 1.0) -> JobStatus:
    """Wait for a job to finish; a failed or cancelled job raises HostError with the
    engine's message and what to do."""
    status = wait_job(exchange, job_id, timeout=timeout, poll=poll,
                      on_progress=on_progress)
    if status.state != "done":
        raise HostError(explain_status(status))
    return status


def import_job(session: ResolveSession, exchange: str | Path, job_id: str, *,
               opacity: float = 100.0) -> Placement:
    """Place one finished job's result above its shot (replacing an earlier one).

    Raises:
        HostError: the job is not done (the message says why and what to do), was
            not sent from Resolve, or Resolve refused the import or placement.
    """
    status = job_status(exchange, job_id)
    job = _load_job(status)
    shot = str(job.host.get("item_name", ""))
    if status.state != "done":
        raise HostError(explain_status(status, shot=shot))
    if job.host.get("app") != "resolve":
        raise HostError(f"job {job_id} was not sent from Resolve; relink its result "
                        "with 'facestitch otio' instead")
    if status.result is None or status.folder is None:
        raise HostError(f"job {job_id} is done but its result cannot be read")
    media = ResultMedia.from_result(status.folder, status.result)
    return place_result(session, job.host, media, job_id, opacity=opacity)


def import_draft(session: ResolveSession, exchange: str | Path, job_id: str, *,
                 row: int | None = None, opacity: float = 100.0) -> list[Placement]:
    """Place one strength of a finished draft above its shot: its frames as
    one-frame clips at their record frames, replacing an earlier result of the
    shot.

    Args:
        row: index into ``Result/1.variants`` (the sweep's rows); None: the middle
            row (the result's own ``frames``).

    Raises:
        HostError: as :func:`import_job`, or no such row.
    """
    status = job_status(exchange, job_id)
    job = _load_job(status)
    if status.state != "done":
        raise HostError(explain_status(status, shot=str(job.host.get("item_name", ""))))
    if job.host.get("app") != "resolve":
        raise HostError(f"job {job_id} was not sent from Resolve")
    result = status.result
    if result is None or status.folder is None:
        raise HostError(f"job {job_id} is done but its result cannot be read")
    variants = result.variants
    if row is None:
        row = len(variants) // 2
    if variants and not 0 <= row < len(variants):
        raise HostError(f"draft {job_id} has {len(variants)} strengths, not {row + 1}")
    frames = variants[row].frames if variants else result.frames
    label = variants[row].label if variants else ""
    return place_stills(session, job.host, status.folder, job_id, frames,
                        opacity=opacity, label=label)


@dataclass(frozen=True)
class TimelineJob:
    status: JobStatus
    job: Job
    placed: bool  # its result is on the timeline now

    @property
    def shot(self) -> str:
        return str(self.job.host.get("item_name", "?"))

    def describe(self) -> str:
        st = self.status
        state = st.state
        if state == "running":  # progress as the engine reports it
            state += f" {int(round(st.progress * 100))}%"
            if st.stage:
                state += f" ({st.stage}: {st.message})"
        elif state == "failed" and st.error:
            state += f": {st.error.get('message', '')}"
        placed = ", on the timeline" if self.placed else ""
        return f"{self.job.id}: '{self.shot}' ({self.job.kind}) {state}{placed}"


def timeline_jobs(session: ResolveSession, exchange: str | Path) -> list[TimelineJob]:
    """Jobs sent from the current timeline, oldest first."""
    timeline_id = session.timeline.GetUniqueId()
    placed = {tag.get("job") for _, _, tag in find_results(session.timeline)}
    out = []
    for status in list_jobs(exchange):
        try:
            job = _load_job(status)
        except (OSError, FaceStitchError):
            continue  # moved while we looked, or not a job we can read
        if job.host.get("app") == "resolve" and \
                job.host.get("timeline_id") == timeline_id:
            out.append(TimelineJob(status, job, job.id in placed))
    return sorted(out, key=lambda tj: (tj.job.created, tj.job.id))


@dataclass
class ImportReport:
    placed: list[Placement] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # readable, with what to do
    pending: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)  # on the timeline already

    def summary(self) -> str:
        lines = [p.describe() for p in self.placed]
        lines += [w for p in self.placed for w in p.warnings]
        lines += self.failed
        lines += [f"still working: {p}" for p in self.pending]
        if self.already:
            lines.append(f"{len(self.already)} result(s) already on the timeline")
        return "\n".join(lines) or "No FaceStitch jobs for this timeline."


def import_finished(session: ResolveSession, exchange: str | Path, *,
                    opacity: float = 100.0, again: bool = False) -> ImportReport:
    """Import every finished job of the current timeline: per shot only the newest
    finished job (a re-run replaces the previous result). Failed jobs are reported
    with advice; ``again`` re-places results that are already on the timeline."""
    report = ImportReport()
    newest: dict[str, TimelineJob] = {}
    for tj in timeline_jobs(session, exchange):
        if tj.status.state in ("queued", "running"):
            report.pending.append(tj.describe())
        elif tj.status.state in ("done", "failed"):
            newest[str(tj.job.host.get("item_id"))] = tj  # sorted: the last one wins
    for tj in newest.values():
        if tj.status.state == "failed":
            report.failed.append(explain_status(tj.status, shot=tj.shot))
        elif tj.placed and not again:
            report.already.append(tj.job.id)
        else:
            try:
                if tj.job.kind == "draft":  # the middle strength, frame by frame
                    report.placed += import_draft(session, exchange, tj.job.id,
                                                  opacity=opacity)
                else:
                    report.placed.append(import_job(session, exchange, tj.job.id,
                                                    opacity=opacity))
            except FaceStitchError as exc:
                report.failed.append(f"job {tj.job.id} for '{tj.shot}': {exc.message}")
    return report
