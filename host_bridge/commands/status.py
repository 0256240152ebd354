"""``facestitch status``: the state of one job or of every job in an exchange."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fsexchange.client import JobStatus, job_status, list_jobs

__all__ = ["main", "build_parser", "format_status"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facestitch status",
        description="Show jobs: queued, running (with progress), done, failed "
        "(with the error code) or cancelled.")
    p.add_argument("--exchange", required=True, type=Path, metavar="DIR",
                   help="the exchange folder")
    p.add_argument("job", nargs="?", metavar="JOB", help="one job id (default: all)")
    p.add_argument("--json", action="store_true",
                   help="print JSON: an object for JOB, else a list of objects with "
                   "id, state, progress (0..1), stage, message, error {code, "
                   "message, stage, frame, field}, folder, result")
    return p


def format_status(s: JobStatus) -> str:
    """One line: id, state, progress, stage and message (or the error)."""
    what = s.message
    if s.error:
        what = f"[{s.error.get('code')}] {s.error.get('message')}"
    return f"{s.id}  {s.state:<9} {s.progress:6.1%}  {s.stage or '-':<12} {what}"


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.job:
        status = job_status(args.exchange, args.job)
        print(json.dumps(status.to_dict(), indent=2) if args.json
              else format_status(status))
        return 0
    jobs = list_jobs(args.exchange)
    if args.json:
        print(json.dumps([s.to_dict() for s in jobs], indent=2))
    elif not jobs:
        print(f"no jobs in {args.exchange}")
    else:
        for s in jobs:
            print(format_status(s))
    return 0
