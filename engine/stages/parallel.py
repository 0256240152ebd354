"""Data-parallel PTI and temporal refinement over several devices.

A stage with ``data_parallel`` (PTI, refinement) given more than one device
(``facestitch stage run … --devices cuda:0,cuda:1``, ``facestitch engine
--devices …``) runs in one process per device (torch.multiprocessing, spawn). The
processes (*ranks*) form a ``torch.distributed`` group through a file store in
the stage's folder (no network port): gloo on the CPU, NCCL on CUDA. Every rank
runs the stage's own ``run`` with the same seeded frame order; the stage's tuner
is attached to the group (:meth:`RankGroup.attach`), which changes one thing in
its optimiser steps:

- each mini-batch of ``B`` rows is cut into ``W`` contiguous slices (sizes differ
  by at most one, the first ranks take the larger ones); rank ``r`` computes the
  mean loss of its ``k_r`` rows and its gradient;
- before the optimiser steps, the gradients, scaled by ``k_r / B``, are summed
  over the ranks (one all-reduce): the gradient of the whole batch's mean loss.
  Every rank then takes the same optimiser step from the same state, so the
  ranks' parameters stay equal without being broadcast;
- the step's loss figures are averaged the same way, and the ranks agree in the
  same all-reduce whether to stop (a cancel), so all of them stop after the same
  step.

The arithmetic is that of one device computing batch ``B``, except for the order
of the sums (a slice's gradient is summed inside the rank, then across ranks), so
the tuned weights equal a single-device run's within float rounding, not bit for
bit (docs/scale.md "Data-parallel PTI and refinement"). A batch smaller than the
number of devices is refused (``parallel.refused``): a batch-1 recipe would leave
every device but one idle.

Only rank 0 writes (checkpoints, outputs) and reports progress; the others return
after training. The parent process relays rank 0's progress to the stage's
``ctx.report``, polls ``ctx.check_abort`` and tells the ranks to stop; a rank that
dies or fails stops the others and fails the stage with ``parallel.rank_failed``
(a rank's own :class:`FaceStitchError` comes back as itself). Ranks die with the
parent (Linux ``PR_SET_PDEATHSIG``), so no process outlives the stage.
"""

from __future__ import annotations

import logging
import os
import queue as queue_mod
import signal
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from fsexchange.errors import (DataParallelRefused, FaceStitchError, RankFailed,
                               error_from_dict)

from engine.devices import valid_device
from engine.stages.contract import StageAborted

if TYPE_CHECKING:
    from engine.stages.contract import Stage, StageContext

__all__ = ["parse_devices", "execute", "run_data_parallel", "RankGroup", "slices"]

log = logging.getLogger(__name__)

#: seconds the ranks get to stop by themselves after a cancel (rank 0 writes a
#: checkpoint) before they are killed
GRACE = 10.0
#: after a rank's failure: the others wait in a collective that cannot complete
FAIL_GRACE = 2.0
#: at most one progress message from rank 0 per this many seconds
PROGRESS_INTERVAL = 0.25


def parse_devices(text: str) -> tuple[str, ...]:
    """``"cuda:0,cuda:1"`` / ``"cpu,cpu"`` -> the device tuple.

    Every entry is ``cpu`` or ``cuda[:N]``, all of one kind; CUDA devices must be
    distinct (one process per GPU). One entry is a plain single-device run.

    Raises:
        ValueError: the message says what is wrong.
    """
    items = [t.strip() for t in str(text).split(",")]
    if not items or any(not t for t in items):
        raise ValueError(f"--devices {text!r}: expected a comma-separated list of "
                         "devices, e.g. cuda:0,cuda:1 or cpu,cpu")
    for t in items:
        if not valid_device(t) or t == "auto":
            raise ValueError(f"--devices {text!r}: {t!r} is not a device (cpu, cuda "
                             "or cuda:N)")
    kinds = {t.split(":")[0] for t in items}
    if len(kinds) > 1:
        raise ValueError(f"--devices {text!r}: mix of CPU and CUDA devices; one "
                         "kind per job (they compute differently)")
    if "cuda" in kinds:
        idx = [int(t.split(":")[1]) if ":" in t else 0 for t in items]
        if len(set(idx)) != len(idx):
            raise ValueError(f"--devices {text!r}: a GPU is named twice; give each "
                             "GPU once (cuda:0,cuda:1)")
        items = [f"cuda:{i}" for i in idx]
    return tuple(items)


def slices(n: int, world: int) -> list[range]:
    """Rank ``r``'s rows of a batch of ``n``: contiguous, sizes ``⌈n/W⌉`` for the
    first ``n mod W`` ranks and ``⌊n/W⌋`` after (rank 0 is never empty)."""
    out, lo = [], 0
    for r in range(world):
        k = n // world + (r < n % world)
        out.append(range(lo, lo + k))
        lo += k
    return out


def execute(stage: "Stage", ctx: "StageContext") -> dict[str, Any] | None:
    """``stage.run(ctx)``, data-parallel when the stage supports it and the context
    has several devices (the one call the pipeline and the units make)."""
    if stage.data_parallel and len(ctx.devices) > 1 \
            and ctx.parallel is None:
        return run_data_parallel(stage, ctx)
    return stage.run(ctx)


# --- inside a rank ----------------------------------------------------------------


class _AveragedOptimizer:
    """An optimiser whose ``step`` first sums the ranks' weighted gradients; every
    other attribute (``zero_grad``, ``param_groups``, ``state_dict``…) is the
    wrapped optimiser's."""

    def __init__(self, opt: Any, group: "RankGroup") -> None:
        self._opt, self._group = opt, group

    def __getattr__(self, name: str) -> Any:
        return getattr(self._opt, name)

    def step(self, *args: Any, **kwargs: Any) -> Any:
        self._group.average_gradients(self._opt)
        return self._opt.step(*args, **kwargs)


@dataclass
class RankGroup:
    """One rank of a data-parallel stage (``ctx.parallel`` inside the rank).

    Attributes:
        rank, world: this process's index and the number of processes.
        device: its torch device.
        stop_event: set by the parent to stop (a cancel, another rank's failure).
    """

    rank: int
    world: int
    device: str
    stop_event: Any = None
    weight: float = 1.0
    agreed_stop: bool = False
    stepping: bool = False
    steps: int = 0
    tuner: Any = None
    _templates: dict[str, Any] = field(default_factory=dict)

    @property
    def writer(self) -> bool:
        """Only rank 0 writes checkpoints and outputs and reports progress."""
        return self.rank == 0

    def should_stop(self) -> bool:
        """The ranks' ``abort_fn``. While the ranks step together, the stop
        decision agreed in the last step's all-reduce (all ranks stop after the
        same step); before the first and after the last step, the parent's flag."""
        if self.agreed_stop:
            return True
        if self.stepping and self.tuner is not None and self.tuner.done:
            self.stepping = False  # training over: no collective step follows
        if self.stepping:
            return False
        return bool(self.stop_event is not None and self.stop_event.is_set())

    def attach(self, tuner: Any, steps: Mapping[str, str], batch: int) -> None:
        """Make ``tuner``'s optimiser steps data-parallel.

        Args:
            steps: step method name -> the optimiser attribute it steps (PTI:
                ``{"_step": "opt"}``); each method takes the batch's rows first
                and returns its loss figures (a tuple or a dict of floats).
            batch: the tuner's mini-batch size.

        Raises:
            DataParallelRefused: ``batch`` is smaller than the number of devices.
        """
        if batch < self.world:
            raise DataParallelRefused(
                f"the training batch is {batch} frame(s), fewer than the {self.world} "
                "devices: data parallelism splits each step's batch across devices, "
                "so all but one would idle. The 'reference' recipe (the default "
                "with the official networks) trains PTI one frame per step, as STIT "
                "does; for several devices submit with --recipe fast and a "
                "pti.batch_size / refine.batch_size of at least one frame per "
                "device, or use one device (docs/scale.md)", field="devices")
        self.tuner = tuner
        for name, opt_name in steps.items():
            setattr(tuner, name, self._wrap(tuner, name, opt_name,
                                            getattr(tuner, name)))

    def _wrap(self, tuner: Any, name: str, opt_name: str,
              fn: Callable[..., Any]) -> Callable[..., Any]:
        def step(rows: list[int], *args: Any) -> Any:
            opt = getattr(tuner, opt_name)
            if not isinstance(opt, _AveragedOptimizer):  # phase 2's is made late
                opt = _AveragedOptimizer(opt, self)
                setattr(tuner, opt_name, opt)
            self.stepping = True
            rows = list(rows)
            part = [rows[i] for i in slices(len(rows), self.world)[self.rank]]
            self.weight = len(part) / len(rows) if rows else 0.0
            if part:
                out = fn(part, *args)
            else:  # fewer rows than ranks: contribute nothing, step with the rest
                opt.zero_grad(set_to_none=True)
                opt.step()
                out = None
            return self._reduce(name, out, empty=len(rows) < self.world)

        return step

    def average_gradients(self, opt: Any) -> None:
        """Sum ``weight · grad`` over the ranks, in place (one all-reduce); a
        parameter no rank has a gradient for keeps none (as on one device)."""
        import torch
        import torch.distributed as dist

        params = [p for g in opt.param_groups for p in g["params"]]
        if not params:
            return
        dev = params[0].device
        parts = [p.grad.detach().reshape(-1) * self.weight if p.grad is not None
                 else torch.zeros(p.numel(), dtype=p.dtype, device=dev)
                 for p in params]
        has = torch.tensor([float(p.grad is not None) for p in params],
                           dtype=params[0].dtype, device=dev)
        flat = torch.cat(parts + [has])
        dist.all_reduce(flat)
        present = flat[-len(params):].tolist()
        offset = 0
        for p, n in zip(params, present):
            k = p.numel()
            p.grad = flat[offset:offset + k].view_as(p).clone() if n > 0 else None
            offset += k

    def _reduce(self, name: str, out: Any, *, empty: bool) -> Any:
        """The step's loss figures averaged over the whole batch, and the ranks'
        agreement whether to stop after this step."""
        import torch
        import torch.distributed as dist

        template = self._templates.get(name)
        if out is not None and template is None:
            template = (dict, tuple(out)) if isinstance(out, dict) else (
                tuple, len(out))
            self._templates[name] = template
        if empty:  # a rank without rows learns the figures' shape from rank 0
            box = [template if self.rank == 0 else None]
            dist.broadcast_object_list(box, src=0)
            template = self._templates[name] = box[0]
        keys = template[1] if template[0] is dict else range(template[1])
        values = ([0.0] * len(keys) if out is None else
                  [float(out[k]) for k in keys] if template[0] is dict else
                  [float(v) for v in out])
        stop = float(self.stop_event is not None and self.stop_event.is_set())
        dev = self.device if self.device.startswith("cuda") else "cpu"
        t = torch.tensor([v * self.weight for v in values] + [stop],
                         dtype=torch.float64 if dev == "cpu" else torch.float32,
                         device=dev)
        dist.all_reduce(t)
        got = t.tolist()
        self.agreed_stop = got[-1] > 0
        self.steps += 1
        if template[0] is dict:
            return dict(zip(keys, got[:-1]))
        return tuple(got[:-1])


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the parent dies (no orphan ranks)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _rank_main(rank: int, spec: dict[str, Any], events: Any, stop: Any) -> None:
    """One rank: join the group, run the stage, send the outcome to the parent."""
    _die_with_parent()
    if os.getppid() != spec["parent"]:  # the parent died before prctl
        return
    # a terminal's Ctrl-C reaches the whole process group: the parent decides
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import importlib

    import torch
    import torch.distributed as dist

    from engine.stages.compute import pin_threads
    from engine.stages.contract import StageContext

    world, device = len(spec["devices"]), spec["devices"][rank]
    try:
        pin_threads(Path(spec["job_dir"]))
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                                init_method=spec["store"], rank=rank,
                                world_size=world)
        module, _, qual = spec["stage"].partition(":")
        stage = getattr(importlib.import_module(module), qual)()
        group = RankGroup(rank, world, device, stop)
        last = [0.0]

        def report(fraction: float, message: str) -> None:
            now = time.monotonic()
            if rank == 0 and (now - last[0] >= PROGRESS_INTERVAL
                              or fraction in (0.0, 1.0)):
                last[0] = now
                events.put(("progress", rank, (fraction, message)))

        ctx = StageContext(job=spec["job"], job_dir=Path(spec["job_dir"]),
                           config=spec["config"], device=device,
                           media_roots=spec["media_roots"], progress_fn=report,
                           abort_fn=group.should_stop, info=dict(spec["info"]),
                           devices=tuple(spec["devices"]), parallel=group)
        facts = stage.run(ctx) or {}
        events.put(("done", rank, (facts, list(ctx.warnings), ctx.info)
                    if rank == 0 else None))
    except StageAborted:
        events.put(("aborted", rank, None))
    except FaceStitchError as exc:
        events.put(("error", rank, exc.to_dict()))
    except Exception as exc:  # noqa: BLE001 - the parent fails the stage
        events.put(("crash", rank, f"{type(exc).__name__}: {exc}\n"
                    f"{traceback.format_exc(limit=6)}"))
    finally:
        try:
            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a broken group on the way out
            pass


# --- the parent -------------------------------------------------------------------


def run_data_parallel(stage: "Stage", ctx: "StageContext") -> dict[str, Any]:
    """Run ``stage`` over ``ctx.devices``, one process each; returns rank 0's facts.

    Raises:
        StageAborted: ``ctx.check_abort`` asked to stop (every rank stopped).
        FaceStitchError: a rank's error (its own code), or :class:`RankFailed`
            when a rank died or crashed.
    """
    import torch.multiprocessing as tmp

    devices = tuple(ctx.devices)
    world = len(devices)
    pdir = ctx.stage_dir(stage.name) / "parallel"
    pdir.mkdir(exist_ok=True)
    store = pdir / f"store-{uuid.uuid4().hex}"
    mp = tmp.get_context("spawn")
    events, stop = mp.Queue(), mp.Event()
    spec = {"stage": f"{type(stage).__module__}:{type(stage).__qualname__}",
            "job": ctx.job, "job_dir": str(ctx.job_dir), "config": ctx.config,
            "media_roots": tuple(ctx.media_roots), "info": dict(ctx.info),
            "devices": devices, "store": f"file://{store}", "parent": os.getpid()}
    procs = [mp.Process(target=_rank_main, args=(r, spec, events, stop),
                        name=f"facestitch-{stage.name}-rank{r}", daemon=True)
             for r in range(world)]
    log.info("%s: data-parallel over %s", stage.name, ", ".join(devices))
    ctx.report(0.0, f"starting {world} processes ({', '.join(devices)})")
    outcome: dict[int, tuple[str, Any]] = {}
    aborted = False
    deadline: float | None = None
    try:
        for p in procs:
            p.start()
        while True:
            try:
                kind, rank, data = events.get(timeout=0.1)
            except queue_mod.Empty:
                kind = ""
            if kind == "progress":
                ctx.report(*data)
            elif kind:
                outcome.setdefault(rank, (kind, data))
                if kind != "done" and deadline is None:
                    stop.set()
                    deadline = time.monotonic() + (
                        GRACE if kind == "aborted" else FAIL_GRACE)
            if not aborted and ctx.abort_fn():
                aborted = True
                stop.set()
                deadline = deadline or time.monotonic() + GRACE
            for r, p in enumerate(procs):
                if p.exitcode not in (None, 0) and r not in outcome:
                    time.sleep(0.2)  # its last message may still be in the pipe
                    _drain(events, outcome, ctx)
                    outcome.setdefault(r, ("died", p.exitcode))
                    if deadline is None:
                        stop.set()
                        deadline = time.monotonic() + FAIL_GRACE
            if all(p.exitcode is not None for p in procs):
                _drain(events, outcome, ctx)
                break
            if deadline is not None and time.monotonic() > deadline:
                break
    finally:
        _end(procs)
        store.unlink(missing_ok=True)
        try:
            pdir.rmdir()  # unless another run of the stage uses it now
        except OSError:
            pass
        events.close()
    return _result(stage, ctx, devices, outcome, aborted)


def _drain(events: Any, outcome: dict[int, tuple[str, Any]],
           ctx: "StageContext") -> None:
    while True:
        try:
            kind, rank, data = events.get_nowait()
        except (queue_mod.Empty, OSError, ValueError):
            return
        if kind == "progress":
            ctx.report(*data)
        else:
            outcome.setdefault(rank, (kind, data))


def _end(procs: list[Any]) -> None:
    """Every rank gone: a short wait, then SIGTERM, then SIGKILL."""
    t_end = time.monotonic() + 2.0
    for p in procs:
        p.join(max(0.0, t_end - time.monotonic()))
    for sig in ("terminate", "kill"):
        alive = [p for p in procs if p.is_alive()]
        for p in alive:
            getattr(p, sig)()
        for p in alive:
            p.join(3.0)


def _result(stage: "Stage", ctx: "StageContext", devices: tuple[str, ...],
            outcome: Mapping[int, tuple[str, Any]], aborted: bool) -> dict[str, Any]:
    errors = [(r, d) for r, (k, d) in sorted(outcome.items()) if k == "error"]
    if errors:  # a rank's own FaceStitch error, as a single process reports it
        raise error_from_dict({**errors[0][1], "stage": stage.name})
    if aborted:
        raise StageAborted()
    # a rank that died first: the others' errors (a closed connection) follow
    bad = sorted(((r, k, d) for r, (k, d) in outcome.items()
                  if k in ("died", "crash")), key=lambda b: (b[1] != "died", b[0]))
    if bad or any(r not in outcome or outcome[r][0] != "done"
                  for r in range(len(devices))):
        if bad:
            r, kind, data = bad[0]
            why = (_exit_text(data) if kind == "died"
                   else f"failed: {str(data).splitlines()[0]}")
            for rr, kk, dd in bad:
                if kk == "crash":
                    log.log(logging.ERROR if rr == r else logging.INFO,
                            "%s rank %d: %s", stage.name, rr, dd)
        else:
            r = next(r for r in range(len(devices))
                     if r not in outcome or outcome[r][0] != "done")
            why = ("stopped" if r in outcome
                   else "did not finish")
        raise RankFailed(f"data-parallel {stage.name}: the process for device "
                         f"{devices[r]} (rank {r} of {len(devices)}) {why}; the "
                         "other ranks were stopped. The stage resumes from its last "
                         "checkpoint when run again", stage=stage.name)
    facts, warnings, info = outcome[0][1]
    for w in warnings:
        ctx.warn(w)
    ctx.info.update(info)
    return dict(facts, devices=list(devices))


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed ({name})"
    return f"exited with status {code}"
