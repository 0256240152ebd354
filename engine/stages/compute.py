"""The compute settings every unit of a job shares, whichever machine runs it.

Torch splits a reduction (a loss sum, a matrix product) by intra-op thread, so the
same batch computed with 1 and with 2 threads rounds differently; after a few
hundred Adam steps the stitched crops differ by several 16-bit levels. The first
pipeline run or unit of a job records its thread count in ``stages/compute.json``
and every later unit of the job, a resumed run, a shard on a Ray worker, a farm
task, computes with that count (docs/scale.md "Same frames everywhere").
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

from fsexchange.fsutil import publish_once

from engine.stages.outputs import JobFiles

__all__ = ["pin_threads", "pinned_threads", "recorded_threads"]


def recorded_threads(job_dir: Path) -> int | None:
    """The job's recorded intra-op thread count, or None before its first unit."""
    try:
        return max(1, int(json.loads(JobFiles(job_dir).compute_path.read_text())
                          ["threads"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def pin_threads(job_dir: Path, threads: int = 0) -> int:
    """Set torch's intra-op thread count to the job's and return it.

    Args:
        threads: what to record when this is the job's first unit (0: torch's
            current count). Of racing first units on several machines one wins.
    """
    import torch

    n = recorded_threads(job_dir)
    if n is None:
        path = JobFiles(job_dir).compute_path
        path.parent.mkdir(exist_ok=True)
        want = int(threads) or torch.get_num_threads()
        publish_once(path, json.dumps({"threads": want}).encode())
        n = recorded_threads(job_dir) or want
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@contextlib.contextmanager
def pinned_threads(job_dir: Path, threads: int = 0) -> Iterator[int]:
    """:func:`pin_threads` for the duration of a ``with`` block; the process gets
    its own count back afterwards (an engine runs job after job, each with its
    own count, and records its own for the next new one)."""
    import torch

    before = torch.get_num_threads()
    try:
        yield pin_threads(job_dir, threads)
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
