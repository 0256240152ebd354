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
  (engine/nets/ops.py, ``modulated_conv2d``'s ``fused``); ``hybrid`` picks
  per layer whichever of modulating the weight or scaling the activations
  touches fewer elements; ``loop`` runs the
  mini-batch as batch-1 forwards and backwards whose gradients add up before the
  one optimiser step (the reference loop's per-frame path; at batch 1 it is
  ``autograd``).
- Stitching (:data:`fsexchange.options.STITCH_FORMULATIONS`): ``grouped``,
  ``loop``, ``hybrid`` (``loop`` with the per-layer choice above), ``vmap``
  (engine/stages/stitch_tune.py).

:func:`choose` times one step of each candidate on the job's generator (the
candidates come from the stage: ``engine.stages.pti.pti_candidates``,
``engine.stages.stitch_tune.stitch_candidates``) with :func:`measure`: a warm-up
run, then rounds of one timed run of each in turn until the ranking settles (the
fastest run of each counts, since other processes only ever add time), and records
the winner in the model store
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from fsexchange.options import PTI_FORMULATIONS, STITCH_FORMULATIONS

from engine.models.formulations import FormulationRecords

if TYPE_CHECKING:
    from engine.nets.stylegan2 import Generator

__all__ = ["choose", "Choice", "measure", "Measurement", "formulation_key",
           "device_name", "PTI_FUSED", "MEASURE_BATCH"]

log = logging.getLogger(__name__)

#: PTI formulation -> ``modulated_conv2d``'s ``fused`` (engine/nets/ops.py)
PTI_FUSED: dict[str, bool | str] = {"modulated": "modulated", "autograd": True,
                                    "scaled": False, "hybrid": "hybrid",
                                    "loop": True}

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


#: the revision of the network's kernels (engine/nets/ops.py) and of what a
#: measured step holds: part of every record's key, so a machine measures again
#: after a release changes how the formulations compute (2: up-sampling
#: convolutions as input gradients, the shared weight's one-pass side,
#: HYBRID_FACTOR 8; 3: a PTI candidate times the whole step, loss and Adam
#: included, since the fast recipe compares per-frame seconds across batch sizes;
#: conv weights trained in their convolutions' memory order; 4: the large
#: layers' fused epilogue, engine/nets/epilogue.py)
KERNELS_REVISION = 4


def formulation_key(kind: str, device: Any, dtype: str, G: "Generator", batch: int,
                    extra: str = "") -> str:
    """``kind|device|dtype|architecture|batch|torch|kernels`` (the architecture is
    a hash of the generator's constructor arguments, with its resolution spelled
    out; kernels: :data:`KERNELS_REVISION`)."""
    import torch

    arch = hashlib.sha256(json.dumps(G.init_kwargs, sort_keys=True).encode()
                          ).hexdigest()[:12]
    return "|".join([kind + (f":{extra}" if extra else ""), device_name(device), dtype,
                     f"{G.img_resolution}px-{arch}", f"batch {batch}",
                     f"torch {torch.__version__}", f"kernels {KERNELS_REVISION}"])


#: rounds :func:`measure` always runs, the most it runs, how many rounds in a row
#: the leader must hold, and the lead (relative) below which the record calls the
#: choice a tie
MEASURE_ROUNDS = (2, 6)
SETTLE_ROUNDS = 2
TIE_MARGIN = 0.03


@dataclass(frozen=True)
class Measurement:
    """What :func:`measure` found.

    Attributes:
        seconds: the fastest timed call of each candidate.
        rounds: timed rounds run.
        settled: the leader held its place for ``SETTLE_ROUNDS`` rounds in a row
            (False: the lead changed hands until the round limit).
        margin: the runner-up's seconds over the leader's, minus 1; below
            ``TIE_MARGIN`` the two are as fast as each other (:attr:`tie`).
    """

    seconds: dict[str, float]
    rounds: int
    settled: bool
    margin: float

    @property
    def choice(self) -> str:
        return min(self.seconds, key=self.seconds.get)

    @property
    def tie(self) -> bool:
        return self.margin < TIE_MARGIN


def measure(candidates: dict[str, Callable[[], Any]], device: Any, *,
            rounds: tuple[int, int] = MEASURE_ROUNDS,
            clock: Callable[[], float] = time.perf_counter) -> Measurement:
    """Time one call of each candidate per round until the ranking settles.

    One warm-up call each, then rounds of one timed call each, the order rotating
    every round (so no candidate always runs right after the same one). The fastest
    call of each counts. A single pass was not enough on a shared machine: with 2
    cores and another process running, one round can take several times another,
    and the one-time choice then disagreed with later benchmark rounds
    (docs/pipeline.md "Formulations"). So after ``rounds[0]`` rounds it stops only
    once the same candidate has led for ``SETTLE_ROUNDS`` rounds in a row, and at
    ``rounds[1]`` rounds in any case. A lead under ``TIE_MARGIN`` is recorded as
    a tie (either candidate is as fast as the other); running on would not
    separate them, and the tiny test networks, where most candidates tie, would
    pay for every extra round in every job.

    ``clock`` is the timer (tests pass a scripted one).
    """
    import torch

    def sync() -> None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    names = list(candidates)
    for fn in candidates.values():
        fn()
    best = {k: float("inf") for k in names}
    leader, held, r, lead = None, 0, 0, 0.0
    while r < max(1, rounds[1]):
        for k in names[r % len(names):] + names[:r % len(names)]:
            sync()
            t0 = clock()
            candidates[k]()
            sync()
            best[k] = min(best[k], clock() - t0)
        r += 1
        order = sorted(names, key=best.get)
        held = held + 1 if order[0] == leader else 1
        leader = order[0]
        lead = best[order[1]] / best[leader] - 1.0 if len(order) > 1 else float("inf")
        if r >= rounds[0] and held >= SETTLE_ROUNDS:
            return Measurement(best, r, True, lead)
    return Measurement(best, r, False, lead)


@dataclass(frozen=True)
class Choice:
    """What :func:`choose` answers.

    Attributes:
        name: the formulation.
        frame_seconds: its measured seconds per step over the frames the step
            computed (``measured_batch``): what one frame costs at this batch,
            comparable across batch sizes.
    """

    name: str
    frame_seconds: float


#: the formulations a record of each kind may name
KNOWN = {"pti": PTI_FORMULATIONS, "stitch": STITCH_FORMULATIONS}


def _choice(kind: str, entry: dict[str, Any]) -> Choice | None:
    """The record's answer; None for a record that does not hold one (edited or
    damaged by hand: measured again rather than trusted)."""
    try:
        name = str(entry["choice"])
        seconds = float(entry["seconds"][name]) / int(entry["measured_batch"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    ok = name in KNOWN[kind] and 0 < seconds < float("inf")
    return Choice(name, seconds) if ok else None


def choose(kind: str, G: "Generator", plan: dict[str, Any], device: Any,
           candidates: Callable[[int], dict[str, Callable[[], Any]]], *,
           extra: str = "", records: FormulationRecords | None = None) -> Choice:
    """The recorded formulation for ``kind`` ("pti" | "stitch") at ``plan``'s batch
    and dtype on ``device`` for ``G``'s architecture, with its per-frame seconds;
    measured and recorded first when there is no record. ``candidates(n)`` returns
    one step of each formulation on ``n`` frames (``min(batch,
    MEASURE_BATCH[kind])``)."""
    import torch

    batch, dtype = int(plan["batch_size"]), str(plan["dtype"])
    key = formulation_key(kind, device, dtype, G, batch, extra)
    records = records or FormulationRecords()
    hit = records.get(key)
    recorded = _choice(kind, hit) if hit is not None else None
    if recorded is not None:
        return recorded
    n = min(batch, MEASURE_BATCH[kind])
    found = measure(candidates(n), device)
    best = found.choice
    log.info("formulation for %s: %s (seconds per step: %s; %d rounds, %s)", key,
             best, ", ".join(f"{k} {v:.3f}" for k, v in found.seconds.items()),
             found.rounds, (f"a tie within {found.margin:.1%}" if found.tie
                            else "settled") if found.settled
             else "the lead changed hands until the round limit")
    entry = {"choice": best, "seconds": found.seconds, "measured_batch": n,
             "rounds": found.rounds, "settled": found.settled,
             "margin": round(found.margin, 4), "tie": found.tie,
             "torch": torch.__version__,
             "measured_at": _dt.datetime.now(_dt.timezone.utc)
             .isoformat(timespec="seconds")}
    records.put(key, entry)
    return Choice(best, found.seconds[best] / n)
