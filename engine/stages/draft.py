"""Drafts: the existing stages, run on a few frames, with networks kept loaded.

A ``draft`` job (docs/pipeline.md "Drafts") answers "is ``age=-8`` too much?" in
seconds, before the long job: track and align K frames spread over the range
(``options.draft.count``, default 5, first and last included) or the frames
chosen with ``--frames`` (``options.draft.frames``), invert them with e4e, and
hand them to :class:`engine.stages.sweep.SweepStage`, which applies the edit at
every strength of the sweep without tuning the generator and pastes the results
back naively. ``options.draft.pti_steps`` (``--draft-pti STEPS``) adds a short PTI
on just those frames.

The classes here are the full job's stages with a draft's options, writing the
same files (so every later stage reads them through the same accessors):

- :class:`DraftTrackStage` (``track``): detects faces on the draft frames only
  (plus the frame a ``--face-point``/``--face-box`` names), each reached by
  seeking; the track lists just the draft frames, without gap filling. A track
  the bridge computed (``subject.track``) is cut down to them.
- :class:`DraftAlignStage` (``align``): aligns the frames of that track. They are
  not consecutive, so the temporal smoothing has nothing to smooth: the draft's
  crops are the per-frame FFHQ crops, which differ slightly from the full job's
  smoothed ones. Networks (the generator's resolution, the face parser) come from
  the worker's cache.
- :class:`DraftInvertStage` (``invert``): e4e with the cached networks; refuses a
  swept edit that is not installed before any rendering.
- :class:`DraftPTIStage` (``pti``): only with ``options.draft.pti_steps`` > 0,
  PTI over the draft frames for that many passes.

Networks come from :func:`engine.models.modelset.cached_models`: a running engine
loads them for its first draft and reuses them for the next (until a model file
changes).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from fsexchange.documents import Edit, FaceTrack, TrackFrame, load_document
from fsexchange.errors import NoFaceFound, RangeOutOfBounds
from fsexchange.fsutil import atomic_write_bytes
from fsexchange.grammar import SweepAxis, parse_sweep
from fsexchange.options import DraftConfig, PipelineConfig
from fsexchange.paths import confine

from engine.stages.align import AlignStage, parser_weights, resolve_resolution
from engine.stages.contract import StageContext
from engine.stages.edit import check_edits
from engine.stages.invert import InvertStage
from engine.stages.pti import PTIStage
from engine.stages.track import TrackStage, track_media

__all__ = ["draft_frames", "check_sweep_installed", "DraftTrackStage",
           "DraftAlignStage", "DraftInvertStage", "DraftPTIStage"]

log = logging.getLogger(__name__)


def draft_frames(start: int, end: int, cfg: DraftConfig) -> list[int]:
    """The source frames a draft renders, increasing: ``cfg.frames`` when given,
    else ``cfg.count`` frames evenly spread over ``start:end`` (first and last
    included; fewer when the range is shorter).

    Raises:
        RangeOutOfBounds: a chosen frame lies outside the range.

    >>> draft_frames(0, 100, DraftConfig())
    [0, 25, 50, 74, 99]
    """
    if cfg.frames:
        outside = [f for f in cfg.frames if not start <= f < end]
        if outside:
            raise RangeOutOfBounds(
                f"draft frames {', '.join(map(str, outside))} lie outside the job's "
                f"range {start}:{end} (END exclusive)", field="options.draft.frames")
        return sorted(set(cfg.frames))
    k = max(1, min(cfg.count, end - start))
    return sorted(set(np.linspace(start, end - 1, k).round().astype(int).tolist()))


def check_sweep_installed(axes: Sequence[SweepAxis],
                          installed: Mapping[str, Any]) -> None:
    """Refuse a swept edit that is not installed (``edit.unknown``, naming the
    installed ones), like :func:`engine.stages.edit.check_edits` for fixed ones."""
    check_edits([Edit(a.name, a.start, space=installed[a.name].space
                      if a.name in installed else "w") for a in axes], installed)


def _subject_frame(ctx: StageContext) -> int | None:
    """The frame a point or box subject is given at (it must be tracked too)."""
    s = ctx.job.subject
    given = s.point if s.point is not None else s.box
    if given is None:
        return None
    frame = int(given[0])
    return frame if ctx.job.range.start <= frame < ctx.job.range.end else None


def _draft_context(ctx: StageContext) -> StageContext:
    """The stage's context, taking networks from the worker's cache (shares the
    job's warnings and info)."""
    return dataclasses.replace(ctx, reuse_models=True)


def _landmark_backend(ctx: StageContext) -> Any:
    """The face detector and landmarker, kept by the worker between drafts (dlib's
    detector and 68-point model take a second or two to load)."""
    from engine.faces import (PREDICTOR_FILE, dlib_model_path, fan_weights_path,
                              make_backend)
    from engine.models.cache import cached, files_fingerprint
    from fsexchange.errors import ModelMissing

    def files() -> tuple:
        paths = [fan_weights_path()]
        try:
            paths.append(dlib_model_path(PREDICTOR_FILE))
        except ModelMissing:
            pass
        return files_fingerprint(paths)

    return cached(("faces", ctx.config.track, ctx.device), files,
                  lambda: make_backend(ctx.config.track, ctx.device))


class DraftTrackStage(TrackStage):
    """The track of the draft frames only (``stages/track/facetrack.msgpack``)."""

    split = "one"  # a few frames: no shards (engine/stages/contract.py)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        job = ctx.job
        frames = draft_frames(job.range.start, job.range.end, ctx.config.draft)
        ctx.stage_dir(self.name)
        if job.subject.track:
            given = confine(job.subject.track, ctx.job_dir, (), field="subject.track")
            full = load_document(given, FaceTrack)
            by_frame = {fr.frame: fr for fr in full.frames}
            track = FaceTrack(rate=full.rate, image_size=full.image_size,
                              frames=tuple(by_frame.get(f, TrackFrame(f, False))
                                           for f in frames),
                              backend=full.backend or "given",
                              subject=dict(full.subject, source=given.name))
        else:
            extra = _subject_frame(ctx)
            wanted = sorted(set(frames) | ({extra} if extra is not None else set()))
            track = track_media(
                ctx.source_path(), job.range.start, job.range.end,
                cfg=ctx.config.track, subject=job.subject, device=ctx.device,
                rate=job.range.rate, progress=ctx.report, abort=ctx.check_abort,
                only=wanted, backend=_landmark_backend(ctx))
            keep = set(frames)
            track = dataclasses.replace(track, frames=tuple(
                fr for fr in track.frames if fr.frame in keep))
        present = [fr.frame for fr in track.frames if fr.present]
        if not present:
            raise NoFaceFound(f"no face in the draft frames "
                              f"{', '.join(map(str, frames))}; choose others with "
                              "--frames", frame=frames[0])
        atomic_write_bytes(ctx.files.track.facetrack_path, track.to_bytes())
        missing = [f for f in frames if f not in present]
        if missing:
            ctx.warn(f"The face was not found in draft frame(s) "
                     f"{', '.join(map(str, missing))}; they pass through untouched.")
        ctx.info["track_backend"] = track.backend
        ctx.info["draft_frames"] = frames
        return {"frames": len(frames), "present": len(present),
                "backend": track.backend}


class DraftAlignStage(AlignStage):
    """Aligns the draft frames, reading only those, with cached networks."""

    split = "one"  # a few frames: no shards (engine/stages/contract.py)

    def resolution(self, ctx: StageContext) -> int:
        size = ctx.config.align.resolution
        if not size:
            size = int(_draft_context(ctx).load_models().generator.img_resolution)
        return resolve_resolution(size, ctx.config.profile)

    def mask_builder(self, ctx: StageContext, size: int) -> Any:
        from engine.models.cache import cached, files_fingerprint

        path = parser_weights()
        key = ("mask", ctx.config.mask, size, ctx.device, str(path))
        return cached(key, lambda: files_fingerprint([path] if path else []),
                      lambda: AlignStage.mask_builder(self, ctx, size))

    def source_frames(self, ctx: StageContext, frames: list[int], depth: int = 8
                      ) -> Iterator[tuple[int, np.ndarray]]:
        from engine.media.video import read_frames_at

        return read_frames_at(ctx.source_path(), frames, depth=depth)


class DraftInvertStage(InvertStage):
    """e4e with cached networks; the sweep's edit names are checked first."""

    split = "one"  # a few frames: no shards (engine/stages/contract.py)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        ctx = _draft_context(ctx)
        check_sweep_installed(parse_sweep(ctx.config.draft.sweep),
                              ctx.load_models().directions)
        return super().run(ctx)


class DraftPTIStage(PTIStage):
    """PTI over the draft frames for ``options.draft.pti_steps`` passes."""

    weight = 2.0

    def applies(self, config: PipelineConfig) -> bool:
        return config.draft.pti_steps > 0

    def run(self, ctx: StageContext) -> dict[str, Any]:
        cfg = ctx.config
        pti = dataclasses.replace(cfg.pti, steps=cfg.draft.pti_steps)
        return super().run(dataclasses.replace(
            _draft_context(ctx), config=dataclasses.replace(cfg, pti=pti)))
