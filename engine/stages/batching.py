"""Frames per batch and training precision, resolved once per stage.

``pti.batch_size`` and ``stitch.batch_size`` default to 0 (auto): as many frames
per step as the device's free memory holds, up to :data:`MAX_AUTO_BATCH`. Larger
batches are faster per frame (bench/pipeline.py: on 2 CPU cores, PTI batch 12 runs
1.8x the frame-passes/s of batch 4) until memory runs out, and the right size
depends on the machine, not on the job.

The per-frame cost is an estimate from ``python bench/pipeline.py --memory`` at the
official size (1024 px, float32; docs/pipeline.md "Small GPUs"): about 2–4 GiB per
frame of a PTI step and 2.4 GiB per frame of a stitching step (its per-frame weights
and Adam state included). It scales with the square of the generator resolution.
Half of the free memory is planned for, the rest is left to the allocator, the
networks and the other stages' buffers.

What a stage resolves (batch size, dtype) is written to ``settings.json`` in its
folder before its first step and read back when the stage resumes, so a job taken
over by another worker (other memory, other device) continues with the batches it
started with and delivers the same frames.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from fsexchange.fsutil import publish_once

__all__ = ["MAX_AUTO_BATCH", "PER_FRAME_GIB_1024", "auto_batch", "resolve_batch",
           "free_memory", "stage_settings", "training_settings"]

#: the largest automatic batch (past it a step gains little; bench/pipeline.py)
MAX_AUTO_BATCH = 16

#: GiB per frame of one training step at 1024 px, float32 (bench --memory); for
#: "refine" per (anchor, frame) pair: two PTI-like renders, no 1024 px LPIPS (an
#: estimate, not measured)
PER_FRAME_GIB_1024 = {"pti": 4.0, "stitch": 2.5, "refine": 6.0}

_GIB = 1 << 30


def free_memory(device: Any) -> int:
    """Free bytes on ``device``: CUDA's free memory, or the system's available RAM
    (Linux ``MemAvailable``; elsewhere 8 GiB is assumed)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 8 * _GIB


def auto_batch(kind: str, resolution: int, device: Any, frames: int) -> int:
    """Frames per step for ``kind`` ("pti" | "stitch") at ``resolution``: half the
    free memory over the per-frame estimate, between 1 and ``min(frames,
    MAX_AUTO_BATCH)``."""
    per_frame = PER_FRAME_GIB_1024[kind] * _GIB * (resolution / 1024) ** 2
    fit = int(0.5 * free_memory(device) // max(per_frame, 1))
    return max(1, min(fit, MAX_AUTO_BATCH, max(frames, 1)))


def resolve_batch(batch_size: int, kind: str, resolution: int, device: Any,
                  frames: int) -> int:
    """``batch_size`` when set, else (0) :func:`auto_batch`."""
    return int(batch_size) if batch_size else auto_batch(kind, resolution, device,
                                                         frames)


def training_settings(stage_dir: Path, kind: str, batch_size: int, dtype: str,
                      resolution: int, device: Any, frames: int) -> tuple[int, str]:
    """``(batch size, dtype)`` of a training stage (PTI, stitching): resolved from
    the options on the first attempt, read back from ``settings.json`` on a resumed
    one."""
    from engine.devices import resolve_dtype

    settings = stage_settings(stage_dir, lambda: {
        "batch_size": resolve_batch(batch_size, kind, resolution, device, frames),
        "dtype": resolve_dtype(dtype, device)})
    return int(settings["batch_size"]), str(settings["dtype"])


def stage_settings(stage_dir: Path, resolve: Callable[[], dict[str, Any]]
                   ) -> dict[str, Any]:
    """The settings a stage runs with: read from ``stage_dir/settings.json`` when an
    earlier attempt wrote it, else ``resolve()``, written there first."""
    path = stage_dir / "settings.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            # damaged: resolve again (the stage restarts its batches anyway)
            path.unlink(missing_ok=True)
    # Shards of one stage may resolve at once on several machines (other memory):
    # the first to publish wins and all of them run with its settings.
    return json.loads(publish_once(path, json.dumps(resolve()).encode()))
