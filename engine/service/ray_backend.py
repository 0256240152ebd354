"""Run the units of each stage as Ray tasks (``facestitch engine --ray ADDRESS``).

The engine still claims jobs, holds their leases and is the one writer of every
job-level document (``progress.msgpack``, ``result.msgpack``, each stage's
``DONE.msgpack``): :func:`engine.service.runner.run_job` runs the usual
:func:`engine.stages.pipeline.run_pipeline` loop, over stages wrapped by
:meth:`RayBackend.wrap`. A wrapped stage sends its units to the cluster: the shards
of a stage that splits by frames, one task each, then its final unit; a stage that
runs as one unit, one task. Each task runs :func:`engine.stages.units.run_unit` in
the job folder, which every Ray node must see at the same path (shared storage).

- Resources: ``num_gpus=1`` per task when the engine's device is CUDA, else
  ``num_cpus`` = the job's pinned thread count (engine/stages/compute.py), so a
  task never computes with more threads than Ray reserved for it.
- Failures: a task whose worker process dies, or that raises an unexpected
  exception, is retried by Ray (``max_retries``) and resumes from the parts the
  killed attempt finished. Errors a user can fix (``FaceStitchError``) come back
  as data and are not retried: they fail the job like any stage error.
- Cancel, shutdown, a lost lease: the engine's abort check stops the wait, the
  running tasks are cancelled (``ray.cancel``: KeyboardInterrupt in the task, then
  force after a grace period), and the units also poll the job's cancel request.
- Progress: each unit writes ``stages/<stage>/units/<unit>.msgpack``; the wait loop
  aggregates them into the stage's fraction, which the runner turns into
  ``Progress/1``.

Ray is optional (``pip install 'facestitch[ray]'``); nothing imports this module
unless ``--ray`` is given.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from fsexchange.errors import (DataParallelRefused, FaceStitchError, InternalError,
                               JobCrashed, error_from_dict)

from engine.stages.compute import recorded_threads
from engine.stages.contract import Shard, Stage, StageAborted, StageContext
from engine.stages.pipeline import PIPELINES
from engine.stages.units import read_unit_progress

__all__ = ["RayBackend", "RayUnreachable", "connect", "check_address", "RayStage"]

log = logging.getLogger(__name__)

#: seconds a cancelled task gets to stop before its worker is killed
CANCEL_GRACE = 10.0
#: share of a split stage's progress that its shards make (the rest: final unit)
SHARDS_SHARE = 0.9


class RayUnreachable(RuntimeError):
    """The Ray cluster named by ``--ray`` cannot be reached (the engine exits)."""


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast, with what to do, when ``host:port`` does not accept connections
    (``ray.init`` would retry for a minute before saying less)."""
    if address in ("auto", "local") or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise RayUnreachable(f"--ray {address!r}: expected HOST:PORT of the Ray "
                             "cluster's head (GCS), 'auto' or 'local'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout):
            pass
    except OSError as exc:
        raise RayUnreachable(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}): "
            "is its head running ('ray start --head' prints the address), and is "
            "the port open from this machine?") from None


def connect(address: str) -> None:
    """Connect this process to the Ray cluster at ``address`` (``HOST:PORT``,
    ``auto`` = the cluster this machine belongs to or ``RAY_ADDRESS``, ``local`` = a
    private cluster started here, ``ray://...`` = Ray Client).

    Raises:
        RayUnreachable: no cluster there.
    """
    check_address(address)
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"namespace": "facestitch", "log_to_driver": True}
    if address == "local":
        kwargs["include_dashboard"] = False
    else:
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnreachable(f"cannot connect to the Ray cluster at {address}: "
                             f"{exc}") from None
    log.info("connected to Ray at %s: %s", address, ray.cluster_resources())


def _unit_task(job_dir: str, stage: str, shard: tuple[int, int] | None, device: str,
               media_roots: list[str], threads: int,
               pipelines: dict[str, list[str]],
               devices: list[str] | None = None) -> dict[str, Any]:
    """One unit in a Ray worker. ``FaceStitchError`` comes back as data (so Ray
    does not retry what only the user can fix); anything else raises, and Ray
    retries the task. ``devices``: a data-parallel unit's devices (the GPUs Ray
    gave the task are ``cuda:0``… under its ``CUDA_VISIBLE_DEVICES``)."""
    from engine.stages.units import run_unit

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s")
    worker = f"ray:{socket.gethostname()}:{os.getpid()}"
    try:
        out = run_unit(Path(job_dir), stage, Shard(*shard) if shard else None,
                       device=device, media_roots=[Path(r) for r in media_roots],
                       threads=threads, worker=worker, write_done=False,
                       pipelines=pipelines, devices=tuple(devices or ()))
    except FaceStitchError as exc:
        return {"error": exc.to_dict()}
    except StageAborted:
        return {"aborted": True}
    return {"facts": out.facts, "warnings": out.warnings, "info": out.info,
            "seconds": out.seconds, "skipped": out.skipped, "worker": worker}


def _check_fits(stage: str, kind: str, need: int) -> None:
    """A task the cluster can never place would wait forever: refuse it."""
    import ray

    have = int(ray.cluster_resources().get(kind, 0))
    if have < need:
        raise DataParallelRefused(
            f"a data-parallel {stage} task needs {need} {kind}s of the Ray cluster, "
            f"which has {have}: give --devices fewer entries (or --threads fewer "
            "threads)", stage=stage, field="devices")


class RayStage(Stage):
    """A stage whose units run on the Ray cluster (what :meth:`RayBackend.wrap`
    gives the pipeline loop); same name, weight and split as the stage."""

    def __init__(self, stage: Stage, backend: "RayBackend") -> None:
        self.inner, self.backend = stage, backend
        self.name = stage.name  # type: ignore[misc]
        self.split = stage.split  # type: ignore[misc]
        self.weight = float(getattr(stage, "weight", 1.0))

    def run(self, ctx: StageContext) -> dict[str, Any] | None:
        return self.backend.run_stage(self.inner, ctx)


class RayBackend:
    """Sends the units of a job's stages to a Ray cluster.

    Args:
        address: see :func:`connect` (called here).
        shards: shards per stage that splits by frames; 0 = one per task slot of
            the cluster (GPUs, or CPUs over the job's threads).
        max_retries: Ray's retries of a task whose worker died or that raised.
        pipelines: job kind -> stage references, as the tasks must import them.
        devices: several: a unit of a data-parallel stage (PTI, refinement) asks
            for that many GPUs (or that many times the job's CPU threads) and
            runs data-parallel over them (engine/stages/parallel.py); only their
            count and kind matter, Ray picks the GPUs.
    """

    def __init__(self, address: str, *, shards: int = 0, max_retries: int = 3,
                 pipelines: Mapping[str, Sequence[str]] | None = None,
                 devices: Sequence[str] = ()) -> None:
        connect(address)
        self.devices = tuple(devices)
        self.address, self.shards, self.max_retries = address, shards, max_retries
        self.pipelines = {k: list(v) for k, v in (pipelines or PIPELINES).items()}
        #: what ran: per unit its stage, shard, seconds inside the task and from
        #: submission to result (bench/scale.py reads the difference: overhead)
        self.units: list[dict[str, Any]] = []
        import ray

        self._remote = ray.remote(_unit_task)

    def wrap(self, stages: Sequence[Stage]) -> list[Stage]:
        return [RayStage(s, self) for s in stages]

    def slots(self, gpu: bool, threads: int) -> int:
        """Tasks the cluster runs at once."""
        import ray

        res = ray.cluster_resources()
        if gpu:
            return max(1, int(res.get("GPU", 0)))
        return max(1, int(res.get("CPU", 1)) // max(1, threads))

    def run_stage(self, stage: Stage, ctx: StageContext) -> dict[str, Any]:
        """Run ``stage`` of ``ctx.job_dir`` on the cluster; returns its facts (the
        caller writes ``DONE.msgpack``). Warnings and info of the units join
        ``ctx``'s."""
        gpu = ctx.device.startswith("cuda")
        threads = recorded_threads(ctx.job_dir) or 1
        device = "cuda" if gpu else ctx.device
        opts: dict[str, Any] = {"max_retries": self.max_retries,
                                "retry_exceptions": True,
                                "num_cpus": 1 if gpu else threads,
                                "num_gpus": 1 if gpu else 0}
        args = (str(ctx.job_dir), stage.name, device,
                [str(r) for r in ctx.media_roots], threads, self.pipelines)
        many = len(self.devices)
        if stage.data_parallel and many > 1:
            # one task holding several devices, one process on each
            opts.update(num_gpus=many if gpu else 0,
                        num_cpus=1 if gpu else threads * many)
            _check_fits(stage.name, "GPU" if gpu else "CPU",
                        opts["num_gpus"] if gpu else opts["num_cpus"])
            args += ([f"cuda:{i}" for i in range(many)] if gpu else ["cpu"] * many,)
        n = self.shards or self.slots(gpu, threads)
        if stage.split == "frames" and n > 1:
            shards = [Shard(i, n) for i in range(n)]
            outs = self._wait(ctx, stage.name, {
                self._remote.options(**opts).remote(args[0], args[1], (s.index, n),
                                                    *args[2:]): s for s in shards},
                0.0, SHARDS_SHARE)
            for out in outs:
                for w in out.get("warnings", []):
                    ctx.warn(w)
        final = self._wait(ctx, stage.name, {
            self._remote.options(**opts).remote(args[0], args[1], None, *args[2:]):
            None}, SHARDS_SHARE if stage.split == "frames" and n > 1 else 0.0, 1.0)[0]
        for w in final.get("warnings", []):
            ctx.warn(w)
        ctx.info.update(final.get("info", {}))
        return dict(final.get("facts", {}))

    def _wait(self, ctx: StageContext, stage: str, refs: dict[Any, Shard | None],
              lo: float, hi: float) -> list[dict[str, Any]]:
        """Wait for the tasks ``refs`` (ref -> shard), reporting their aggregated
        progress between ``lo`` and ``hi`` of the stage; returns their results in
        the order given."""
        import ray

        order = list(refs)
        results: dict[Any, dict[str, Any]] = {}
        pending = list(order)
        t0 = time.monotonic()
        try:
            while pending:
                ctx.check_abort()
                ready, pending = ray.wait(pending, num_returns=len(pending),
                                          timeout=0.25)
                for ref in ready:
                    results[ref] = self._outcome(ref, stage, refs[ref], ctx)
                    self.units.append({
                        "job": ctx.job.id, "stage": stage,
                        "shard": str(refs[ref]) if refs[ref] else None,
                        "task": results[ref].get("seconds", 0.0),
                        "round_trip": round(time.monotonic() - t0, 3),
                        "worker": results[ref].get("worker", "")})
                fractions = [1.0 if r in results else
                             float((read_unit_progress(ctx.job_dir, stage, refs[r])
                                    or {}).get("fraction", 0.0)) for r in order]
                whole = sum(fractions) / len(fractions)
                ctx.report(lo + (hi - lo) * whole,
                           f"{len(results)}/{len(order)} Ray task(s) done, "
                           f"{time.monotonic() - t0:.0f} s")
        except BaseException:
            self._cancel(pending)
            raise
        return [results[r] for r in order]

    def _outcome(self, ref: Any, stage: str, shard: Shard | None,
                 ctx: StageContext) -> dict[str, Any]:
        import ray
        from ray.exceptions import RayTaskError, TaskCancelledError, WorkerCrashedError

        what = f"stage {stage} {'shard ' + str(shard) if shard else 'unit'}"
        try:
            out = ray.get(ref)
        except TaskCancelledError:
            raise StageAborted() from None
        except WorkerCrashedError as exc:
            raise JobCrashed(f"the Ray workers running {what} died "
                             f"{self.max_retries + 1} times (out of memory? a "
                             f"native crash?): {exc}", stage=stage) from None
        except RayTaskError as exc:
            log.error("%s failed on the cluster after %d retries:\n%s", what,
                      self.max_retries, exc)
            raise InternalError(f"{what} failed on the Ray cluster: "
                                f"{type(exc.cause).__name__}: {exc.cause} (see the "
                                "engine log)", stage=stage) from None
        if "error" in out:
            raise error_from_dict(out["error"])
        if out.get("aborted"):
            # The unit saw the job's cancel request (or its folder move) first;
            # stop once the engine knows why, so the runner ends the job right.
            deadline = time.monotonic() + CANCEL_GRACE
            while time.monotonic() < deadline:
                ctx.check_abort()
                time.sleep(0.05)
            raise InternalError(f"{what} stopped on the cluster, but the job was "
                                "neither cancelled nor taken away", stage=stage)
        return out

    def _cancel(self, refs: list[Any]) -> None:
        """Stop running tasks: KeyboardInterrupt in each, then kill the workers of
        those still running after :data:`CANCEL_GRACE`."""
        import ray

        if not refs:
            return
        for ref in refs:
            ray.cancel(ref, force=False)
        _, left = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE)
        for ref in left:
            ray.cancel(ref, force=True)
        log.info("cancelled %d Ray task(s)", len(refs))
