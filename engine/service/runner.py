"""Run one claimed job through its stages, turning everything into a ``Result/1``.

The runner owns a job from its claim to its publication:

1. load and validate ``job.msgpack`` (a folder whose job cannot be read still ends
   in ``failed/`` with a result; its id is the folder name);
2. confine every path the job names (``source.path``, ``subject.track``, and any
   symlinked attachment) to the job folder, the exchange root and the media roots;
3. resolve ``PipelineConfig.from_options(job.options, device=...)`` and write it to
   ``config.json``;
4. run the stages of the job kind through :func:`engine.stages.pipeline.run_pipeline`
   (which skips stages completed in an earlier attempt and writes each stage's
   ``DONE.msgpack``), replacing ``progress.msgpack`` as they report;
5. publish: ``done``, ``failed`` (any :class:`FaceStitchError` keeps its code,
   anything else is ``internal`` and its traceback is logged) or ``cancelled``.

A monitor thread renews the lease and watches for a cancel request. A shutdown
(``stop_event``) releases the job to the queue so another worker resumes it from
its checkpoints; a lost lease stops the job without publishing anything, and every
checkpoint and ``DONE`` write is fenced by the claim's lease epoch
(``StageContext.fence``), so a worker that lost its job never writes into its new
owner's folder. A problem the claim found in the folder (``Claim.problem``) fails
the job first; a full disk or a permission problem fails it with ``io.no_space``
or ``io.permission`` naming the folder, never ``internal``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from fsexchange.documents import (FaceTrack, FrameOutput, Job, Progress, Result,
                                  StageDone, StageTiming, Variant, load_document)
from fsexchange.errors import (DocumentError, DocumentFieldError, FaceStitchError,
                               InternalError, JobCancelled, JobCrashed, LeaseLost,
                               NoSpace, PathEscapeError, io_error)
from fsexchange.exchange import (CONFIG_FILE, JOB_FILE, OUTPUT_DIR, PROGRESS_FILE,
                                 STAGES_DIR, Claim, Exchange, utc_now)
from fsexchange.fsutil import atomic_write_bytes
from fsexchange.media import check_media, media_index
from fsexchange.paths import confine

from fsexchange.options import PipelineConfig
from engine.devices import check_dtype, resolve_device
from engine.stages.contract import StageAborted, StageContext
from engine.stages.recipe import job_recipe
from engine.stages.pipeline import PIPELINES, plain, run_pipeline, stages_for

__all__ = ["RunnerSettings", "JobControl", "run_job", "build_result"]

log = logging.getLogger(__name__)

_MAX_ATTACHMENT_ENTRIES = 100_000
# Progress/1 is at most 64 KiB and Result/1 32 MiB: messages are clipped to these.
_MAX_PROGRESS_MESSAGE = 4096
_MAX_ERROR_MESSAGE = 16384


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True)
class RunnerSettings:
    """How this engine runs jobs (fixed for the engine's lifetime).

    Attributes:
        device: the resolved torch device string ("cpu", "cuda").
        media_roots: folders outside the exchange that jobs may read.
        pipelines: job kind -> stage references ``"module:Class"``.
        heartbeat: seconds between lease renewals (None: a third of the lease).
        cancel_poll: seconds between looks for a cancel request.
        progress_interval: at most one progress write per this many seconds.
        max_reclaims: a job taken from this many dead workers fails instead of
            killing another (``job.crashed``).
        worker: this worker's id (written into leases and DONE documents).
        ocio_config: the engine's OpenColorIO config (``--ocio-config`` or
            ``$OCIO``; "" = the built-in one), used by jobs that name none.
        backend: runs the units of each stage elsewhere (a
            :class:`engine.service.ray_backend.RayBackend`); None: in this process.
        devices: several devices for the data-parallel stages (PTI, refinement;
            engine/stages/parallel.py); empty: ``device`` only.
    """

    device: str = "cpu"
    media_roots: tuple[Path, ...] = ()
    pipelines: Mapping[str, Sequence[str]] = field(
        default_factory=lambda: dict(PIPELINES))
    heartbeat: float | None = None
    cancel_poll: float = 0.5
    progress_interval: float = 0.5
    max_reclaims: int = 3
    worker: str = ""
    ocio_config: str = ""
    backend: Any = None
    devices: tuple[str, ...] = ()


class JobControl:
    """The abort flags of one running job; ``should_abort`` is the stages' abort_fn."""

    def __init__(self, stop_event: threading.Event | None = None) -> None:
        self.stop = stop_event or threading.Event()
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self.lost_reason = ""

    def should_abort(self) -> bool:
        return self.stop.is_set() or self.cancel.is_set() or self.lost.is_set()


class _Monitor(threading.Thread):
    """Renews the lease and polls for a cancel request while a job runs."""

    def __init__(self, exchange: Exchange, claim: Claim, ctl: JobControl,
                 heartbeat: float, cancel_poll: float) -> None:
        super().__init__(name=f"lease-{claim.job_id}", daemon=True)
        self.exchange, self.claim, self.ctl = exchange, claim, ctl
        self.heartbeat = heartbeat
        self.tick = max(0.05, min(cancel_poll, heartbeat))
        self.halt = threading.Event()

    def run(self) -> None:
        next_renew = time.monotonic() + self.heartbeat
        while not self.halt.wait(self.tick):
            if self.exchange.cancel_requested(self.claim.job_id):
                self.ctl.cancel.set()
            if time.monotonic() < next_renew:
                continue
            try:
                self.exchange.renew(self.claim)
                next_renew = time.monotonic() + self.heartbeat
            except LeaseLost as exc:
                log.warning("job %s: %s", self.claim.job_id, exc.message)
                self.ctl.lost_reason = exc.message
                self.ctl.lost.set()
                return
            except OSError as exc:  # a flaky share: retry until the lease runs out
                log.warning("job %s: lease renewal failed (%s); retrying",
                            self.claim.job_id, exc)

    def close(self) -> None:
        self.halt.set()
        self.join()


class _Progress:
    """Turns stage progress callbacks into an atomically replaced Progress/1."""

    def __init__(self, folder: Path, job_id: str, worker: str, weights: list[float],
                 names: list[str], interval: float) -> None:
        self.folder, self.job_id, self.worker = folder, job_id, worker
        self.weights, self.names = weights, names
        self.interval = interval
        self.total = sum(weights) or 1.0
        self.last_write = 0.0
        self.index = 0
        self.fraction = 0.0

    def whole(self, index: int, stage_fraction: float) -> float:
        done = sum(self.weights[:index])
        w = self.weights[index] if index < len(self.weights) else 0.0
        return min(1.0, max(0.0, (done + w * stage_fraction) / self.total))

    def write(self, state: str, index: int, stage_fraction: float, message: str,
              *, force: bool = False) -> None:
        now = time.monotonic()
        fraction = 1.0 if state == "done" else self.whole(index, stage_fraction)
        self.index, self.fraction = index, fraction
        if not force and now - self.last_write < self.interval:
            return
        self.last_write = now
        stage = self.names[index] if 0 <= index < len(self.names) else None
        doc = Progress(job_id=self.job_id, state=state, stage=stage, stage_index=index,
                       stage_count=len(self.names), fraction=fraction,
                       message=_clip(message, _MAX_PROGRESS_MESSAGE),
                       worker=self.worker, updated=utc_now())
        try:
            atomic_write_bytes(self.folder / PROGRESS_FILE, doc.to_bytes())
        except OSError as exc:  # the folder moved (lost lease); the monitor knows
            log.debug("progress write failed: %s", exc)


def _frame_outputs(value: Any) -> list[FrameOutput] | None:
    if not isinstance(value, list) or not value or not isinstance(value[0], Mapping):
        return None
    return [FrameOutput(int(d["frame"]), str(d["path"]), str(d["sha256"]),
                        bool(d.get("edited", True))) for d in value]


def build_result(job_id: str, state: str, done: Sequence[tuple[StageDone, bool]], *,
                 error: dict | None = None, warnings: Sequence[str] = (),
                 info: Mapping[str, Any] | None = None, started: str = "",
                 finished: str = "") -> Result:
    """Assemble ``Result/1`` from the DONE documents of the completed stages.

    Facts read from each stage's DONE document: ``frames`` (a count, or a list of
    ``FrameOutput`` maps; so is ``frame_outputs``; the last stage that lists frames
    provides ``Result.frames``), ``outputs`` (merged), ``metrics`` (merged),
    ``variants`` (a draft's sweep rows, ``Variant`` maps).
    ``info["models"]`` becomes ``Result.models``; other info keys go to the
    result's ``info`` key.

    Args:
        done: ``(DONE document, resumed)`` per completed stage, in pipeline order.
    """
    stages, frames = [], []
    variants: list[Variant] = []
    outputs: dict[str, str] = {}
    metrics: dict[str, Any] = {}
    all_info: dict[str, Any] = {}
    all_warnings: list[str] = []
    for doc, resumed in done:
        facts = doc.facts
        listed = _frame_outputs(facts.get("frame_outputs")) or _frame_outputs(
            facts.get("frames"))
        if listed is not None:
            frames = listed
            count = len(listed)
        else:
            count = facts.get("frames") if isinstance(facts.get("frames"), int) else 0
        stages.append(StageTiming(doc.stage, doc.seconds, count, resumed))
        outputs.update({str(k): str(v) for k, v in dict(facts.get("outputs") or {}
                                                         ).items()})
        metrics.update(dict(facts.get("metrics") or {}))
        if isinstance(facts.get("variants"), list):
            variants = [Variant.from_dict(v, f"{doc.stage}.variants[{i}]")
                        for i, v in enumerate(facts["variants"])]
        all_info.update(doc.info)
        all_warnings += [w for w in doc.warnings if w not in all_warnings]
    all_info.update(dict(info or {}))
    all_warnings += [w for w in warnings if w not in all_warnings]
    models = dict(all_info.pop("models", {}) or {})
    extra = {"info": plain(all_info)} if all_info else {}
    return Result(job_id=job_id, state=state, stages=tuple(stages),
                  frames=tuple(frames), outputs=outputs, error=error,
                  metrics=plain(metrics), models=plain(models),
                  warnings=tuple(all_warnings), started=started, finished=finished,
                  variants=tuple(variants), extra=extra)


def _check_paths(job: Job, job_dir: Path, roots: Sequence[Path]) -> None:
    """Confine every path the job names (symlinked attachments included) and read
    what they name before any stage runs: the media is probed (its index is
    cached for the stages), the face track loaded and validated."""
    src = confine(job.source.path, job_dir, roots, field="source.path")
    check_media(src, field="source.path")  # there, readable, a file or a folder
    try:
        media_index(src)
    except FaceStitchError as exc:
        exc.field = exc.field or "source.path"
        raise
    if job.subject.track:
        track = confine(job.subject.track, job_dir, roots, field="subject.track")
        if not track.exists():
            raise DocumentFieldError(f"subject.track {job.subject.track!r} is not a "
                                     "file in the job folder", field="subject.track")
        try:
            load_document(track, FaceTrack)
        except FaceStitchError as exc:
            exc.field = "subject.track" if exc.field in (None, track.name) else \
                f"subject.track:{exc.field}"
            raise
        except OSError as exc:
            err = io_error(exc, track, doing="reading")
            err.field = "subject.track"
            raise err from None
    seen = 0
    for dirpath, dirnames, filenames in os.walk(job_dir):
        rel_dir = Path(dirpath).relative_to(job_dir)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d not in (STAGES_DIR, OUTPUT_DIR)]
        for name in dirnames + filenames:
            seen += 1
            if seen > _MAX_ATTACHMENT_ENTRIES:
                raise PathEscapeError("the job folder holds too many files",
                                      field="attachments")
            p = Path(dirpath) / name
            if p.is_symlink():
                rel = (rel_dir / name).as_posix()
                confine(rel, job_dir, roots, field=f"attachments/{rel}")


def _load_job(job_dir: Path) -> Job:
    try:
        return load_document(job_dir / JOB_FILE, Job)
    except FileNotFoundError:
        raise DocumentError(f"{job_dir.name}: the job folder has no {JOB_FILE}",
                            field=JOB_FILE) from None
    except FaceStitchError:
        raise
    except PermissionError as exc:
        err = io_error(exc, job_dir / JOB_FILE, doing="reading")
        err.field = JOB_FILE
        raise err from None
    except OSError as exc:
        raise DocumentError(f"{job_dir.name}/{JOB_FILE} cannot be read: {exc}",
                            field=JOB_FILE) from None


def run_job(exchange: Exchange, claim: Claim, settings: RunnerSettings, *,
            stop_event: threading.Event | None = None) -> str:
    """Run one claimed job to its end.

    Returns:
        ``"done"``, ``"failed"`` or ``"cancelled"`` (published), ``"released"``
        (shutdown: requeued with its checkpoints), ``"requeued"`` (not even a
        failed result fits on the disk: back in the queue, to be retried once
        there is space) or ``"lost"`` (another worker
        owns the job now; nothing was published).
    """
    ctl = JobControl(stop_event)
    lease = claim.lease_seconds
    monitor = _Monitor(exchange, claim, ctl, settings.heartbeat or lease / 3.0,
                       settings.cancel_poll)
    monitor.start()
    try:
        return _run(exchange, claim, settings, ctl)
    finally:
        monitor.close()


def _run(exchange: Exchange, claim: Claim, settings: RunnerSettings,
         ctl: JobControl) -> str:
    job_dir = claim.folder
    job_id = claim.job_id
    started = utc_now()
    roots = (exchange.root, *settings.media_roots)
    done: list[tuple[StageDone, bool]] = []
    warnings: list[str] = []
    info: dict[str, Any] = {}
    progress = _Progress(job_dir, job_id, settings.worker, [1.0], [],
                         settings.progress_interval)
    stage_name: str | None = None
    log.info("job %s: claimed by %s (epoch %d)", job_id, claim.worker, claim.epoch)

    def fence() -> None:
        """Raise LeaseLost unless this claim still holds the job (by its epoch)."""
        try:
            exchange.check(claim)
        except LeaseLost as exc:
            ctl.lost_reason = ctl.lost_reason or exc.message
            ctl.lost.set()
            raise

    try:
        if claim.problem is not None:
            raise claim.problem
        if claim.reclaims >= settings.max_reclaims:
            raise JobCrashed(
                f"the workers running job {job_id} died {claim.reclaims} times "
                "(out of memory? a crash in a native library?); not retrying")
        job = _load_job(job_dir)
        if job.id != job_id:
            raise DocumentFieldError(f"job.msgpack names job {job.id!r} but its "
                                     f"folder is {job_id!r}", field="id")
        if exchange.cancel_requested(job_id):
            raise JobCancelled("cancelled before it started")
        _check_paths(job, job_dir, roots)
        config = PipelineConfig.from_options(job.options, device=settings.device)
        # config.json records the recipe the job trains with (auto -> by profile)
        config = dataclasses.replace(config, recipe=job_recipe(config))
        if settings.ocio_config and not config.colour.config:
            # the engine's OCIO config, resolved here once and recorded below
            config = dataclasses.replace(config, colour=dataclasses.replace(
                config.colour, config=settings.ocio_config))
        fence()
        atomic_write_bytes(job_dir / CONFIG_FILE, (json.dumps(
            config.to_dict(), indent=2, sort_keys=True) + "\n").encode())
        stages = stages_for(job.kind, settings.pipelines, config=config)
        if settings.backend is None and config.dtype != "auto":
            # computed here: a precision this machine's devices cannot compute
            # fails the job now, not after hours of stages
            try:
                devices = settings.devices or (resolve_device(config.device),)
            except ValueError as exc:
                raise DocumentFieldError(str(exc), field="options.device") from None
            for dev in devices:
                check_dtype(config.dtype, dev)
        if settings.backend is not None:  # units on a cluster (docs/scale.md)
            stages = settings.backend.wrap(stages)
        names = [s.name for s in stages]
        progress = _Progress(job_dir, job_id, settings.worker,
                             [float(getattr(s, "weight", 1.0)) for s in stages], names,
                             settings.progress_interval)

        def report(index: int, fraction: float, message: str) -> None:
            nonlocal stage_name
            stage_name = names[index]
            # a stage's start and end are always written; in between, throttled
            progress.write("running", index, fraction, message,
                           force=fraction in (0.0, 1.0))

        ctx = StageContext(job=job, job_dir=job_dir, config=config,
                           device=settings.device, media_roots=roots,
                           abort_fn=ctl.should_abort, warnings=warnings, info=info,
                           fence_fn=fence, devices=settings.devices)
        run_pipeline(stages, ctx, progress=report, worker=settings.worker, done=done)
        stage_name = None
        if ctl.lost.is_set():
            raise StageAborted()
        progress.write("done", len(stages), 1.0, "done", force=True)
        result = build_result(job_id, "done", done, warnings=warnings, info=info,
                              started=started, finished=utc_now())
    except BaseException as exc:  # noqa: BLE001 - every outcome becomes data
        if ctl.lost.is_set() or isinstance(exc, LeaseLost):
            log.warning("job %s: lease lost (%s); leaving it to its new owner",
                        job_id, ctl.lost_reason or exc)
            return "lost"
        if isinstance(exc, JobCancelled) or (isinstance(exc, StageAborted)
                                             and ctl.cancel.is_set()):
            err = exc if isinstance(exc, JobCancelled) else JobCancelled(
                "cancelled while running", stage=stage_name)
            state, error = "cancelled", err.to_dict()
            log.info("job %s: cancelled", job_id)
        elif isinstance(exc, (StageAborted, KeyboardInterrupt, SystemExit)):
            # Shutdown: hand the job back; its checkpoints make the rerun cheap.
            released = exchange.release(claim)
            log.info("job %s: released for another worker (%s)", job_id,
                     "requeued" if released else "lease already gone")
            if not isinstance(exc, StageAborted):
                raise
            return "released"
        elif isinstance(exc, (FaceStitchError, OSError)):
            # A full disk, a quota, a permission problem: the user's to fix, with
            # the folder named; never "internal" (please report it).
            err = exc if isinstance(exc, FaceStitchError) else io_error(exc)
            if err.code == "io.error" and not isinstance(exc, FaceStitchError):
                err = _internal(job_id, stage_name, exc)
            if err.stage is None and stage_name is not None:
                err.stage = stage_name
            state, error = "failed", err.to_dict()
            log.info("job %s: failed: %s", job_id, err)
        else:
            state, error = "failed", _internal(job_id, stage_name, exc).to_dict()
        error["message"] = _clip(str(error["message"]), _MAX_ERROR_MESSAGE)
        progress.write(state, progress.index, 0.0, error["message"], force=True)
        result = build_result(job_id, state, done, error=error, warnings=warnings,
                              info=info, started=started, finished=utc_now())
    try:
        exchange.finish(claim, result)
    except LeaseLost as exc:
        log.warning("job %s: not published: %s", job_id, exc.message)
        return "lost"
    except NoSpace as exc:
        return _publish_without_space(exchange, claim, result, exc)
    log.info("job %s: %s", job_id, result.state)
    return result.state


def _publish_without_space(exchange: Exchange, claim: Claim, result: Result,
                           exc: NoSpace) -> str:
    """The result did not fit on the disk: publish the smallest failed result
    (``io.no_space``, naming the folder); if not even that fits, hand the job back
    to the queue (renames need no space), never lose it."""
    job_id = claim.job_id
    error = result.error if (result.error or {}).get("code") == NoSpace.code \
        else exc.to_dict()
    log.error("job %s: its result does not fit: %s", job_id, exc.message)
    try:
        exchange.finish(claim, Result(job_id=job_id, state="failed", error=error,
                                      started=result.started,
                                      finished=result.finished))
        return "failed"
    except LeaseLost:
        return "lost"
    except OSError as again:
        log.error("job %s: not even a failed result fits (%s); requeueing it",
                  job_id, again)
    try:
        return "requeued" if exchange.release(claim) else "lost"
    except OSError as again:  # the lease did not fit: the sweeper restores it
        log.error("job %s: requeue interrupted (%s); the sweeper restores it",
                  job_id, again)
        return "requeued"


def _internal(job_id: str, stage_name: str | None,
              exc: BaseException) -> InternalError:
    log.error("job %s: internal error in stage %s\n%s", job_id, stage_name,
              "".join(traceback.format_exception(exc)))
    return InternalError(f"internal error: {type(exc).__name__}: {exc} "
                         "(see the engine log)", stage=stage_name)
