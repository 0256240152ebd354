"""Data-parallel PTI and refinement (``--devices``) against one device: wall time
and how far the tuned weights are apart (docs/scale.md "Data-parallel PTI and
refinement").

One tiny-profile job (a real-face clip, CPU, one intra-op thread per process) is
taken through ``invert`` once; then PTI runs in a copy of it on one device and in
another copy on ``--devices`` (default ``cpu,cpu``), and refinement likewise, both
copies starting from the one-device PTI generator. Printed per stage: the unit's
wall time (process start-up included), the stage's own training throughput
(frames or pairs per second, from its facts) and the relative distance of the
tuned weights, ``|θ_parallel − θ_one| / |θ_one − θ_start|``.

    python bench/parallel.py                          # ~1 minute on 2 CPU cores
    python bench/parallel.py --frames 32 --pti-steps 10 --devices cuda:0,cuda:1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _job(frames: int, pti_steps: int, batch: int, device: str) -> Any:
    from fractions import Fraction

    from fsexchange.documents import Edit, FrameRange, Job, Source

    options = {"profile": "tiny", "device": device, "dtype": "float32",
               "invert": {"batch_size": 2},
               "pti": {"steps": pti_steps, "lr": 1e-3, "batch_size": batch},
               "refine": {"batch_size": batch},
               "metrics": {"enabled": False}}
    return Job(id="bench-parallel", source=Source("media/clip.mp4"),
               range=FrameRange(0, frames, Fraction(25)),
               edits=(Edit("age", -4.0),), options=options)


def _distance(got: dict, want: dict, start: dict) -> float:
    keys = [k for k in want if k.startswith("synthesis")]
    d = sum(float((got[k] - want[k]).double().square().sum()) for k in keys)
    c = sum(float((want[k] - start[k]).double().square().sum()) for k in keys)
    return (d / c) ** 0.5 if c > 0 else float("nan")


def _unit(folder: Path, stage: str, devices: tuple[str, ...]) -> dict[str, Any]:
    from engine.stages.units import run_unit

    t0 = time.monotonic()
    if len(devices) > 1:
        out = run_unit(folder, stage, devices=devices, threads=1)
    else:
        out = run_unit(folder, stage, device=devices[0], threads=1)
    return {"wall": time.monotonic() - t0,
            "per_second": out.facts.get("frames_per_second")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/parallel.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--pti-steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--devices", default="cpu,cpu")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    from engine.stages.parallel import parse_devices

    devices = parse_devices(args.devices)
    one = (devices[0],)
    with tempfile.TemporaryDirectory(prefix="fs-parallel-") as tmp:
        work = Path(tmp)
        os.environ["FACESTITCH_HOME"] = str(work / "home")
        import torch

        from engine.media.samples import astronaut_clip
        from engine.models.modelset import load_models
        from engine.stages.outputs import JobFiles

        torch.set_num_threads(1)
        start = load_models("tiny", device="cpu").generator.state_dict()
        a = work / "one"
        (a / "media").mkdir(parents=True)
        astronaut_clip(a / "media" / "clip.mp4", frames=args.frames, size=(192, 144),
                       face_scale=0.45)
        job = _job(args.frames, args.pti_steps, args.batch,
                   devices[0].split(":")[0])
        (a / "job.msgpack").write_bytes(job.to_bytes())
        for stage in ("track", "align", "invert"):
            _unit(a, stage, one)
        b = work / "many"
        shutil.copytree(a, b)
        figs: dict[str, Any] = {"devices": list(devices), "frames": args.frames,
                                "batch": args.batch, "pti_steps": args.pti_steps}
        for stage, then in (("pti", "edit"), ("refine", None)):
            print(f"{stage}: one device ...", flush=True)
            f1 = _unit(a, stage, one)
            print(f"{stage}: {', '.join(devices)} ...", flush=True)
            f2 = _unit(b, stage, devices)
            files_a, files_b = (getattr(JobFiles(a), stage),
                                getattr(JobFiles(b), stage))
            ref = (start if stage == "pti"
                   else JobFiles(a).pti.generator("cpu").state_dict())
            dist = _distance(files_b.generator("cpu").state_dict(),
                             files_a.generator("cpu").state_dict(), ref)
            figs[stage] = {"one": f1, "parallel": f2, "distance": dist,
                           "load": os.getloadavg()[0]}
            if then:  # refinement from the same generator in both copies
                shutil.rmtree(b / "stages" / stage)
                shutil.copytree(a / "stages" / stage, b / "stages" / stage)
                _unit(a, then, one)
                _unit(b, then, one)
    for stage in ("pti", "refine"):
        f = figs[stage]
        print(f"{stage}: one device {f['one']['wall']:.2f} s "
              f"({f['one']['per_second'] or 0:.1f}/s), {len(devices)} devices "
              f"{f['parallel']['wall']:.2f} s "
              f"({f['parallel']['per_second'] or 0:.1f}/s); weights apart "
              f"{f['distance']:.2e} of the tuning's change; load {f['load']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(figs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
