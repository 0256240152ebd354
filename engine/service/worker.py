"""The watched-folder engine: claim jobs from an exchange folder and run them.

``serve`` runs one worker loop in this process (``workers == 1``) or supervises N
worker processes that each claim jobs independently (claims are renames, so they
never need to talk to each other). Each loop:

- rescans fully at start-up, then wakes on watchdog events and polls anyway (SMB and
  NFS shares deliver no events);
- requeues running jobs whose lease expired (their worker died) so they resume from
  their checkpoints, moves stray files out of ``new/``, sweeps abandoned ``tmp/``
  entries;
- claims the queued job with the highest priority, the oldest first within a
  priority (:meth:`fsexchange.exchange.Exchange.claim_order`: drafts first), and
  runs it (:func:`engine.service.runner.run_job`).

SIGTERM/SIGINT: the running job is aborted at its next abort check and released to
the queue with its checkpoints; a second signal stops the process at once (the job
is then reclaimed when its lease expires). Worker processes die with their
supervisor: killing the engine outright kills all of it. With several workers the
supervisor tells each to stop through its own pipe (nothing a dead worker held can
block it) and kills those still running half a lease later, so shutdown ends
within the lease period whatever state the workers are in. Nothing here imports
torch, except resolving ``--device auto``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from fsexchange.exchange import FINAL_STATES, Exchange

from engine.devices import resolve_device
from engine.stages.pipeline import PIPELINES
from engine.service.runner import RunnerSettings, run_job
from engine.service.watch import FolderWatch

__all__ = ["EngineOptions", "serve", "worker_id"]

log = logging.getLogger(__name__)

_SAFETY_POLL = 10.0  # seconds between rescans while watchdog delivers events
_SWEEP_EVERY = 60.0  # seconds between tmp/ sweeps
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class EngineOptions:
    """Engine settings (``facestitch engine`` flags).

    Attributes:
        exchange: the exchange folder.
        workers: worker processes; each claims and runs one job at a time.
        once: drain every pending job (reclaiming expired ones too), then return.
        device: "auto" (cuda when available), "cpu", "cuda" or "cuda:N".
        media_roots: folders outside the exchange that jobs may read.
        poll_interval: seconds between rescans without watchdog events.
        lease_seconds: how long a claim lasts without a heartbeat; a job whose
            worker died is reclaimed this long after its last renewal.
        use_watchdog: watch folders for events (else poll only).
        tmp_max_age: seconds after which an untouched ``tmp/`` entry is swept.
        max_reclaims: a job taken from this many dead workers fails
            (``job.crashed``) instead of killing another.
        ocio_config: OpenColorIO config file for jobs that name none ("" = the
            built-in config, docs/colour.md).
        ray: run the units of each stage as tasks on this Ray cluster
            (``HOST:PORT``, ``auto`` or ``local``; docs/scale.md); None: here.
        shards: shards per stage that splits by frames with ``ray`` (0: one per
            task slot of the cluster).
        threads: intra-op threads of the jobs this engine starts (0: torch's
            default); recorded with each job (engine/stages/compute.py).
    """

    exchange: Path
    workers: int = 1
    once: bool = False
    device: str = "auto"
    media_roots: tuple[Path, ...] = ()
    poll_interval: float = 1.0
    lease_seconds: float = 30.0
    use_watchdog: bool = True
    tmp_max_age: float = 3600.0
    max_reclaims: int = 3
    ocio_config: str = ""
    ray: str | None = None
    shards: int = 0
    threads: int = 0


def worker_id() -> str:
    """``host:pid:random`` — unique per worker process start."""
    return f"{socket.gethostname() or 'host'}:{os.getpid()}:{secrets.token_hex(3)}"


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """First SIGTERM/SIGINT sets ``stop``; a second one acts as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        log.info("%s: stopping; a running job is released to the queue",
                 signal.Signals(signum).name)
        stop.set()
        signal.signal(signum, signal.SIG_DFL)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _run_one(ex: Exchange, opts: EngineOptions, settings: RunnerSettings,
             stop: threading.Event, held: dict[str, float] | None = None
             ) -> str | None:
    """Claim the first claimable job in claim order (priority, then age) and run
    it; None if there was none.

    ``held``: job id -> monotonic time before which this worker leaves it alone
    (a job requeued for want of disk space would otherwise come straight back).
    """
    held = {} if held is None else held
    now = time.monotonic()
    for job_id in ex.claim_order():
        if stop.is_set():
            return None
        if held.get(job_id, 0.0) > now:
            continue
        claim = ex.claim(job_id, settings.worker, lease_seconds=opts.lease_seconds)
        if claim is None:
            continue
        try:
            outcome = run_job(ex, claim, settings, stop_event=stop)
        except Exception:  # noqa: BLE001 - e.g. the share went away while publishing
            log.exception("job %s: could not be finished; it will be reclaimed "
                          "when its lease expires", job_id)
            return "error"
        if outcome == "requeued":
            held[job_id] = time.monotonic() + _SWEEP_EVERY
        return outcome
    return None


def _worker_loop(opts: EngineOptions, pipelines: Mapping[str, Sequence[str]],
                 stop: threading.Event, device: str,
                 clock: Callable[[], float] = time.time,
                 on_finished: Callable[[], None] | None = None) -> int:
    ex = Exchange(opts.exchange, clock).ensure()
    if opts.threads:
        _set_threads(opts.threads)
    backend = None
    if opts.ray is not None:
        from engine.service.ray_backend import RayBackend

        backend = RayBackend(opts.ray, shards=opts.shards, pipelines=pipelines)
    settings = RunnerSettings(device=device, media_roots=opts.media_roots,
                              pipelines=dict(pipelines), worker=worker_id(),
                              max_reclaims=opts.max_reclaims,
                              ocio_config=opts.ocio_config, backend=backend)
    reclaim_every = max(0.5, min(opts.lease_seconds / 4.0, 5.0))
    wake = threading.Event()
    watch = FolderWatch([ex.dir("new"), ex.dir("cancel")], wake)
    watching = opts.use_watchdog and watch.start()
    timeout = min(max(opts.poll_interval, _SAFETY_POLL) if watching
                  else opts.poll_interval, reclaim_every)
    log.info("worker %s on %s (device %s, %s)", settings.worker, ex.root, device,
             "watchdog + polling" if watching else f"polling every {timeout:g} s")
    finished = 0
    held: dict[str, float] = {}
    next_reclaim = next_sweep = 0.0
    try:
        while not stop.is_set():
            try:
                now = time.monotonic()
                reclaimed: list[str] = []
                if now >= next_reclaim:
                    ex.quarantine_stray()
                    reclaimed = ex.reclaim_expired(grace=opts.lease_seconds)
                    next_reclaim = now + reclaim_every
                if now >= next_sweep:
                    ex.sweep(max_age=opts.tmp_max_age)
                    next_sweep = now + _SWEEP_EVERY
                outcome = _run_one(ex, opts, settings, stop, held)
                if outcome is not None:
                    if outcome in FINAL_STATES:
                        finished += 1
                        if on_finished is not None:
                            on_finished()
                    continue
                if opts.once:
                    if reclaimed or ex.reclaim_expired(grace=opts.lease_seconds):
                        continue
                    break
            except Exception:  # noqa: BLE001 - one bad moment never stops the engine
                log.exception("engine loop error; retrying")
                if opts.once:
                    raise
            wake.wait(timeout)
            wake.clear()
    finally:
        watch.stop()
    log.info("worker %s: %d job(s) finished", settings.worker, finished)
    return finished


def _set_threads(n: int) -> None:
    """Intra-op threads for the jobs this process starts (before torch is imported,
    through the environment; after, through torch)."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def _die_with_supervisor() -> None:
    """End this worker process at once when its supervisor process dies.

    A supervisor killed outright (SIGKILL, the OOM killer) cannot stop its
    workers, and nobody else would: they would run on unsupervised, claiming jobs
    and deaf to the engine's signals, beside the engines that took over the dead
    one's work. Dying at once, as after a second signal, leaves their jobs to be
    reclaimed when their leases expire, like the jobs of any dead engine.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    armed = False
    if sys.platform.startswith("linux"):
        # The kernel sends it while the supervisor exits, before the supervisor
        # can be reaped: whoever saw the engine die never sees its workers act.
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
            prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
            armed = prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            pass
    if not armed:
        # Elsewhere the supervisor's end closes our sentinel pipe: notice that.
        def watch() -> None:
            multiprocessing.connection.wait([parent.sentinel])
            os._exit(1)

        threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()
    if os.getppid() != parent.pid:  # it died before we asked for its signal
        os._exit(1)


def _child_main(opts: EngineOptions, pipelines: Mapping[str, Sequence[str]],
                stop_conn, counter, device: str, clock: Callable[[], float],
                log_level: int) -> None:
    _die_with_supervisor()
    logging.basicConfig(level=log_level,
                        format="%(levelname)s %(processName)s %(name)s: %(message)s")
    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Share the cores among the worker processes: OpenMP teams that together
        # ask for more threads than there are cores spin at barriers, and small
        # networks then run tens of times slower. Set before torch is imported
        # (spawned children import it only when a stage needs it).
        share = max(1, (os.cpu_count() or 1) // max(1, opts.workers))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(share)
    stop = threading.Event()

    def relay() -> None:  # the parent's stop request (or its end) -> our loop
        try:
            stop_conn.recv()
        except (EOFError, OSError):
            pass
        stop.set()

    threading.Thread(target=relay, name="stop-relay", daemon=True).start()

    def bump() -> None:  # only this process writes its slot: no lock to leave held
        counter.value += 1

    with _stop_on_signals(stop):
        _worker_loop(opts, pipelines, stop, device, clock, bump)


def _supervise(opts: EngineOptions, pipelines: Mapping[str, Sequence[str]],
               stop: threading.Event, device: str,
               clock: Callable[[], float]) -> int:
    ctx = multiprocessing.get_context("spawn")  # no fork after threads / CUDA
    # One finished-jobs counter per worker slot, written only by its worker and
    # without a lock: a worker killed at any moment leaves nothing held. (A shared
    # Event once hung shutdown: a killed worker still counted as its waiter.)
    counters = [ctx.RawValue("q", 0) for _ in range(opts.workers)]
    level = logging.getLogger().getEffectiveLevel()
    child_opts = replace(opts, workers=1)
    pipes: dict[int, multiprocessing.connection.Connection] = {}

    def start(i: int):
        reader, writer = ctx.Pipe(duplex=False)  # the worker reads, we write
        p = ctx.Process(target=_child_main, name=f"worker-{i}",
                        args=(child_opts, dict(pipelines), reader, counters[i],
                              device, clock, level))
        p.start()
        reader.close()
        old = pipes.pop(i, None)
        if old is not None:
            old.close()
        pipes[i] = writer
        return p

    def tell_stop() -> None:
        for conn in pipes.values():
            try:
                conn.send("stop")
            except (OSError, ValueError):
                pass  # that worker is gone already

    procs = {i: start(i) for i in range(opts.workers)}
    restarts: dict[int, float] = {}
    deadline: float | None = None
    while procs:
        if stop.is_set() and deadline is None:
            tell_stop()
            # Half a lease for a running job to be released; then the workers
            # still running are killed and their jobs reclaimed by lease expiry.
            deadline = time.monotonic() + max(0.5, opts.lease_seconds / 2.0)
        if deadline is not None and time.monotonic() >= deadline:
            for i, p in procs.items():
                if p.is_alive():
                    log.error("worker-%d did not stop in time; killing it", i)
                    p.kill()
            for p in procs.values():
                p.join(5.0)
            break
        for i, p in list(procs.items()):
            if p.is_alive():
                continue
            p.join()
            if p.exitcode != 0 and not opts.once and deadline is None:
                # A native crash or OOM kill: its job is reclaimed by lease expiry.
                wait = 1.0 if time.monotonic() - restarts.get(i, -1e9) > 60 else 10.0
                log.error("worker-%d died (exit %s); restarting in %g s", i,
                          p.exitcode, wait)
                if stop.wait(wait):
                    del procs[i]
                    continue
                restarts[i] = time.monotonic()
                procs[i] = start(i)
            else:
                del procs[i]
        stop.wait(0.2)
    for conn in pipes.values():
        conn.close()
    return sum(int(c.value) for c in counters)


def serve(opts: EngineOptions, *, pipelines: Mapping[str, Sequence[str]] | None = None,
          stop_event: threading.Event | None = None,
          clock: Callable[[], float] | None = None) -> int:
    """Run the engine until ``stop_event`` (or a signal), or until drained (``once``).

    Args:
        opts: engine settings.
        pipelines: job kind -> stage references; default :data:`PIPELINES`.
        stop_event: set it to stop (a running job is released to the queue).
        clock: POSIX-seconds clock for leases and sweeping (tests fake it; with
            several workers it must be picklable).

    Returns:
        The number of jobs this engine finished (done, failed or cancelled).
    """
    stop = stop_event or threading.Event()
    device = resolve_device(opts.device)
    table = dict(PIPELINES if pipelines is None else pipelines)
    clock = clock or time.time
    Exchange(opts.exchange).ensure()
    if opts.ray is not None:  # fail at start-up, in one line, not in each worker
        from engine.service.ray_backend import check_address

        check_address(opts.ray)
    with _stop_on_signals(stop):
        if opts.workers <= 1:
            return _worker_loop(opts, table, stop, device, clock)
        return _supervise(opts, table, stop, device, clock)
