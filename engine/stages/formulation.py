"""The fastest way to compute the same training step, measured once per machine.

The tuning stages can compute a step in several ways that give the same numbers
(up to the order of float sums) and differ only in speed, and which one wins
depends on the device, the precision and the channel counts (docs/pipeline.md
"Speed": on a CPU the grouped per-frame convolutions win on the tiny networks and
lose at the official ones in float32):

- PTI (:data:`fsexchange.options.PTI_FORMULATIONS`): ``modulated`` folds each
  frame's style and demodulation into per-sample weights (with a closed-form
  backward) and runs one grouped convolution; ``autograd`` does the same with
  plain autograd ops (the reference loops' batch-1 path); ``scaled`` scales the
  activations before and after a convolution with the shared weight
  (engine/nets/ops.py, ``modulated_conv2d``'s ``fused``).
- Stitching (:data:`fsexchange.options.STITCH_FORMULATIONS`): ``grouped``,
  ``loop``, ``vmap`` (engine/stages/stitch_tune.py).

:func:`choose` times one step of each candidate on the job's generator (the
candidates come from the stage: ``engine.stages.pti.pti_candidates``,
``engine.stages.stitch_tune.stitch_candidates``; a warm-up run, then two
interleaved timed runs; the fastest run of each counts, since other processes only
ever add time) and records the winner in the model store
(:class:`engine.models.formulations.FormulationRecords`), keyed by device,
precision, architecture, batch and torch version; later jobs read the record.
``options.pti.formulation`` / ``options.stitch.formulation`` override it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from engine.models.formulations import FormulationRecords

if TYPE_CHECKING:
    from engine.nets.stylegan2 import Generator

__all__ = ["choose", "measure", "formulation_key", "device_name", "PTI_FUSED",
           "MEASURE_BATCH"]

log = logging.getLogger(__name__)

#: PTI formulation -> ``modulated_conv2d``'s ``fused`` (engine/nets/ops.py)
PTI_FUSED: dict[str, bool | str] = {"modulated": "modulated", "autograd": True,
                                    "scaled": False}

# the most frames a one-time measurement runs per step (the cost of measuring at
# 1024 px on a CPU; the ranking is taken to hold for larger batches)
MEASURE_BATCH = {"pti": 4, "stitch": 2}


def device_name(device: Any) -> str:
    """A stable name of the compute device: the GPU's name, or the CPU model and
    the number of threads torch uses."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    model = "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu:{model}:{torch.get_num_threads()} threads"


def formulation_key(kind: str, device: Any, dtype: str, G: "Generator", batch: int,
                    extra: str = "") -> str:
    """``kind|device|dtype|architecture|batch|torch`` (the architecture is a hash
    of the generator's constructor arguments, with its resolution spelled out)."""
    import torch

    arch = hashlib.sha256(json.dumps(G.init_kwargs, sort_keys=True).encode()
                          ).hexdigest()[:12]
    return "|".join([kind + (f":{extra}" if extra else ""), device_name(device), dtype,
                     f"{G.img_resolution}px-{arch}", f"batch {batch}",
                     f"torch {torch.__version__}"])


def measure(candidates: dict[str, Callable[[], Any]], device: Any, rounds: int = 2
            ) -> dict[str, float]:
    """Seconds of each candidate: one warm-up call each, then ``rounds`` rounds of
    one call each in turn; the fastest call counts."""
    import torch

    def sync() -> None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    for fn in candidates.values():
        fn()
    best = {k: float("inf") for k in candidates}
    for _ in range(max(1, rounds)):
        for k, fn in candidates.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def choose(kind: str, G: "Generator", plan: dict[str, Any], device: Any,
           candidates: Callable[[int], dict[str, Callable[[], Any]]], *,
           extra: str = "", records: FormulationRecords | None = None) -> str:
    """The recorded formulation for ``kind`` ("pti" | "stitch") at ``plan``'s batch
    and dtype on ``device`` for ``G``'s architecture; measured and recorded first
    when there is no record. ``candidates(n)`` returns one step of each
    formulation on ``n`` frames (``min(batch, MEASURE_BATCH[kind])``)."""
    import torch

    batch, dtype = int(plan["batch_size"]), str(plan["dtype"])
    key = formulation_key(kind, device, dtype, G, batch, extra)
    records = records or FormulationRecords()
    hit = records.get(key)
    if hit is not None:
        return str(hit["choice"])
    n = min(batch, MEASURE_BATCH[kind])
    seconds = measure(candidates(n), device)
    best = min(seconds, key=seconds.get)
    log.info("formulation for %s: %s (seconds per step: %s)", key, best,
             ", ".join(f"{k} {v:.3f}" for k, v in seconds.items()))
    records.put(key, {"choice": best, "seconds": seconds, "measured_batch": n,
                      "torch": torch.__version__,
                      "measured_at": _dt.datetime.now(_dt.timezone.utc)
                      .isoformat(timespec="seconds")})
    return best
