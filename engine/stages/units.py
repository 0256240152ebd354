"""One unit of one stage in a job folder: what ``facestitch stage run``, the Ray
backend (:mod:`engine.service.ray_backend`) and a render farm's tasks execute.

A unit is a shard ``I/N`` of a stage whose ``split`` is ``"frames"``, or a whole
stage. For a split stage the whole-stage unit run after its shards is the *final
unit*: it finds every shard's parts done, merges them and completes the stage
(``DONE.msgpack``), exactly as a run resumed after a crash would. So any scheduler
that runs the shards, then the final unit, then the next stage, gets the job the
single-process loop (:func:`engine.stages.pipeline.run_pipeline`) gets.

Units are idempotent: a completed stage or a finished shard (its record in
``stages/<stage>/shards/``) returns at once; a shard that was killed resumes from
its parts; every file is written atomically. A unit refuses to run before the
stages it reads are complete (``stage.not_ready``, naming them).

Same frames everywhere (docs/scale.md "Same frames everywhere"): shards are whole
batches of the stage's own batching, and every unit of a job computes with one
intra-op thread count, recorded in ``stages/compute.json`` by the first unit or
pipeline run of the job (torch's reductions split by thread, so other counts give
other roundings).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from fsexchange.documents import Job, load_document
from fsexchange.errors import (DocumentError, FaceStitchError, PipelineUnavailable,
                               StageNotReady)
from fsexchange.exchange import JOB_FILE, utc_now
from fsexchange.fsutil import atomic_write_bytes
from fsexchange.options import PipelineConfig

from engine.stages.compute import pinned_threads
from engine.stages.contract import Shard, Stage, StageContext
from engine.stages.outputs import JobFiles
from engine.stages.pipeline import PIPELINES, plain, run_stage, stages_for

__all__ = ["UnitOutcome", "parse_shard", "load_job", "open_unit", "run_unit",
           "job_abort_fn", "unit_label", "read_unit_progress"]

log = logging.getLogger(__name__)

#: at most one unit-progress write per this many seconds
PROGRESS_INTERVAL = 0.5


@dataclass
class UnitOutcome:
    """What one unit did.

    Attributes:
        stage: the stage name. shard: the shard, or None for a whole stage.
        facts: what the stage returned (msgpack-safe).
        warnings, info: what the unit added to the job's warnings and info.
        seconds: wall time. skipped: it had completed before (nothing ran).
    """

    stage: str
    shard: Shard | None
    facts: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: bool = False


def parse_shard(text: str) -> Shard:
    """``"I/N"`` (0-based, ``0 <= I < N``) -> :class:`Shard`.

    Raises:
        ValueError: malformed, or the index out of range (the message says so).
    """
    i, sep, n = str(text).partition("/")
    if not sep or not i.strip().isdigit() or not n.strip().isdigit():
        raise ValueError(f"--shard {text!r}: expected I/N, shard I (counted from 0) "
                         "of N, e.g. 0/4")
    index, count = int(i), int(n)
    if count < 1:
        raise ValueError(f"--shard {text}: the shard count N must be at least 1")
    if index >= count:
        raise ValueError(f"--shard {text} is out of range: shards of {count} are "
                         f"numbered 0 to {count - 1}")
    return Shard(index, count)


def unit_label(shard: Shard | None) -> str:
    """``3-of-4`` for a shard, ``final`` for a whole-stage unit."""
    return "final" if shard is None else f"{shard.index}-of-{shard.count}"


def job_abort_fn(job_dir: Path, every: float = 0.5) -> Callable[[], bool]:
    """An abort check for a unit outside the engine: True once the job's cancel
    request exists (``<exchange>/cancel/<job id>``, for a folder in ``cur/``) or
    the job folder moved away. Looks at most every ``every`` seconds."""
    job_dir = Path(job_dir)
    cancel = job_dir.parent.parent / "cancel" / job_dir.name
    state = {"next": 0.0, "abort": False}

    def abort() -> bool:
        now = time.monotonic()
        if not state["abort"] and now >= state["next"]:
            state["next"] = now + every
            state["abort"] = (not (job_dir / JOB_FILE).exists()
                              or (job_dir.parent.name == "cur" and cancel.exists()))
        return state["abort"]

    return abort


def load_job(job_dir: Path) -> Job:
    path = job_dir / JOB_FILE
    if not path.is_file():
        raise DocumentError(f"{job_dir} is not a job folder: it has no {JOB_FILE}",
                            field=JOB_FILE)
    return load_document(path, Job)


def open_unit(job_dir: Path, stage_name: str, shard: Shard | None = None, *,
              device: str = "cpu", media_roots: Sequence[Path] = (),
              pipelines: Mapping[str, Sequence[str]] = PIPELINES
              ) -> tuple[list[Stage], int, StageContext]:
    """The job's stages, the index of ``stage_name`` among them and a context for
    one of its units, after checking that every earlier stage is complete.

    Raises:
        DocumentError: not a job folder. PipelineUnavailable: the job kind has no
        such stage. ValueError: a shard of a stage that runs as one unit.
        StageNotReady: earlier stages are not complete (named).
    """
    job_dir = Path(job_dir)
    job = load_job(job_dir)
    config = PipelineConfig.from_options(job.options, device=device)
    # the stages of this job (its options leave some out: Stage.applies)
    stages = stages_for(job.kind, pipelines, config=config)
    names = [s.name for s in stages]
    if stage_name not in names:
        raise PipelineUnavailable(f"{job.kind} jobs have no stage {stage_name!r}; "
                                  f"their stages are {', '.join(names)}",
                                  field="stage")
    index = names.index(stage_name)
    if shard is not None and stages[index].split != "frames":
        raise ValueError(f"stage {stage_name} runs as one unit and takes no shard "
                         f"(the stages that split by frames: "
                         f"{', '.join(s.name for s in stages if s.split == 'frames')})")
    files = JobFiles(job_dir)
    done = {n: files.done(n) for n in names}
    missing = [n for n in names[:index] if done[n] is None]
    if missing:
        raise StageNotReady(
            f"stage {stage_name} of job {job.id} reads what earlier stages leave, "
            f"but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
            f"complete in {job_dir}: run 'facestitch stage run {job_dir} "
            f"{missing[0]}' first", stage=stage_name)
    roots = list(media_roots)
    if job_dir.parent.name == "cur":  # a job in an exchange may read the exchange
        roots.insert(0, job_dir.parent.parent)
    ctx = StageContext(job=job, job_dir=job_dir, config=config, device=device,
                       media_roots=tuple(roots))
    for doc in done.values():  # later stages see what earlier ones learned
        if doc is not None:
            ctx.info.update(doc.info)
    return stages, index, ctx


class _UnitProgress:
    """A unit's progress as ``stages/<stage>/units/<unit>.msgpack`` (throttled), for
    a scheduler to aggregate (the Ray backend tails it into ``Progress/1``)."""

    def __init__(self, path: Path,
                 also: Callable[[float, str], None] | None = None) -> None:
        self.path, self.also = path, also
        self.last = 0.0

    def __call__(self, fraction: float, message: str, force: bool = False) -> None:
        import msgpack

        if self.also is not None:
            self.also(fraction, message)
        now = time.monotonic()
        if not force and now - self.last < PROGRESS_INTERVAL:
            return
        self.last = now
        doc = {"fraction": float(fraction), "message": message, "pid": os.getpid(),
               "host": socket.gethostname(), "updated": time.time()}
        try:
            self.path.parent.mkdir(exist_ok=True)
            atomic_write_bytes(self.path, msgpack.packb(doc))
        except OSError as exc:  # the folder moved away; the abort check knows
            log.debug("unit progress not written: %s", exc)


def read_unit_progress(job_dir: Path, stage: str, shard: Shard | None
                       ) -> dict[str, Any] | None:
    """The last progress a unit wrote (``fraction``, ``message``, ``pid``,
    ``host``, ``updated``), or None."""
    import msgpack

    path = JobFiles(job_dir).of(stage).unit_progress_path(unit_label(shard))
    try:
        return msgpack.unpackb(path.read_bytes())
    except (OSError, ValueError):
        return None


def run_unit(job_dir: Path, stage_name: str, shard: Shard | None = None, *,
             device: str = "cpu", media_roots: Sequence[Path] = (),
             abort_fn: Callable[[], bool] | None = None,
             progress: Callable[[float, str], None] | None = None,
             worker: str = "", threads: int = 0, write_done: bool = True,
             pipelines: Mapping[str, Sequence[str]] = PIPELINES) -> UnitOutcome:
    """Run one unit of ``stage_name`` in ``job_dir``.

    Args:
        shard: a shard of a ``"frames"`` stage, or None for the whole stage (its
            final unit after shards).
        device: the torch device. media_roots: folders the job may read besides
            its folder (and its exchange, for a folder in ``cur/``).
        abort_fn: polled by the stage; default :func:`job_abort_fn`.
        progress: also called with ``(fraction, message)``.
        worker: written into the records.
        threads: the intra-op thread count to record when this is the job's first
            unit (0: torch's current count); see :func:`pin_threads`.
        write_done: complete the stage (``DONE.msgpack``) after a whole-stage
            unit; False when the caller writes it (the engine, with Ray).

    Raises:
        StageNotReady, PipelineUnavailable, DocumentError: see :func:`open_unit`.
        ValueError: a shard of a stage that runs as one unit.
        StageAborted: ``abort_fn`` asked to stop (finished parts stay).
        FaceStitchError: the stage failed (its ``stage`` is set).
    """
    job_dir = Path(job_dir)
    job = load_job(job_dir)
    if stage_name not in {s.name for s in stages_for(
            job.kind, pipelines, config=PipelineConfig.from_options(job.options))} \
            and stage_name in {s.name for s in stages_for(job.kind, pipelines)}:
        # e.g. stitching tuning of a --no-stitch job: a farm template lists every
        # stage of the kind, the job's options leave this one out
        log.info("job %s: stage %s is not part of this job", job.id, stage_name)
        return UnitOutcome(stage_name, shard, {"applies": False}, [], {},
                           skipped=True)
    stages, index, base = open_unit(job_dir, stage_name, shard, device=device,
                                    media_roots=media_roots, pipelines=pipelines)
    stage = stages[index]
    files = base.files.of(stage.name)
    prev = base.files.done(stage.name)
    if prev is not None:
        log.info("job %s: stage %s already complete", base.job.id, stage.name)
        return UnitOutcome(stage.name, shard, dict(prev.facts), list(prev.warnings),
                           dict(prev.info), skipped=True)
    if shard is not None:
        rec = files.shard_record(shard.index, shard.count)
        if rec is not None:
            log.info("job %s: %s shard %s already finished", base.job.id, stage.name,
                     shard)
            return UnitOutcome(stage.name, shard, rec["facts"], rec["warnings"],
                               rec["info"], skipped=True)
    base.stage_dir(stage.name)
    report = _UnitProgress(files.unit_progress_path(unit_label(shard)), progress)
    ctx = dataclasses.replace(base, shard=shard, progress_fn=report,
                              abort_fn=abort_fn or job_abort_fn(job_dir))
    info_before = plain(ctx.info)
    report(0.0, "starting", force=True)
    t0 = time.monotonic()
    with pinned_threads(job_dir, threads):
        if shard is None and write_done:
            doc = run_stage(stage, index, ctx,
                            lambda i, f, m: report(f, m, force=f >= 1.0), worker)
            facts = dict(doc.facts)
        else:
            try:
                facts = plain(stage.run(ctx) or {})
            except FaceStitchError as exc:
                if exc.stage is None:
                    exc.stage = stage.name
                raise
    seconds = time.monotonic() - t0
    out = UnitOutcome(stage.name, shard, facts, list(ctx.warnings),
                      {k: v for k, v in plain(ctx.info).items()
                       if info_before.get(k) != v}, round(seconds, 3))
    if shard is not None:
        import msgpack

        files.shards_dir.mkdir(exist_ok=True)
        atomic_write_bytes(files.shard_path(shard.index, shard.count), msgpack.packb({
            "shard": [shard.index, shard.count], "facts": out.facts,
            "warnings": out.warnings, "info": out.info, "seconds": out.seconds,
            "worker": worker, "finished": utc_now()}))
    report(1.0, "done", force=True)
    log.info("job %s: stage %s %s done in %.2f s", base.job.id, stage.name,
             f"shard {shard}" if shard else "unit", seconds)
    return out

