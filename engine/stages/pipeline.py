"""The pipeline: which stages run, in order, for each job kind, and the one loop
that runs them in a job folder.

Everything that runs stages goes through here: the engine's job runner
(:mod:`engine.service.runner`, which adds leases, progress files and the result),
``facestitch preview`` and the benchmark. Stages are named by ``module:Class`` and
imported only when a job needs them, so the engine starts without importing torch
and a broken optional stage cannot stop jobs of another kind.

The loop skips a stage whose ``DONE.msgpack`` exists (it completed in an earlier
attempt), runs the others with a context of their own (progress reported per
stage) and writes ``DONE.msgpack`` after each: what that stage returned, its
warnings, its time and the worker that ran it.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from fsexchange.documents import StageDone, encode_document
from fsexchange.errors import FaceStitchError, InternalError, PipelineUnavailable
from fsexchange.exchange import utc_now
from fsexchange.fsutil import atomic_write_bytes
from fsexchange.options import PipelineConfig

from engine.stages.compute import pinned_threads
from engine.stages.contract import Stage, StageContext
from engine.stages.outputs import DONE_FILE

__all__ = ["PIPELINES", "stages_for", "run_pipeline", "run_stage",
           "plain"]

log = logging.getLogger(__name__)

#: job kind -> its stages, in order.
PIPELINES: dict[str, tuple[str, ...]] = {
    # Track -> smoothed alignment -> identity paste-back, for checking a track.
    "align-preview": (
        "engine.stages.track:TrackStage",
        "engine.stages.align:AlignStage",
        "engine.stages.paste:PasteStage",
        "engine.stages.report:ReportStage",
    ),
    # The full STIT pipeline (docs/reference.md).
    "stitch": (
        "engine.stages.track:TrackStage",
        "engine.stages.align:AlignStage",
        "engine.stages.invert:InvertStage",
        "engine.stages.pti:PTIStage",
        "engine.stages.edit:EditStage",
        # VideoEditGAN's flow-based refinement (options.refine.enabled, on by default)
        "engine.stages.refine:RefineStage",
        "engine.stages.stitch_tune:StitchTuneStage",
        # stitch.tune off (--no-stitch) replaces stitching tuning by this naive
        # render of the edit (STIT's edit_video.py); Stage.applies decides
        "engine.stages.render:RenderStage",
        "engine.stages.paste:PasteStage",
        "engine.stages.report:ReportStage",
    ),
    # A few frames, e4e (+ optional short PTI), the edit at every strength of a
    # sweep, naive paste-back and a sheet (docs/pipeline.md "Drafts").
    "draft": (
        "engine.stages.draft:DraftTrackStage",
        "engine.stages.draft:DraftAlignStage",
        "engine.stages.draft:DraftInvertStage",
        "engine.stages.draft:DraftPTIStage",
        "engine.stages.sweep:SweepStage",
    ),
}

#: ``(stage index, fraction of that stage in 0..1, message)``
PipelineProgress = Callable[[int, float, str], None]


def stages_for(kind: str, pipelines: Mapping[str, Sequence[str]] = PIPELINES, *,
               until: str | None = None,
               config: PipelineConfig | None = None) -> list[Stage]:
    """Import and construct the stages of a job kind, in order (up to and
    including the stage named ``until``, when given), leaving out those that do
    not apply to the job's ``config`` (:meth:`Stage.applies`; default options
    when None).

    Raises:
        PipelineUnavailable: unknown kind, or a stage module that is not installed.
    """
    config = config if config is not None else PipelineConfig()
    refs = pipelines.get(kind)
    if refs is None:
        raise PipelineUnavailable(f"this engine cannot run {kind!r} jobs "
                                  f"(it knows {', '.join(sorted(pipelines))})",
                                  field="kind")
    out: list[Stage] = []
    for ref in refs:
        module, _, cls = ref.partition(":")
        try:
            obj = getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError) as exc:
            raise PipelineUnavailable(
                f"stage {ref} of {kind!r} jobs is not available in this engine "
                f"({exc}); update or reinstall FaceStitch") from exc
        stage = obj()
        if not stage.applies(config):
            continue
        out.append(stage)
        if until is not None and stage.name == until:
            break
    return out


def plain(obj: Any) -> Any:
    """msgpack-able copy of stage facts (numpy scalars, paths, fractions)."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Fraction):
        return [obj.numerator, obj.denominator]
    if obj is None or isinstance(obj, (bool, int, str, bytes)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return plain(obj.tolist())
    return str(obj)


def run_stage(stage: Stage, index: int, base: StageContext,
              progress: PipelineProgress, worker: str = "") -> StageDone:
    """Run one stage in ``base.job_dir`` and write its ``DONE.msgpack``."""
    before = len(base.warnings)

    def report(fraction: float, message: str) -> None:
        progress(index, fraction, f"{stage.name}: {message}" if message
                 else stage.name)

    # Shares the job's warnings and info with ``base`` (a shallow copy).
    ctx = dataclasses.replace(base, progress_fn=report)
    t0 = time.monotonic()
    log.info("job %s: stage %s", ctx.job.id, stage.name)
    try:
        # every unit of a job computes with one thread count (docs/scale.md)
        with pinned_threads(ctx.job_dir):
            facts = stage.run(ctx) or {}
    except FaceStitchError as exc:
        if exc.stage is None:
            exc.stage = stage.name
        raise
    seconds = time.monotonic() - t0
    doc = StageDone(stage=stage.name, seconds=round(seconds, 3), facts=plain(facts),
                    warnings=tuple(ctx.warnings[before:]), info=plain(ctx.info),
                    worker=worker, finished=utc_now())
    try:
        encode_document(doc.to_dict())
    except (TypeError, ValueError) as exc:
        raise InternalError(f"stage {stage.name} returned facts that cannot be "
                            f"stored: {exc}", stage=stage.name) from exc
    ctx.fence()  # a worker that lost the job must not mark its stage done
    atomic_write_bytes(ctx.stage_dir(stage.name) / DONE_FILE, doc.to_bytes())
    progress(index, 1.0, f"{stage.name}: done")
    return doc


def run_pipeline(stages: Sequence[Stage], base: StageContext, *,
                 progress: PipelineProgress | None = None, worker: str = "",
                 done: list[tuple[StageDone, bool]] | None = None
                 ) -> list[tuple[StageDone, bool]]:
    """Run ``stages`` in order in ``base.job_dir``, resuming after completed ones.

    Args:
        stages: from :func:`stages_for`.
        base: the job's context; each stage gets a copy whose ``progress_fn``
            reports through ``progress``.
        progress: ``(stage index, fraction, message)``; called with fraction 0
            when a stage starts, so a caller knows which stage is running.
        worker: written into each ``DONE.msgpack``.
        done: a list to append to as stages complete (so a caller keeps the
            completed stages when a later one fails); a new one by default.

    Returns:
        ``done``: ``(DONE document, resumed)`` per completed stage, in order.

    Raises:
        StageAborted: ``base.abort_fn`` asked to stop (between or inside stages).
        FaceStitchError: a stage failed (its ``stage`` attribute is set).
    """
    report = progress or (lambda i, f, m: None)
    earlier = {s.name: base.files.done(s.name) for s in stages}
    for doc in earlier.values():
        if doc is not None:  # later stages see what earlier attempts learned
            base.info.update(doc.info)
    done = [] if done is None else done
    for index, stage in enumerate(stages):
        prev = earlier[stage.name]
        if prev is not None:
            log.info("job %s: stage %s already done, skipping", base.job.id,
                     stage.name)
            done.append((prev, True))
            continue
        base.check_abort()
        report(index, 0.0, f"{stage.name}: starting")
        done.append((run_stage(stage, index, base, report, worker), False))
    return done
