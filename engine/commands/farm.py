"""``facestitch farm``: run jobs of an exchange on a render farm that speaks Open Job
Description (OpenJD; AWS Deadline Cloud and others).

- ``facestitch farm template --out DIR`` writes an OpenJD job template (``DIR/
  template.yaml``, a Deadline Cloud job bundle with ``parameter_values.yaml``):
  job parameters ``Exchange`` and ``JobId``; a ``claim`` step; one step per stage,
  in pipeline order with dependencies; for the stages that split by frames a step
  whose task parameter ``Shard`` ranges over the frame chunks, then a ``merge``
  step; a ``publish`` step. Validated with ``openjd-model`` before it is written.
- ``facestitch farm claim`` takes a queued job for the farm (``new/`` -> ``cur/``,
  a lease held by ``farm:...`` for ``--lease-hours``), validates it as the engine
  does and records its configuration.
- ``facestitch farm publish`` writes ``Result/1`` from the completed stages and
  publishes the job to ``done/``.

A failing or cancelled unit (``facestitch stage run ... --publish-failure``)
publishes the job to ``failed/`` or ``cancelled/`` itself, since OpenJD has no step
that runs after a failed one. docs/scale.md shows the whole flow.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "job_template", "FARM_WORKER_PREFIX",
           "publish_failure"]

log = logging.getLogger(__name__)

#: the worker names of farm claims (a lease held by a farm job)
FARM_WORKER_PREFIX = "farm:"

#: OpenJD template revision written
SPEC = "jobtemplate-2023-09"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facestitch farm",
        description="Run exchange jobs on a render farm through Open Job Description.")
    sub = p.add_subparsers(dest="action", required=True)
    t = sub.add_parser("template", help="write an OpenJD job template (job bundle)")
    t.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="the job bundle folder to write (template.yaml, "
                   "parameter_values.yaml)")
    t.add_argument("--kind", default="stitch",
                   help="the job kind the template runs (default stitch)")
    t.add_argument("--shards", type=int, default=4, metavar="N",
                   help="frame chunks per stage that splits by frames (default 4)")
    t.add_argument("--command", default="facestitch", metavar="EXE",
                   help="the facestitch executable on the farm's workers "
                   "(default: facestitch on their PATH)")
    c = sub.add_parser("claim", help="claim a queued job for the farm")
    c.add_argument("--exchange", type=Path, required=True, metavar="DIR")
    c.add_argument("--job", required=True, metavar="ID")
    c.add_argument("--lease-hours", type=float, default=168.0, metavar="H",
                   help="how long the farm holds the job before an engine may take "
                   "it over (default 168)")
    c.add_argument("--device", default="auto")
    c.add_argument("--media-root", action="append", type=Path, default=[],
                   metavar="DIR", dest="media_roots")
    u = sub.add_parser("publish", help="publish a farm job whose stages completed")
    u.add_argument("--exchange", type=Path, required=True, metavar="DIR")
    u.add_argument("--job", required=True, metavar="ID")
    return p


# --- the template ---------------------------------------------------------------


def _step(name: str, args: list[str], depends: str | None, *,
          shards: int = 0) -> dict[str, Any]:
    step: dict[str, Any] = {"name": name}
    if shards:
        step["parameterSpace"] = {"taskParameterDefinitions": [
            {"name": "Shard", "type": "INT", "range": f"0-{shards - 1}"}]}
    if depends:
        step["dependencies"] = [{"dependsOn": depends}]
    step["script"] = {"actions": {"onRun": {
        "command": "{{Param.FaceStitch}}", "args": args}}}
    return step


def job_template(kind: str = "stitch", shards: int = 4) -> dict[str, Any]:
    """The OpenJD job template (a plain dict, ``jobtemplate-2023-09``) that runs one
    exchange job of ``kind`` on a farm, ``shards`` chunks per split stage."""
    from engine.stages.pipeline import stages_for

    job_dir = "{{Param.Exchange}}/cur/{{Param.JobId}}"
    common = ["--device", "{{Param.Device}}"]
    steps = [_step("claim", ["farm", "claim", "--exchange", "{{Param.Exchange}}",
                             "--job", "{{Param.JobId}}", *common], None)]
    prev = "claim"
    for stage in stages_for(kind):
        unit = ["stage", "run", job_dir, stage.name, *common, "--threads",
                "{{Param.Threads}}", "--publish-failure"]
        if stage.split == "frames" and shards > 1:
            steps.append(_step(stage.name, [*unit, "--shard",
                                            f"{{{{Task.Param.Shard}}}}/{shards}"],
                               prev, shards=shards))
            prev = stage.name
            steps.append(_step(f"{stage.name} merge", unit, prev))
            prev = f"{stage.name} merge"
        else:
            steps.append(_step(stage.name, unit, prev))
            prev = stage.name
    steps.append(_step("publish", ["farm", "publish", "--exchange",
                                   "{{Param.Exchange}}", "--job", "{{Param.JobId}}"],
                       prev))
    return {
        "specificationVersion": SPEC,
        "name": "FaceStitch {{Param.JobId}}",
        "description": f"One FaceStitch {kind} job of an exchange folder, stage by "
                       "stage (docs/scale.md)",
        "parameterDefinitions": [
            {"name": "Exchange", "type": "PATH", "objectType": "DIRECTORY",
             "dataFlow": "INOUT",
             "description": "The exchange folder, as the farm's workers see it"},
            {"name": "JobId", "type": "STRING", "minLength": 1, "maxLength": 128,
             "description": "The id of a queued job in the exchange"},
            {"name": "Device", "type": "STRING", "default": "auto",
             "allowedValues": ["auto", "cpu", "cuda"]},
            {"name": "Threads", "type": "INT", "default": 0, "minValue": 0,
             "description": "Intra-op threads of every task of the job (0: the "
                            "first task's default; recorded with the job so all "
                            "tasks compute alike)"},
            {"name": "FaceStitch", "type": "STRING", "default": "facestitch",
             "description": "The facestitch executable on the workers"},
        ],
        "steps": steps,
    }


def validate_template(template: dict[str, Any],
                      values: dict[str, str] | None = None) -> None:
    """Decode the template with ``openjd-model`` (and, given parameter values,
    instantiate the job). Raises ``openjd.model.DecodeValidationError``."""
    from openjd.model import create_job, decode_job_template, preprocess_job_parameters

    tpl = decode_job_template(template=template)
    if values is not None:
        here = Path.cwd()
        params = preprocess_job_parameters(
            job_template=tpl, job_parameter_values=values,
            environment_templates=[], job_template_dir=here,
            current_working_dir=here)
        create_job(job_template=tpl, job_parameter_values=params)


def _yaml(obj: Any, indent: int = 0) -> str:
    """YAML for plain dicts, lists, strings and ints (JSON-quoted strings, which
    YAML reads as the same strings)."""
    import json

    pad = "  " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        lines = []
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:\n{_yaml(v, indent + 1)}")
            else:
                lines.append(f"{pad}{k}: {_yaml(v)}")
        return "\n".join(lines)
    if isinstance(obj, list):
        if not obj:
            return "[]"
        lines = []
        for v in obj:
            if isinstance(v, (dict, list)) and v:
                body = _yaml(v, indent + 1).lstrip()
                lines.append(f"{pad}- {body}")
            else:
                lines.append(f"{pad}- {_yaml(v)}")
        return "\n".join(lines)
    return json.dumps(obj)


def _template(args: argparse.Namespace) -> int:
    from fsexchange.fsutil import atomic_write_bytes

    if args.shards < 1:
        raise SystemExit("facestitch farm template: --shards must be at least 1")
    template = job_template(args.kind, args.shards)
    values = {"FaceStitch": args.command}
    validate_template(template, {"Exchange": "/exchange", "JobId": "job", **values})
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "template.yaml",
                       (f"# FaceStitch {args.kind} jobs on an OpenJD farm "
                        "(docs/scale.md)\n" + _yaml(template) + "\n").encode())
    params = {"parameterValues": [{"name": k, "value": v} for k, v in values.items()]}
    atomic_write_bytes(args.out / "parameter_values.yaml",
                       (_yaml(params) + "\n").encode())
    print(f"wrote {args.out / 'template.yaml'} ({len(template['steps'])} steps, "
          f"{args.shards} chunks per split stage)")
    return 0


# --- claim, publish ---------------------------------------------------------------


def _farm_worker() -> str:
    from engine.service.worker import worker_id

    return FARM_WORKER_PREFIX + worker_id()


def _farm_claim(exchange: Any, job_id: str):
    """The farm's claim on ``cur/<job_id>``, rebuilt from its lease (any farm task
    acts for the farm job), or None when the job is not held by a farm."""
    from fsexchange.exchange import Claim

    folder = exchange.dir("cur") / job_id
    try:
        lease = exchange.read_lease(folder)
    except FileNotFoundError:
        return None
    if lease is None or not lease.worker.startswith(FARM_WORKER_PREFIX):
        return None
    return Claim(job_id, folder, lease.worker, lease.epoch, lease.expires,
                 max(lease.expires - exchange.clock(), 1.0), lease.reclaims)


def _claim(args: argparse.Namespace) -> int:
    import json

    from engine.devices import resolve_device
    from engine.service.runner import _check_paths, _load_job
    from fsexchange.errors import DocumentFieldError, JobNotFound
    from fsexchange.exchange import CONFIG_FILE, Exchange
    from fsexchange.fsutil import atomic_write_bytes
    from fsexchange.options import PipelineConfig

    ex = Exchange(args.exchange.absolute()).ensure()
    claim = _farm_claim(ex, args.job)
    if claim is None:
        claim = ex.claim(args.job, _farm_worker(),
                         lease_seconds=args.lease_hours * 3600.0)
    else:
        log.info("job %s is already held by the farm (%s); continuing it", args.job,
                 claim.worker)
    if claim is None:
        raise JobNotFound(f"job {args.job} is not queued in {ex.root}/new (is it "
                          "running on an engine, finished, or misspelt?)")
    try:
        job = _load_job(claim.folder)
        if job.id != args.job:
            raise DocumentFieldError(f"job.msgpack names job {job.id!r} but its "
                                     f"folder is {args.job!r}", field="id")
        roots = (ex.root, *(r.resolve() for r in args.media_roots))
        _check_paths(job, claim.folder, roots)
        config = PipelineConfig.from_options(job.options,
                                             device=resolve_device(args.device))
        atomic_write_bytes(claim.folder / CONFIG_FILE, (json.dumps(
            config.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    except Exception as exc:
        from fsexchange.errors import FaceStitchError

        if isinstance(exc, FaceStitchError):
            publish_failure(claim.folder, exc)
        raise
    print(f"claimed {args.job} for the farm ({claim.worker})")
    return 0


def _result(job_dir: Path, state: str, error: dict | None = None):
    from engine.service.runner import build_result
    from engine.stages.pipeline import stages_for
    from engine.stages.units import load_job
    from engine.stages.outputs import JobFiles
    from fsexchange.exchange import Exchange, utc_now

    files = JobFiles(job_dir)
    try:
        names = [s.name for s in stages_for(load_job(job_dir).kind)]
    except Exception:  # noqa: BLE001 - an unreadable job still gets its result
        names = list(files.completed())
    done = [(d, False) for d in (files.done(n) for n in names) if d is not None]
    try:  # the farm's claim started the job
        lease = Exchange(job_dir.parent.parent).read_lease(job_dir)
    except FileNotFoundError:
        lease = None
    return build_result(job_dir.name, state, done, error=error,
                        started=lease.acquired if lease else "", finished=utc_now())


def publish_failure(job_dir: Path, exc: Exception) -> bool:
    """Publish a farm-held job as failed (or cancelled) with ``exc`` as its error.
    Returns False (and publishes nothing) when no farm holds the job."""
    from fsexchange.errors import FaceStitchError, LeaseLost
    from fsexchange.exchange import Exchange

    job_dir = Path(job_dir).absolute()
    if job_dir.parent.name != "cur" or not isinstance(exc, FaceStitchError):
        return False
    ex = Exchange(job_dir.parent.parent)
    claim = _farm_claim(ex, job_dir.name)
    if claim is None:
        return False
    state = "cancelled" if exc.code == "cancelled" else "failed"
    try:
        ex.finish(claim, _result(job_dir, state, exc.to_dict()))
    except LeaseLost as lost:
        log.warning("job %s: not published: %s", job_dir.name, lost.message)
        return False
    log.info("job %s: published to %s/", job_dir.name, state)
    return True


def _publish(args: argparse.Namespace) -> int:
    from engine.stages.pipeline import stages_for
    from engine.stages.units import load_job
    from engine.stages.outputs import JobFiles
    from fsexchange.errors import JobNotFound, StageNotReady
    from fsexchange.exchange import Exchange

    ex = Exchange(args.exchange.absolute())
    claim = _farm_claim(ex, args.job)
    if claim is None:
        raise JobNotFound(f"job {args.job} is not held by a farm claim in "
                          f"{ex.root}/cur")
    files = JobFiles(claim.folder)
    missing = [s.name for s in stages_for(load_job(claim.folder).kind)
               if files.done(s.name) is None]
    if missing:
        raise StageNotReady(f"job {args.job} cannot be published: "
                            f"{', '.join(missing)} not complete")
    folder = ex.finish(claim, _result(claim.folder, "done"))
    print(f"published {args.job} to {folder}")
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return {"template": _template, "claim": _claim, "publish": _publish}[
        args.action](args)
