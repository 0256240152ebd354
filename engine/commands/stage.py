"""``facestitch stage``: run one unit of one stage in a job folder, for any scheduler.

``facestitch stage run JOB_DIR STAGE [--shard I/N]`` runs shard I of N of a stage
that splits by frames, or (without ``--shard``) a whole stage: for a split stage
after its shards, that is the final unit that merges them and completes the stage.
``--devices cuda:0,cuda:1`` runs PTI and refinement data-parallel over several
devices (:mod:`engine.stages.parallel`).
``facestitch stage list JOB_DIR`` prints the job's stages, how each splits and
what is complete, as JSON. docs/scale.md has the whole picture.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from engine.commands import args as cli_args

__all__ = ["main", "build_parser"]

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facestitch stage",
        description="Run one unit of one stage of a job folder (a shard of a stage "
        "that splits by frames, or a whole stage), as a Ray task or a render-farm "
        "task does. Idempotent: completed stages and finished shards return at "
        "once.")
    sub = p.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run one unit of a stage")
    run.add_argument("job_dir", type=Path, metavar="JOB_DIR",
                     help="the job folder (in an exchange: ROOT/cur/JOB_ID)")
    run.add_argument("stage", metavar="STAGE", help="the stage name (track, align, "
                     "invert, pti, edit, stitch_tune, paste, report)")
    run.add_argument("--shard", metavar="I/N",
                     help="run shard I (from 0) of N of a stage that splits by "
                     "frames; without it the whole stage (the final unit that "
                     "merges finished shards)")
    run.add_argument("--device", default="auto", type=cli_args.device,
                     help="auto (cuda if available), cpu, cuda or cuda:N")
    run.add_argument("--devices", metavar="LIST", type=cli_args.devices, default=(),
                     help="several devices, e.g. cuda:0,cuda:1 or cpu,cpu: PTI and "
                     "refine run data-parallel over them, one process each "
                     "(docs/scale.md); other stages use the first")
    run.add_argument("--media-root", action="append", type=Path, default=[],
                     metavar="DIR", dest="media_roots",
                     help="a folder outside the exchange the job may read media "
                     "from (repeatable)")
    run.add_argument("--threads", type=int, default=0, metavar="N",
                     help="intra-op threads to record if this is the job's first "
                     "unit (default: torch's); later units use the recorded count")
    run.add_argument("--publish-failure", action="store_true",
                     help="(render farms) when the stage fails or is cancelled and "
                     "the job is held by a farm claim, publish its Result/1 to "
                     "failed/ or cancelled/")
    ls = sub.add_parser("list", help="the job's stages and what is complete (JSON)")
    ls.add_argument("job_dir", type=Path, metavar="JOB_DIR")
    return p


def _list(job_dir: Path) -> int:
    from engine.stages.pipeline import stages_for
    from engine.stages.units import load_job
    from engine.stages.outputs import JobFiles

    job = load_job(job_dir)
    files = JobFiles(job_dir)
    out = [{"stage": s.name, "split": s.split,
            "complete": files.done(s.name) is not None,
            "shards": [f"{i}/{n}" for i, n in files.of(s.name).finished_shards()]}
           for s in stages_for(job.kind)]
    print(json.dumps({"job": job.id, "kind": job.kind, "stages": out}, indent=1))
    return 0


def main(argv: list[str]) -> int:
    from engine.devices import resolve_device
    from engine.stages.contract import StageAborted
    from engine.stages.units import parse_shard, run_unit
    from fsexchange.errors import FaceStitchError, JobCancelled

    parser = build_parser()
    args = parser.parse_args(argv)
    job_dir = args.job_dir.absolute()
    if args.action == "list":
        return _list(job_dir)
    shard = None
    if args.shard is not None:
        try:
            shard = parse_shard(args.shard)
        except ValueError as exc:
            parser.error(str(exc))
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    try:
        out = run_unit(job_dir, args.stage, shard, device=resolve_device(args.device),
                       media_roots=tuple(r.resolve() for r in args.media_roots),
                       threads=args.threads, worker=_worker(), devices=args.devices)
    except FaceStitchError as exc:
        return _failed(args, job_dir, exc)
    except ValueError as exc:  # a shard of a stage that runs as one unit
        parser.error(str(exc))
    except StageAborted:
        return _failed(args, job_dir, JobCancelled("cancelled while running",
                                                   stage=args.stage))
    what = f"shard {shard}" if shard else "stage"
    print(f"{out.stage} {what}: {'already done' if out.skipped else 'done'}"
          f"{'' if out.skipped else f' in {out.seconds:.2f} s'}")
    return 0


def _worker() -> str:
    from engine.service.worker import worker_id

    return worker_id()


def _failed(args: argparse.Namespace, job_dir: Path, exc: Exception) -> int:
    """One line; with ``--publish-failure`` a farm-held job is published."""
    from fsexchange.errors import FaceStitchError

    if args.publish_failure and isinstance(exc, FaceStitchError):
        from engine.commands.farm import publish_failure

        publish_failure(job_dir, exc)
    print(f"facestitch stage: error: {exc}", file=sys.stderr)
    return 3 if getattr(exc, "code", "") == "cancelled" else 2
