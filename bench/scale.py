"""Scale-out on Ray: one tiny-profile job on 1 and 2 Ray workers of a local cluster
(this machine, loopback), side by side with the single-process engine, and a
projection to 8 GPUs x N machines (docs/scale.md "Speed").

What runs, in turn, on the same job (a real-face clip, tiny profile, CPU, one
intra-op thread per unit so two workers never share a core's threads):

1. the single-process engine (the runner as ``facestitch engine --threads 1`` runs
   it);
2. ``--ray`` on a local cluster with 1 CPU (one task at a time; the frame stages
   run as one unit each);
3. ``--ray`` on a local cluster with 2 CPUs (the frame stages as 2 shards and a
   final unit).

Printed per stage: seconds in each run (each stage's wall time as the engine saw
it, task dispatch included), the ratio 1 worker / 2 workers, how busy the shards
kept the workers, and the task overhead per unit: the time from a unit's
submission to its result minus the time inside the task (dispatch, a worker
process's start and imports, the engine's polling), and the round trip of a unit
that has nothing to do (a completed stage asked again) on a warm worker. Every run
must deliver the same frames (checked). The projection applies the measured split
(stages that shard vs. stages that run as one unit) and overhead to G devices.

    python bench/scale.py                       # ~3 minutes on 2 idle CPU cores
    python bench/scale.py --frames 24 --stitch-steps 80 --json out.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Ray on one machine over loopback only (read when ray is first imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_job(work: Path, frames: int, pti: int, stitch: int, job_id: str) -> Any:
    from fractions import Fraction

    from fsexchange.documents import Edit, FrameRange, Job, Source

    options = {"profile": "tiny", "device": "cpu", "invert": {"batch_size": 2},
               "pti": {"steps": pti, "lr": 1e-3, "batch_size": 4},
               "stitch": {"steps": stitch, "batch_size": 2},
               "metrics": {"enabled": False}}
    return Job(id=job_id, source=Source("media/clip.mp4"),
               range=FrameRange(0, frames, Fraction(25)),
               edits=(Edit("age", -4.0),), options=options)


def run(exchange: Path, clip: Path, job: Any, ray_cpus: int | None,
        shards: int = 0) -> dict[str, Any]:
    """One job through the engine's runner in this process (claimed as an engine
    worker claims it), its units in this process or on a fresh local Ray cluster
    of ``ray_cpus`` CPUs; returns its figures."""
    from engine.service.runner import RunnerSettings, run_job
    from engine.service.worker import worker_id
    from engine.stages.outputs import JobFiles
    from fsexchange.client import job_status, submit_job
    from fsexchange.exchange import Exchange

    submit_job(exchange, job, attachments={"media/clip.mp4": clip})
    ex = Exchange(exchange)
    backend = None
    if ray_cpus is not None:
        import ray

        from engine.service.ray_backend import RayBackend

        ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
        backend = RayBackend("auto", shards=shards)
    try:
        claim = ex.claim(job.id, worker_id(), lease_seconds=600)
        t0 = time.monotonic()
        state = run_job(ex, claim, RunnerSettings(device="cpu", worker=claim.worker,
                                                  backend=backend))
        wall = time.monotonic() - t0
        assert state == "done", job_status(exchange, job.id).error
        noop = _noop_units(job_status(exchange, job.id).folder) if ray_cpus else []
    finally:
        if ray_cpus is not None:
            import ray

            ray.shutdown()
    st = job_status(exchange, job.id)
    hashes = [hashlib.sha256((st.folder / f.path).read_bytes()).hexdigest()
              for f in st.result.frames]
    files = JobFiles(st.folder)
    shards_s = {s.name: [r["seconds"] for r in files.of(s.name).shard_records()]
                for s in st.result.stages}
    return {"wall": wall, "stages": {s.name: s.seconds for s in st.result.stages},
            "shards": {k: v for k, v in shards_s.items() if v}, "frames": hashes,
            "noop": noop, "units": backend.units if backend else [],
            "cpu": _load()}


def _load() -> float | None:
    """The machine's 1-minute load average (other tenants' work shows here)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _noop_units(job_dir: Path, rounds: int = 6) -> list[float]:
    """Round trips of units with nothing to do (completed stages) on warm
    workers: dispatch, job folder checks, result."""
    import ray

    from engine.service.ray_backend import _unit_task
    from engine.stages.pipeline import PIPELINES

    task = ray.remote(_unit_task).options(num_cpus=1)
    args = (str(job_dir), "paste", None, "cpu", [str(job_dir.parent.parent)], 1,
            {k: list(v) for k, v in PIPELINES.items()})
    out = []
    ray.get(task.remote(*args))  # warm: the worker imports the engine once
    for _ in range(rounds):
        t0 = time.perf_counter()
        res = ray.get(task.remote(*args))
        out.append(time.perf_counter() - t0)
        assert res.get("skipped"), res
    return out


def _split_stages() -> set[str]:
    from engine.stages.pipeline import stages_for

    return {s.name for s in stages_for("stitch") if s.split == "frames"}


SPLIT = _split_stages()  # the stages that split by frames


def project(stages: dict[str, float], overhead: float, devices: int) -> float:
    """Seconds of the job on ``devices`` task slots: stages that split by frames
    divide by the slots (one shard each) plus a final unit; the others run as one
    unit; every unit pays ``overhead``."""
    total = 0.0
    for name, sec in stages.items():
        if name in SPLIT and devices > 1:
            total += sec / devices + 2 * overhead
        else:
            total += sec + overhead
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/scale.py", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--pti-steps", type=int, default=4)
    p.add_argument("--stitch-steps", type=int, default=60)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fs-scale-") as tmp:
        work = Path(tmp)
        os.environ["FACESTITCH_HOME"] = str(work / "home")
        from engine.media.samples import astronaut_clip

        clip = astronaut_clip(work / "clip.mp4", frames=args.frames, size=(192, 144),
                              face_scale=0.45)
        import torch

        from engine.models.modelset import load_models

        torch.set_num_threads(1)
        load_models("tiny")  # built once here, not inside the first timed run
        figs: dict[str, Any] = {}
        for label, cpus, shards in (("single", None, 0), ("ray1", 1, 1),
                                    ("ray2", 2, 2)):
            job = make_job(work, args.frames, args.pti_steps, args.stitch_steps,
                           f"bench-{label}")
            print(f"running {label} ...", flush=True)
            figs[label] = run(work / f"ex-{label}", clip, job, cpus, shards)
    same = figs["single"]["frames"] == figs["ray1"]["frames"] == figs["ray2"][
        "frames"]
    names = list(figs["single"]["stages"])
    units1 = len(names)
    units2 = len(names) + 2 * len(SPLIT & set(names))
    gaps = [u["round_trip"] - u["task"] for k in ("ray1", "ray2")
            for u in figs[k]["units"]]
    over = statistics.median(gaps)
    cold = [figs[k]["units"][0]["round_trip"] - figs[k]["units"][0]["task"]
            for k in ("ray1", "ray2")]
    noop = statistics.median(figs["ray1"]["noop"] + figs["ray2"]["noop"])
    print(f"\n{args.frames} frames, tiny profile, CPU, 1 thread per unit; "
          f"PTI {args.pti_steps} passes, stitching {args.stitch_steps} steps; "
          f"frames identical in all three runs: {same}\n")
    print("| stage | single process | Ray, 1 worker | Ray, 2 workers | "
          "1 / 2 workers |")
    print("|---|---|---|---|---|")
    for n in names:
        a, b, c = (figs[k]["stages"][n] for k in ("single", "ray1", "ray2"))
        print(f"| {n}{' (2 shards)' if n in SPLIT else ''} | {a:.2f} s | {b:.2f} s"
              f" | {c:.2f} s | {b / c:.2f}x |")
    for n, secs in figs["ray2"]["shards"].items():
        stage = figs["ray2"]["stages"][n]
        print(f"|   {n}: the 2 shards ran {secs[0]:.2f} s and {secs[1]:.2f} s "
              f"in the tasks; busy {sum(secs) / stage:.2f} workers on average | "
              "| | | |")
    w = {k: figs[k]["wall"] for k in figs}
    print(f"| job (engine wall time) | {w['single']:.1f} s | {w['ray1']:.1f} s | "
          f"{w['ray2']:.1f} s | {w['ray1'] / w['ray2']:.2f}x |")
    print("load average (1 min) after each run: " + ", ".join(
        f"{k} {figs[k]['cpu']:.1f}" for k in figs if figs[k]["cpu"] is not None))
    print(f"\ntask overhead per unit (submission to result minus the time inside "
          f"the task): median {over:.2f} s over {len(gaps)} units ({units1} with 1 "
          f"worker, {units2} with 2); the first unit of a run, on a fresh worker "
          f"process: {cold[0]:.1f} s and {cold[1]:.1f} s; a unit with nothing to do"
          f" on a warm worker: {noop * 1000:.0f} ms (median of "
          f"{len(figs['ray1']['noop']) * 2})")
    ray1 = sum(figs["ray1"]["stages"].values())
    single = sum(figs["single"]["stages"].values())
    print(f"stage times summed: single process {single:.1f} s, Ray 1 worker "
          f"{ray1:.1f} s ({(ray1 - single) / units1:+.2f} s per unit)")
    base = figs["ray1"]["stages"]
    compute = {n: max(0.0, base[n] - over) for n in names}
    print("\nprojection from the 1-worker stage times (minus the overhead):")
    for g in (1, 2, 8, 16, 32):
        t = project(compute, over, g)
        print(f"  {g:3d} task slots: {t:7.1f} s, {project(compute, over, 1) / t:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({
            "args": vars(args) | {"json": str(args.json)}, "figures": figs,
            "overhead_per_unit": over, "cold_unit": cold, "noop_unit_median": noop,
            "units": {"ray1": units1, "ray2": units2}, "same_frames": same},
            indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
