"""A real engine process with small real stages, for the exchange/engine tests.

Run as ``python tests/engine_harness.py --exchange DIR [engine flags]``. Jobs run
through two stages defined here instead of the GAN pipeline:

- ``hash`` decodes the job's source frames with PyAV and writes one checkpoint per
  frame (``stages/hash/frames/<index>.txt``, its sha256), resuming from the frames
  already there; it sleeps ``test.delay`` seconds per frame and polls abort.
- ``deliver`` writes ``output/<name>.<frame>.txt`` per frame and lists them as
  ``FrameOutput`` facts.

Test knobs live in the job document's unknown key ``test`` (kept by the loader):
``{"delay": 0.05, "deliver_delay": 0.05, "fail": "internal" | "face",
"write_bytes": N, "warn_bytes": N}`` (delays are per frame; ``write_bytes``:
deliver also writes ``output/bulk.bin`` of N bytes, to meet a full disk;
``warn_bytes``: hash adds a warning that long, which its DONE record and the
result then carry). Each frame checkpoint is
fenced (``ctx.fence()``), as the stage contract asks. Every stage start/end and
every frame written is appended to ``$FS_HARNESS_LOG/<job_id>.log`` as
``<stage> <event> <pid> [frame]``, so tests can prove what ran how often; stage
starts and ends also go to ``$FS_HARNESS_LOG/order.log`` as ``<job_id> <stage>
<event>``, one file for all jobs and processes (appends), the order they ran in.
Every job kind (``draft`` too) runs these two stages.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parent), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from engine.stages.contract import Stage, StageContext  # noqa: E402
from fsexchange.errors import NoFaceFound  # noqa: E402
from fsexchange.fsutil import atomic_write_bytes  # noqa: E402

PIPELINES = {
    "stitch": ("engine_harness:HashStage", "engine_harness:DeliverStage"),
    "align-preview": ("engine_harness:HashStage", "engine_harness:DeliverStage"),
    "draft": ("engine_harness:HashStage", "engine_harness:DeliverStage"),
}


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def log_event(job_id: str, *words: object) -> None:
    folder = os.environ.get("FS_HARNESS_LOG")
    if not folder:
        return
    _append(os.path.join(folder, f"{job_id}.log"),
            " ".join(str(w) for w in words) + "\n")
    if words[1] in ("start", "end"):
        _append(os.path.join(folder, "order.log"), f"{job_id} {words[0]} "
                f"{words[1]}\n")


def knobs(ctx: StageContext) -> dict[str, Any]:
    return dict(ctx.job.extra.get("test") or {})


class HashStage(Stage):
    name = "hash"

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import av

        job, k = ctx.job, knobs(ctx)
        log_event(job.id, self.name, "start", os.getpid())
        if k.get("fail") == "internal":
            raise RuntimeError("harness: deliberate internal failure")
        if k.get("fail") == "face":
            raise NoFaceFound("harness: no face in any frame", frame=job.range.start)
        folder = ctx.stage_dir(self.name) / "frames"
        folder.mkdir(exist_ok=True)
        delay = float(k.get("delay", 0.0))
        r = job.range
        with av.open(str(ctx.source_path())) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index >= r.end:
                    break
                if index < r.start:
                    continue
                ctx.check_abort()
                out = folder / f"{index}.txt"
                if out.exists():
                    continue  # checkpoint from an earlier attempt
                digest = hashlib.sha256(frame.to_ndarray(format="rgb24").tobytes())
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline:  # a slow frame that polls abort
                    ctx.check_abort()
                    time.sleep(min(0.02, delay))
                ctx.fence()
                atomic_write_bytes(out, digest.hexdigest().encode())
                log_event(job.id, self.name, "frame", os.getpid(), index)
                ctx.report((index - r.start + 1) / r.count, f"frame {index}")
        ctx.warn("harness: hashed, not edited")
        if k.get("warn_bytes"):
            ctx.warn("w" * int(k["warn_bytes"]))
        ctx.info["models"] = {"harness": {"label": "sha256 of decoded frames"}}
        log_event(job.id, self.name, "end", os.getpid())
        return {"frames": r.count}


class DeliverStage(Stage):
    name = "deliver"

    def run(self, ctx: StageContext) -> dict[str, Any]:
        job = ctx.job
        log_event(job.id, self.name, "start", os.getpid())
        src = ctx.job_dir / "stages" / "hash" / "frames"
        out = ctx.output_dir()
        delay = float(knobs(ctx).get("deliver_delay", 0.0))
        frames = []
        for index in range(job.range.start, job.range.end):
            ctx.check_abort()
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                ctx.check_abort()
                time.sleep(min(0.02, delay))
            data = (src / f"{index}.txt").read_bytes()
            name = f"{job.output.name}.{index:07d}.txt"
            atomic_write_bytes(out / name, data)
            frames.append({"frame": index, "path": f"output/{name}",
                           "sha256": hashlib.sha256(data).hexdigest(), "edited": True})
        bulk = int(knobs(ctx).get("write_bytes", 0))
        if bulk:
            atomic_write_bytes(out / "bulk.bin", b"\0" * bulk)
        atomic_write_bytes(out / "summary.txt", f"{len(frames)} frames\n".encode())
        log_event(job.id, self.name, "end", os.getpid())
        return {"frames": frames, "outputs": {"summary": "output/summary.txt"}}


class OffsetClock:
    """``time.time() + offset``: a picklable fake clock (the future by ``offset``)."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


def main(argv: list[str] | None = None) -> int:
    from engine.service.worker import EngineOptions, serve

    p = argparse.ArgumentParser(prog="engine_harness")
    p.add_argument("--exchange", type=Path, required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--once", action="store_true")
    p.add_argument("--lease", type=float, default=30.0)
    p.add_argument("--poll", type=float, default=0.2)
    p.add_argument("--no-watch", action="store_true")
    p.add_argument("--media-root", type=Path, action="append", default=[])
    p.add_argument("--clock-offset", type=float, default=0.0)
    p.add_argument("--tmp-max-age", type=float, default=3600.0)
    p.add_argument("--max-reclaims", type=int, default=3)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(levelname)s %(processName)s %(name)s: %(message)s")
    from engine_harness import OffsetClock as Clock

    opts = EngineOptions(exchange=args.exchange, workers=args.workers, once=args.once,
                         device="cpu", media_roots=tuple(args.media_root),
                         poll_interval=args.poll, lease_seconds=args.lease,
                         use_watchdog=not args.no_watch,
                         tmp_max_age=args.tmp_max_age,
                         max_reclaims=args.max_reclaims)
    n = serve(opts, pipelines=PIPELINES, clock=Clock(args.clock_offset))
    print(f"finished {n}", flush=True)
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "main"
    sys.exit(main())
