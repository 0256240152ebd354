"""``facestitch cancel``: cancel a queued or running job."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fsexchange.client import cancel_job, wait_job

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facestitch cancel",
        description="Cancel a job: a queued job is cancelled at once, a running one "
        "stops within seconds and ends 'cancelled'; a finished job is left alone.")
    p.add_argument("--exchange", required=True, type=Path, metavar="DIR",
                   help="the exchange folder")
    p.add_argument("job", metavar="JOB", help="the job id")
    p.add_argument("--wait", action="store_true",
                   help="wait until the job has stopped")
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="with --wait: give up after this long (default 120; exit 3)")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    status = cancel_job(args.exchange, args.job)
    if args.wait and not status.final:
        try:
            status = wait_job(args.exchange, args.job, timeout=args.timeout)
        except TimeoutError as exc:
            print(f"facestitch cancel: {exc}", file=sys.stderr)
            return 3
    if args.json:
        print(json.dumps(status.to_dict(), indent=2))
    else:
        note = "" if status.final else " (cancel requested; it stops within seconds)"
        print(f"{status.id}: {status.state}{note}")
    return 0
