"""``facestitch engine``: run the watched-folder engine on an exchange folder."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from engine.commands import args as cli_args

__all__ = ["main", "build_parser"]

log = logging.getLogger(__name__)


def _positive(kind: type):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facestitch engine",
        description="Run jobs from an exchange folder. Watches for new jobs "
        "(watchdog, plus polling for network shares), resumes jobs whose worker died "
        "from their checkpoints, and releases the running job on SIGTERM/SIGINT.")
    p.add_argument("--exchange", required=True, type=Path, metavar="DIR",
                   help="the exchange folder (created if missing)")
    p.add_argument("--workers", type=_positive(int), default=1, metavar="N",
                   help="worker processes, each running one job at a time (default 1)")
    p.add_argument("--once", action="store_true",
                   help="run every pending job (and expired ones), then exit")
    p.add_argument("--device", default="auto", type=cli_args.device,
                   help="auto (cuda if available), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--devices", metavar="LIST", type=cli_args.devices, default=(),
                   help="several devices, e.g. cuda:0,cuda:1: each job's PTI and "
                   "refinement run data-parallel over them (one process each), "
                   "the other stages on the first (docs/scale.md); needs "
                   "--workers 1; with --ray each PTI/refine task asks the "
                   "cluster for that many devices of that kind")
    p.add_argument("--media-root", action="append", type=Path, default=[],
                   metavar="DIR", dest="media_roots",
                   help="a folder outside the exchange that jobs may read media "
                   "from (repeatable)")
    p.add_argument("--poll", type=_positive(float), default=1.0, metavar="SECONDS",
                   help="seconds between rescans when polling (default 1)")
    p.add_argument("--no-watch", action="store_true",
                   help="do not use filesystem events; poll only")
    p.add_argument("--lease", type=_positive(float), default=30.0, metavar="SECONDS",
                   help="lease length: a job whose worker died is taken over this "
                   "long after its last heartbeat (default 30)")
    p.add_argument("--ocio-config", type=Path, metavar="FILE",
                   help="OpenColorIO config for jobs that name none (default: $OCIO, "
                   "else the built-in ACES studio config; docs/colour.md)")
    p.add_argument("--ray", nargs="?", const="auto", default=None,
                   metavar="ADDRESS",
                   help="run the units of each stage as tasks on a Ray cluster: "
                   "HOST:PORT of its head, 'auto' (the cluster of this machine or "
                   "RAY_ADDRESS; the default when no ADDRESS is given) or 'local' "
                   "(a private one); job folders must be on storage every node "
                   "sees (docs/scale.md)")
    p.add_argument("--shards", type=_positive(int), default=None, metavar="N",
                   help="with --ray: shards per stage that splits by frames "
                   "(default: one per task slot of the cluster)")
    p.add_argument("--threads", type=_positive(int), default=None, metavar="N",
                   help="intra-op threads of each job's computation, recorded with "
                   "the job so every unit uses them (default: torch's)")
    return p


def main(argv: list[str]) -> int:
    from engine.service.worker import EngineOptions, serve

    args = build_parser().parse_args(argv)
    devices: tuple[str, ...] = args.devices
    if len(devices) > 1 and args.workers > 1 and args.ray is None:
        build_parser().error("--devices gives every job all its devices: use it "
                             "with --workers 1 (or with --ray, where each PTI "
                             "or refine task asks the cluster for that many)")
    for root in args.media_roots:
        if not root.is_dir():
            build_parser().error(f"--media-root {root} is not a folder")
    from fsexchange.exchange import Exchange

    # A file, an unwritable or read-only folder: one line now, not an engine that
    # idles forever unable to claim anything.
    Exchange(args.exchange.absolute()).ensure().check_writable()
    ocio = str(args.ocio_config.resolve()) if args.ocio_config else \
        os.environ.get("OCIO", "")
    if ocio:
        from engine.media.colour import load_config
        from fsexchange.errors import ColourError

        try:
            load_config(ocio)  # refuse a broken config now, not in every job
        except ColourError as exc:
            build_parser().error(exc.message)
    opts = EngineOptions(
        exchange=args.exchange.absolute(), workers=args.workers, once=args.once,
        device=devices[0] if devices else args.device, devices=devices,
        media_roots=tuple(r.resolve() for r in args.media_roots),
        poll_interval=args.poll, lease_seconds=args.lease,
        use_watchdog=not args.no_watch, ocio_config=ocio, ray=args.ray,
        shards=args.shards or 0, threads=args.threads or 0)
    if args.shards and args.ray is None:
        build_parser().error("--shards needs --ray")
    unreachable: tuple[type[Exception], ...] = ()
    if args.ray is not None:
        from engine.service.ray_backend import RayUnreachable

        unreachable = (RayUnreachable,)
    try:
        n = serve(opts)
    except unreachable as exc:
        print(f"facestitch engine: error: {exc}", file=sys.stderr)
        return 2
    log.info("engine stopped; %d job(s) finished", n)
    return 0
