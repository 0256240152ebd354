"""Face tracking: detection + 68 landmarks per frame, identities followed across
frames, one chosen subject written as ``FaceTrack/1``.

Detections and landmarks come from :mod:`engine.faces` (``track.backend``: dlib by
default, as STIT and FFHQ; face-alignment as STIT's ``--use_fa``; ``auto`` uses
face-alignment when its weights are present, else dlib).

Unlike the reference (first detection wins, a frame without a face aborts the run),
every detection joins an identity by box overlap and centre distance; the subject is
chosen once (``Subject.index``: N-th largest at the first frame with faces; a point
or a box at a given frame; default ``track.default_subject``: the largest, or the
detector's first face as STIT takes it) and followed. Frames where it is
missing are marked ``present=False``; gaps of at most ``TrackConfig.max_gap`` frames
between two sightings are interpolated (``interpolated=True``); longer gaps pass
through untouched. Only a range with no face at all fails (``face.not_found``).

The ``track`` stage writes ``stages/track/facetrack.msgpack``.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from fsexchange.documents import FaceTrack, Subject, TrackFrame, load_document
from fsexchange.errors import DocumentFieldError, NoFaceFound, SubjectInvalid
from fsexchange.fsutil import atomic_write_bytes
from fsexchange.paths import confine

from fsexchange.options import TrackConfig

from engine.faces import Detection, LandmarkBackend, iou, make_backend
from engine.stages.contract import Stage, StageContext

__all__ = [
    "Identity",
    "follow_identities",
    "choose_subject",
    "subject_track",
    "fill_gaps",
    "track_media",
    "TrackStage",
]

log = logging.getLogger(__name__)

# --- identities -------------------------------------------------------------------


@dataclass
class Identity:
    """One face followed across frames: ``detections`` keyed by media index."""

    id: int
    detections: dict[int, Detection] = field(default_factory=dict)

    @property
    def last_frame(self) -> int:
        return max(self.detections)

    @property
    def last(self) -> Detection:
        return self.detections[self.last_frame]


def _contains(box: Sequence[float], x: float, y: float) -> bool:
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


#: Largest centre jump (in face sizes) accepted after a long gap.
MAX_REACQUIRE_JUMP = 2.0


def _associate(identities: list[Identity], dets: list[Detection], frame: int,
               cfg: TrackConfig) -> list[Identity]:
    """Attach ``dets`` to identities (greedy by centre distance; the allowed jump
    grows with the frames since the identity was last seen), start new ones for the
    rest. Returns the identities that got a detection."""
    pairs = []
    for ident in identities:
        last = ident.last
        gap = frame - ident.last_frame
        limit = min(max(cfg.identity_max_jump * gap, cfg.identity_max_jump),
                    max(MAX_REACQUIRE_JUMP, cfg.identity_max_jump))
        for j, det in enumerate(dets):
            ratio = det.size / last.size
            if not 0.5 <= ratio <= 2.0:
                continue
            dist = float(np.linalg.norm(det.centre - last.centre)) / last.size
            if dist <= limit or iou(det.box, last.box) >= 0.5:
                pairs.append((dist, ident.id, j))
    pairs.sort()
    used_ids: set[int] = set()
    used_dets: set[int] = set()
    by_id = {ident.id: ident for ident in identities}
    touched = []
    for _, ident_id, j in pairs:
        if ident_id in used_ids or j in used_dets:
            continue
        by_id[ident_id].detections[frame] = dets[j]
        used_ids.add(ident_id)
        used_dets.add(j)
        touched.append(by_id[ident_id])
    for j, det in enumerate(dets):
        if j not in used_dets:
            ident = Identity(len(identities), {frame: det})
            identities.append(ident)
            touched.append(ident)
    return touched


def follow_identities(
    frames: Iterable[tuple[int, np.ndarray]],
    backend: LandmarkBackend,
    cfg: TrackConfig = TrackConfig(),
    *,
    on_frame: Callable[[int], None] | None = None,
    detected: Mapping[int, list[Detection]] | None = None,
) -> list[Identity]:
    """Detect faces in every frame and link them into identities.

    Args:
        frames: ``(media index, RGB uint8)`` in increasing order.
        backend: a :class:`LandmarkBackend`.
        cfg: ``identity_max_jump`` bounds the per-frame centre jump.
        on_frame: called after each frame with its index (progress, abort).
        detected: detections of some frames made earlier (by shards); those
            frames are not detected again (their RGB may be None).
    """
    identities: list[Identity] = []
    detected = detected or {}
    for index, rgb in frames:
        dets = detected[index] if index in detected else backend.detect(rgb)
        _associate(identities, dets, index, cfg)
        if on_frame is not None:
            on_frame(index)
    return identities


def choose_subject(identities: Sequence[Identity], subject: Subject = Subject(),
                   default: str = "largest") -> tuple[Identity, dict[str, Any]]:
    """The identity the job asks for, and facts about the choice.

    ``subject.index``: N-th largest (0 = largest) among the faces at the first frame
    with any face. ``point`` (frame, x, y): the face whose box holds the point (the
    nearest centre if several). ``box`` (frame, x0, y0, x1, y1): the face overlapping
    it most. None of them: per ``default`` (``TrackConfig.default_subject``), the
    largest at the first frame with faces, or ``"first"``: the detector's first face
    there (STIT's choice; identities are numbered in detection order, and every
    identity seen at the first frame with faces starts there).

    Raises:
        NoFaceFound: no face in any frame.
        SubjectInvalid: the requested face does not exist.
        DocumentFieldError: ``default`` is neither ``largest`` nor ``first``.
    """
    if default not in ("largest", "first"):
        raise DocumentFieldError("options.track.default_subject must be largest or "
                                 f"first, got {default!r}",
                                 field="options.track.default_subject")
    if not identities:
        raise NoFaceFound("no face was found in any frame of the range; check the "
                          "range, or the shot has no detectable frontal face")
    first = min(min(i.detections) for i in identities)
    at_first = sorted((i for i in identities if first in i.detections),
                      key=lambda i: (-i.detections[first].area,
                                     i.detections[first].box[0]))
    facts: dict[str, Any] = {"first_face_frame": first, "faces_at_first": len(at_first),
                             "identities": len(identities)}
    if subject.point is not None:
        frame, px, py = int(subject.point[0]), subject.point[1], subject.point[2]
        here = [i for i in identities if frame in i.detections]
        inside = [i for i in here if _contains(i.detections[frame].box, px, py)]
        if not inside:
            raise SubjectInvalid(
                f"no face contains the point ({px:g}, {py:g}) at frame {frame} "
                f"({len(here)} face(s) found there)", frame=frame,
                field="subject.point")
        chosen = min(inside, key=lambda i: float(np.linalg.norm(
            i.detections[frame].centre - np.array([px, py]))))
        facts["point"] = list(subject.point)
    elif subject.box is not None:
        frame, box = int(subject.box[0]), subject.box[1:]
        here = [(i, iou(i.detections[frame].box, box)) for i in identities
                if frame in i.detections]
        best = max(here, key=lambda t: t[1], default=(None, 0.0))
        if best[0] is None or best[1] < 0.1:
            raise SubjectInvalid(f"no face overlaps the box {list(box)} at frame "
                                 f"{frame} ({len(here)} face(s) found there)",
                                 frame=frame, field="subject.box")
        chosen = best[0]
        facts["box"] = list(subject.box)
    elif subject.index is None and default == "first":
        chosen = min(at_first, key=lambda i: i.id)
        facts["index"] = at_first.index(chosen)
        facts["default_subject"] = "first"
    else:
        n = subject.index or 0
        if n >= len(at_first):
            raise SubjectInvalid(
                f"face {n} was asked for, but only {len(at_first)} face(s) are found "
                f"at frame {first}, the first frame with faces (faces count from 0, "
                "largest first)", frame=first, field="subject.index")
        chosen = at_first[n]
        facts["index"] = n
    facts["identity"] = chosen.id
    return chosen, facts


def subject_track(identity: Identity, start: int, end: int) -> list[TrackFrame]:
    """One :class:`TrackFrame` per frame of ``start:end`` (no gap filling)."""
    out = []
    for f in range(start, end):
        det = identity.detections.get(f)
        if det is None:
            out.append(TrackFrame(f, False))
        else:
            out.append(TrackFrame(
                f, True, tuple(float(v) for v in det.box), float(det.score),
                tuple((float(x), float(y)) for x, y in det.landmarks)))
    return out


def fill_gaps(frames: Sequence[TrackFrame], max_gap: int) -> list[TrackFrame]:
    """Interpolate landmarks and boxes linearly across runs of at most ``max_gap``
    absent frames that lie between two present frames; others stay absent."""
    out = list(frames)
    present = [i for i, fr in enumerate(out) if fr.present]
    for a, b in zip(present, present[1:]):
        gap = b - a - 1
        if gap == 0 or gap > max_gap:
            continue
        fa, fb = out[a], out[b]
        la, lb = np.asarray(fa.landmarks), np.asarray(fb.landmarks)
        ba = np.asarray(fa.box if fa.box else la.min(0).tolist() + la.max(0).tolist())
        bb = np.asarray(fb.box if fb.box else lb.min(0).tolist() + lb.max(0).tolist())
        for k in range(1, gap + 1):
            t = k / (gap + 1)
            lm = (1 - t) * la + t * lb
            box = (1 - t) * ba + t * bb
            out[a + k] = TrackFrame(
                out[a + k].frame, True, tuple(float(v) for v in box), None,
                tuple((float(x), float(y)) for x, y in lm), interpolated=True)
    return out


def track_media(
    path: str | os.PathLike[str],
    start: int = 0,
    end: int | None = None,
    *,
    cfg: TrackConfig = TrackConfig(),
    subject: Subject = Subject(),
    backend: LandmarkBackend | None = None,
    device: str = "cpu",
    rate: Fraction | None = None,
    progress: Callable[[float, str], None] | None = None,
    abort: Callable[[], None] | None = None,
    colour: Any = None,
    only: Sequence[int] | None = None,
    detected: Mapping[int, list[Detection]] | None = None,
) -> FaceTrack:
    """Track the chosen face over ``start:end`` of a movie or sequence.

    Args:
        detected: detections made earlier by shards (:func:`follow_identities`).
        colour: an :class:`engine.media.colour.ColourPipeline`: detect on the
            networks' rendering of each frame (log and HDR footage), not its code
            values.
        only: track just these frames (increasing, inside the range; drafts):
            each is read by seeking, and the track has one entry per frame of
            ``only``, without gap filling.

    Raises:
        NoFaceFound: no face anywhere in the range.
        SubjectInvalid: the requested subject does not exist.
        ModelMissing: the backend's weights are not installed.
    """
    from engine.media.video import read_frames, read_frames_at, to_depth
    from fsexchange.media import probe

    info = probe(path, rate)
    end = info.frame_count if end is None else end
    wanted = range(start, end) if only is None else list(only)
    if detected is not None and all(f in detected for f in wanted):
        frames: Iterable[tuple[int, Any]] = ((f, None) for f in wanted)
    else:
        frames = read_frames(path, start, end)  # validates the range first
        if only is not None:
            frames = read_frames_at(path, only)
        if colour is not None and not colour.identity:
            coded = (read_frames(path, start, end, depth=32) if only is None
                     else read_frames_at(path, only, depth=32))
            frames = ((i, to_depth(colour.to_network(f), 8)) for i, f in coded)
    backend = backend or make_backend(cfg, device)
    n = end - start if only is None else max(len(only), 1)
    seen = [0]

    def on_frame(index: int) -> None:
        seen[0] += 1
        if abort is not None:
            abort()
        if progress is not None:
            progress(seen[0] / n, f"tracked frame {index}")

    identities = follow_identities(frames, backend, cfg, on_frame=on_frame,
                                   detected=detected)
    chosen, facts = choose_subject(identities, subject, cfg.default_subject)
    if only is None:
        track = fill_gaps(subject_track(chosen, start, end), cfg.max_gap)
    else:
        track = [subject_track(chosen, f, f + 1)[0] for f in only]
    return FaceTrack(rate=rate or info.rate, image_size=(info.width, info.height),
                     frames=tuple(track), backend=backend.name, subject=facts)


def detect_frames(path: str | os.PathLike[str], start: int, end: int,
                  backend: LandmarkBackend, *,
                  progress: Callable[[float, str], None] | None = None,
                  abort: Callable[[], None] | None = None,
                  colour: Any = None) -> bytes:
    """Faces in frames ``start:end`` (a shard of the track stage), as msgpack:
    ``{frame: [[box, score, landmarks], ...]}`` with every float as it was
    detected (float64 round trips exactly)."""
    import msgpack

    from engine.media.video import read_frames, to_depth

    frames: Iterable[tuple[int, np.ndarray]] = read_frames(path, start, end)
    if colour is not None and not colour.identity:  # as track_media sees them
        frames = ((i, to_depth(colour.to_network(f), 8))
                  for i, f in read_frames(path, start, end, depth=32))
    out = {}
    for index, rgb in frames:
        if abort is not None:
            abort()
        out[index] = [[list(map(float, d.box)), float(d.score),
                       np.asarray(d.landmarks, np.float64).tolist()]
                      for d in backend.detect(rgb)]
        if progress is not None:
            progress((index - start + 1) / (end - start), f"detected frame {index}")
    return msgpack.packb(out)


def load_detections(data: bytes) -> dict[int, list[Detection]]:
    import msgpack

    return {int(f): [Detection(tuple(box), score, np.asarray(lm, np.float64))
                     for box, score, lm in dets]
            for f, dets in msgpack.unpackb(data, strict_map_key=False).items()}


def _describe_gaps(frames: Sequence[TrackFrame]) -> str:
    runs: list[tuple[int, int]] = []
    for fr in frames:
        if not fr.present:
            if runs and runs[-1][1] == fr.frame - 1:
                runs[-1] = (runs[-1][0], fr.frame)
            else:
                runs.append((fr.frame, fr.frame))
    shown = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:6])
    return shown + (" ..." if len(runs) > 6 else "")


class TrackStage(Stage):
    """Writes ``stages/track/facetrack.msgpack`` (``FaceTrack/1``)."""

    name = "track"
    #: shards detect faces in blocks of frames; linking them into identities
    #: and choosing the subject is the final unit's (engine/stages/contract.py)
    split = "frames"

    def run(self, ctx: StageContext) -> dict[str, Any]:
        job = ctx.job
        ctx.stage_dir(self.name)
        out = ctx.files.track.facetrack_path
        files = ctx.files.track
        colour = None
        if not job.subject.track:
            from engine.media.colour import pipeline_for
            from fsexchange.media import probe

            colour, _ = pipeline_for(ctx.config.colour,
                                     probe(ctx.source_path(), job.range.rate))
        if ctx.shard is not None:
            block = ctx.shard.items(job.range.count)
            if job.subject.track or not block:  # a given track: nothing to detect
                return {"frames": 0}
            first = job.range.start + block.start
            files.parts_dir.mkdir(exist_ok=True)
            atomic_write_bytes(files.part(first), detect_frames(
                ctx.source_path(), first, job.range.start + block.stop,
                make_backend(ctx.config.track, ctx.device), progress=ctx.report,
                abort=ctx.check_abort, colour=colour))
            return {"frames": len(block)}
        detected: dict[int, list[Detection]] = {}
        for part in sorted(files.parts_dir.glob("*.msgpack")):
            detected.update(load_detections(part.read_bytes()))
        if job.subject.track:
            given = confine(job.subject.track, ctx.job_dir, (), field="subject.track")
            track = load_document(given, FaceTrack)
            wanted = range(job.range.start, job.range.end)
            by_frame = {fr.frame: fr for fr in track.frames}
            frames = [by_frame.get(f, TrackFrame(f, False)) for f in wanted]
            if not any(fr.present for fr in frames):
                raise NoFaceFound(f"the face track {given.name} has no face in frames "
                                  f"{job.range.start}..{job.range.end - 1}")
            track = FaceTrack(rate=track.rate, image_size=track.image_size,
                              frames=tuple(fill_gaps(frames, ctx.config.track.max_gap)),
                              backend=track.backend or "given",
                              subject=dict(track.subject, source=given.name))
        else:
            track = track_media(
                ctx.source_path(), job.range.start, job.range.end,
                cfg=ctx.config.track, subject=job.subject, device=ctx.device,
                rate=job.range.rate, progress=ctx.report,
                abort=ctx.check_abort, colour=colour, detected=detected)
        atomic_write_bytes(out, track.to_bytes())
        shutil.rmtree(files.parts_dir, ignore_errors=True)
        missing = [fr for fr in track.frames if not fr.present]
        interpolated = sum(1 for fr in track.frames if fr.interpolated)
        if missing:
            ctx.warn(f"The face is missing in {len(missing)} of {len(track.frames)} "
                     f"frames ({_describe_gaps(track.frames)}); those frames pass "
                     "through untouched (alpha 0).")
        ctx.info["track_backend"] = track.backend
        return {"frames": len(track.frames),
                "present": len(track.frames) - len(missing),
                "interpolated": interpolated, "backend": track.backend}
