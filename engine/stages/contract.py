"""The stage contract: what every pipeline stage receives and must honour.

A stage is one pipeline noun (``track``, ``align``, ``invert``, ``pti``, ``edit``,
``refine``, ``stitch_tune``, ``paste``, ``report``) living in its own module with its
own frozen config. It reads the outputs of earlier stages through ``ctx.files`` (typed
accessors, :mod:`engine.stages.outputs`), writes its own outputs into
``ctx.stage_dir(self.name)``, reports progress through ``ctx.report`` and polls
``ctx.check_abort()`` often (at least once a second of work). Inputs and outputs are
files and small documents, never process state, so a stage can run in another
process or on another machine and can resume after a crash:

- The pipeline marks a stage complete by writing ``stages/<name>/DONE.msgpack``
  after ``run`` returns; a completed stage is never run again for that job.
- Inside a long stage, save a resumable checkpoint with :func:`save_checkpoint`
  (atomic; pass ``fence=ctx.fence``, so a worker that lost the job never writes
  into its new owner's folder) and, at the start of ``run``, continue from it if
  it exists.
- ``run`` must be deterministic given its inputs and config (seeded), so a resumed
  job delivers the same frames as an uninterrupted one (within float tolerance).

A stage also says how a scheduler may split it (``Stage.split``, docs/scale.md):
``"one"`` runs as one unit; ``"frames"`` runs as shards over its work items (the
batches it already computes one by one) and then one final unit. A shard run gets
``ctx.shard`` and computes only the items ``ctx.in_shard`` admits, leaving their
resumable parts behind; the final unit is a plain ``run`` that finds every part done
and merges them, exactly like a run resumed after a crash. Shards are whole batches,
so every frame is computed with the arithmetic of a single-process run.
"""

from __future__ import annotations

import io
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from fsexchange.documents import Job
from fsexchange.fsutil import atomic_write_bytes, check_regular
from fsexchange.options import PipelineConfig
from fsexchange.paths import confine

from engine.stages.outputs import STAGES_DIR, JobFiles

if TYPE_CHECKING:
    from engine.models.modelset import ModelSet

__all__ = ["Stage", "StageContext", "StageAborted", "Shard", "SPLITS",
           "save_checkpoint", "load_checkpoint"]

#: ``Stage.split`` values: one unit, or shards over frame batches + a final unit.
SPLITS = ("one", "frames")


class StageAborted(Exception):
    """Raised by :meth:`StageContext.check_abort`; the runner decides whether the
    job ends ``cancelled`` (a cancel request) or is released for another worker
    (shutdown, lost lease). Not a user-facing error."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based) of a stage that splits by frames."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: the index must be 0 "
                             f"to {self.count - 1}")

    def items(self, total: int) -> range:
        """This shard's contiguous block of a stage's ``total`` work items:
        ``[index·total // count, (index + 1)·total // count)`` (empty when there
        are fewer items than shards)."""
        return range(self.index * total // self.count,
                     (self.index + 1) * total // self.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass
class StageContext:
    """Everything a stage may use. Created by the runner for each stage.

    Attributes:
        job: the validated ``Job/1``.
        job_dir: the claimed job folder; stages write only below ``stages/`` and
            ``output/``.
        config: the resolved pipeline configuration.
        device: torch device string ("cpu", "cuda", "cuda:1").
        media_roots: folders outside the exchange the engine may read.
        progress_fn: ``(fraction of this stage in 0..1, message)``.
        abort_fn: returns True when the stage must stop soon.
        warnings: user-visible notes collected into ``Result/1.warnings``.
        info: small JSON-able facts collected into ``Result/1`` (models used...).
        fence_fn: raises ``LeaseLost`` when this worker no longer holds the job
            (the runner binds it to the claim's lease epoch).
        reuse_models: take the networks from the worker's cache
            (:func:`engine.models.modelset.cached_models`; drafts) instead of
            loading them for this stage (and emptying the cache).
        shard: the shard this unit computes; None for a whole run (or the final
            unit after the shards).
    """

    job: Job
    job_dir: Path
    config: PipelineConfig
    device: str = "cpu"
    media_roots: tuple[Path, ...] = ()
    progress_fn: Callable[[float, str], None] = lambda f, m: None
    abort_fn: Callable[[], bool] = lambda: False
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    fence_fn: Callable[[], None] = lambda: None
    reuse_models: bool = False
    shard: Shard | None = None

    # No ``parents=True`` below: a worker that lost its lease finds its job folder
    # moved away, and must fail there rather than re-create a half job in ``cur/``.
    @property
    def files(self) -> JobFiles:
        """Typed access to every stage's files in this job folder."""
        return JobFiles(self.job_dir)

    def stage_dir(self, name: str) -> Path:
        d = self.job_dir / STAGES_DIR / name
        d.parent.mkdir(exist_ok=True)
        d.mkdir(exist_ok=True)
        return d

    def output_dir(self) -> Path:
        d = self.job_dir / "output"
        d.mkdir(exist_ok=True)
        return d

    def report(self, fraction: float, message: str = "") -> None:
        self.progress_fn(min(1.0, max(0.0, float(fraction))), message)

    def check_abort(self) -> None:
        if self.abort_fn():
            raise StageAborted()

    def fence(self) -> None:
        """Call before a write another worker could see (checkpoints, DONE):
        raises ``LeaseLost`` once another worker owns the job."""
        self.fence_fn()
    def in_shard(self, item: int, total: int) -> bool:
        """Whether work item ``item`` of ``total`` is this unit's to compute:
        always in a whole run, only the shard's block in a shard run."""
        return self.shard is None or item in self.shard.items(total)

    def done_by_shards(self, stage: str, total: int) -> set[int]:
        """The work items (of ``total``) that finished shards of ``stage`` computed:
        a final unit lists them without redoing them, and a part it finds there is
        not a resumed one."""
        return {k for i, n in self.files.of(stage).finished_shards()
                for k in Shard(i, n).items(total)}

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def source_path(self) -> Path:
        """The job's media path, confined to the job folder or the media roots."""
        return confine(self.job.source.path, self.job_dir, self.media_roots,
                       field="source.path")


    def load_models(self) -> "ModelSet":
        """The job's networks on the job's device. Records what was used in the
        result (``Result/1.models``) and warns loudly for the tiny profile."""
        from engine.models import cache
        from engine.models.modelset import cached_models, load_models

        if self.reuse_models:
            models = cached_models(self.config.profile, device=self.device)
        else:
            cache.clear()  # never two model sets in memory: a full job's own load
            models = load_models(self.config.profile, device=self.device)
        self.info["models"] = dict(models.info)  # the runner stores it msgpack-safe
        if models.profile == "tiny" or models.info.get("tiny"):
            self.warn("tiny test networks — not a real edit: the official models are "
                      "not installed (facestitch models install), so this job ran on "
                      "small randomly initialised networks.")
        return models


class Stage(ABC):
    """One pipeline stage. Subclasses set ``name`` and implement :meth:`run`."""

    name: ClassVar[str] = ""
    #: how a scheduler may split the stage: "one" unit, or "frames" (shards over
    #: its frame batches, honouring ``ctx.shard``, then a final unit)
    split: ClassVar[str] = "one"

    def applies(self, config: PipelineConfig) -> bool:
        """Whether the stage is part of a job with this configuration; one that is
        not is left out of the job's pipeline (``stitch.tune`` off leaves out
        stitching tuning and brings in the naive render)."""
        return True

    @abstractmethod
    def run(self, ctx: StageContext) -> dict[str, Any] | None:
        """Do the work; return small facts for the result (e.g. ``{"frames": n}``)."""


def save_checkpoint(path: str | os.PathLike[str], obj: Any, *,
                    fence: Callable[[], None] | None = None) -> None:
    """Atomically ``torch.save`` ``obj`` (state dicts, tensors, plain data);
    ``fence`` (``ctx.fence``) is called just before the file is published."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    if fence is not None:
        fence()
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike[str], map_location: str = "cpu") -> Any:
    """Load a checkpoint written by :func:`save_checkpoint` without running code."""
    import torch

    check_regular(path, follow_symlinks=False)  # a pipe would block torch.load
    return torch.load(path, map_location=map_location, weights_only=True)
