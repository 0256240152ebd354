"""The compute settings every unit of a job shares, whichever machine runs it.

Threads. Torch splits a reduction (a loss sum, a matrix product) by intra-op thread,
so the same batch computed with 1 and with 2 threads rounds differently; after a few
hundred Adam steps the stitched crops differ by several 16-bit levels. The first
pipeline run or unit of a job records its thread count in ``stages/compute.json``
and every later unit of the job, a resumed run, a shard on a Ray worker, a farm
task, computes with that count (docs/scale.md "Same frames everywhere").

Memory. A process that computes keeps the memory it frees for its next
allocations (:func:`keep_freed_memory`). A training step allocates and frees
activations of tens of megabytes; glibc serves each from fresh ``mmap`` pages and
unmaps them on free, so every step paid ~140 000 page faults and the kernel's
zeroing of every page (a quarter of a second of system time per bfloat16 PTI step
at 256 px on 2 cores; figures in docs/pipeline.md "Speed"). Values do not change.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
from pathlib import Path
from typing import Iterator

from fsexchange.fsutil import publish_once

from engine.devices import exact_float32
from engine.stages.batching import free_memory
from engine.stages.outputs import JobFiles

__all__ = ["keep_freed_memory", "reserve_heap", "pin_threads", "pinned_threads",
           "recorded_threads"]

#: set to 0 to leave the C allocator as it is
KEEP_FREED_MEMORY_ENV = "FACESTITCH_KEEP_FREED_MEMORY"

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Have the C allocator keep freed memory in the process for reuse (once per
    process; True when in effect).

    glibc only (Linux): large blocks come from the heap instead of their own
    ``mmap`` (``M_MMAP_MAX`` 0) and the heap's top is never given back
    (``M_TRIM_THRESHOLD`` at its maximum), so after the first step every
    activation reuses memory that is already mapped. The process's resident size
    stays at its peak until it exits, as GPU caching allocators do; the engine's
    workers and stage processes are where this is called. Other C libraries and
    ``FACESTITCH_KEEP_FREED_MEMORY=0`` leave the allocator alone.
    """
    global _kept
    if _kept is None:
        _kept = False
        if (os.environ.get(KEEP_FREED_MEMORY_ENV, "1") != "0"
                and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"):
            try:
                mallopt = ctypes.CDLL(None).mallopt
                mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                # -1: glibc stores the threshold as a size_t, so this is "never";
                # its largest int (2 GiB), used before, trimmed any heap whose
                # free top passed 2 GiB, and the next steps faulted it back in
                # (on a virtual machine at about 8 s per GiB: rounds of the
                # official-size benchmark ran up to 3x slower)
                _kept = bool(mallopt(_M_MMAP_MAX, 0)
                             and mallopt(_M_TRIM_THRESHOLD, -1))
            except (OSError, AttributeError):
                _kept = False
    return _kept


def reserve_heap(nbytes: int) -> int:
    """Grow the kept heap by ``nbytes`` now, touching every page, so that later
    allocations up to that size reuse memory the process already holds; returns
    the bytes reserved (at most half the machine's available memory; 0 where
    :func:`keep_freed_memory` is not in effect).

    For benchmarks, where loops are compared side by side in one process: over
    rounds of differently shaped loops the heap fragments and keeps growing (to
    5-9 GiB in the official-size PTI comparison at 256 px), and on a virtual
    machine whose host backs guest memory lazily the first touch of a page can
    cost far more than the kernel's zeroing (7.6-7.9 s per GiB measured on the
    2-core machine of docs/pipeline.md "Speed"), so whichever loop happened to
    grow the heap ran up to 3x slower in that round.
    """
    if nbytes <= 0 or not keep_freed_memory():
        return 0
    # never more than half of what the machine has available: touching every
    # page of a reserve it cannot hold would end in the out-of-memory killer
    nbytes = min(nbytes, free_memory("cpu") // 2)
    if nbytes <= 0:
        return 0
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.restype = ctypes.c_void_p
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    block = libc.malloc(nbytes)
    if not block:
        return 0
    libc.memset(block, 0, nbytes)  # every page mapped and backed
    libc.free(block)  # back to the heap, which is never trimmed
    return nbytes


def recorded_threads(job_dir: Path) -> int | None:
    """The job's recorded intra-op thread count, or None before its first unit."""
    try:
        return max(1, int(json.loads(JobFiles(job_dir).compute_path.read_text())
                          ["threads"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def pin_threads(job_dir: Path, threads: int = 0) -> int:
    """Set torch's intra-op thread count to the job's and return it (and keep
    freed memory in the process: :func:`keep_freed_memory`; float32 computes as
    IEEE float32, never TF32: :func:`engine.devices.exact_float32`).

    Args:
        threads: what to record when this is the job's first unit (0: torch's
            current count). Of racing first units on several machines one wins.
    """
    import torch

    keep_freed_memory()
    exact_float32()
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
