"""Recipes: how PTI and stitching tuning train, resolved once per stage.

``options.recipe`` (docs/pipeline.md "Recipes") picks between two ways of training
the generator:

- ``reference``: STIT's arithmetic (docs/reference.md "PTI", "Stitching tuning").
  PTI updates once per frame (batch 1), frames in order, at the reference learning
  rate (3e-5), in float32; stitching tunes every frame's own copy in float32.
  Several frames' stitching copies may still be computed at once: they are
  independent, so batching them changes no arithmetic (only the order of float
  sums inside a convolution).
- ``fast``: PTI in mini-batches with the learning rate scaled by the batch size,
  frames in a seeded shuffled order, bfloat16 autocast where the device computes
  it natively; stitching in the same precision. A mini-batch is used only where
  it pays: with the batch size automatic and the formulation measured, a frame's
  measured seconds in a mini-batch are compared with its seconds at batch 1, and
  unless batching is faster by more than ``BATCHING_GAIN`` PTI runs at batch 1
  (at the reference learning rate: the reference's arithmetic but for the frame
  order), which costs no speed and no fidelity (on a CPU in float32 batching
  gains nothing at the official channel counts).

``auto`` is ``reference`` for the official profile and ``fast`` for the tiny test
networks (:func:`fsexchange.options.resolve_recipe`). An explicit ``options.dtype``
wins over the recipe's precision (the benchmark runs both recipes in both
precisions), and is recorded as such.

What a stage resolved (recipe, batch, dtype, learning rate, order, formulation) is
written to ``settings.json`` in its folder before its first step and read back on a
resumed attempt (:func:`engine.stages.batching.stage_settings`), so a job taken over
by another worker trains as it started.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from fsexchange.options import PipelineConfig, resolve_recipe

from engine.stages.batching import resolve_batch, stage_settings

if TYPE_CHECKING:
    from engine.stages.formulation import Choice

__all__ = ["TrainingPlan", "job_recipe", "recipe_dtype", "pti_plan", "stitch_plan",
           "BATCHING_GAIN"]

#: how much faster per frame (relative) a PTI mini-batch must be than batch 1 for
#: the fast recipe to use it; below, batch 1, the reference's arithmetic. Not the
#: measurement's 3 % tie margin: it takes the best of a few steps, and whole
#: training loops pay more per frame at larger batches (docs/pipeline.md
#: "Recipes": float32 at batch 4 measured 2.9 % faster per frame, then ran 11 %
#: slower per frame than batch 1 in the benchmark's loops)
BATCHING_GAIN = 0.10


@dataclass(frozen=True)
class TrainingPlan:
    """How one training stage runs (JSON-able; ``settings.json``).

    Attributes:
        recipe: ``"reference"`` or ``"fast"``.
        batch_size: PTI: frames per optimiser step; stitching: frames whose
            independent copies are computed at once.
        dtype: ``"float32"`` or ``"bfloat16"`` (autocast).
        lr: the Adam learning rate used.
        shuffle: PTI visits frames in a seeded shuffled order (else in order).
        formulation: how a step is computed (engine/stages/formulation.py).
        batching: the fast recipe's PTI only, when it measured whether a
            mini-batch pays (:func:`pti_plan`): ``batch``, ``frame_seconds``,
            ``batch_1_frame_seconds``, ``gain``; else None.
    """

    recipe: str
    batch_size: int
    dtype: str
    lr: float
    shuffle: bool
    formulation: str
    batching: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["batching"] is None:
            del d["batching"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainingPlan":
        batching = d.get("batching")
        return cls(recipe=str(d["recipe"]), batch_size=int(d["batch_size"]),
                   dtype=str(d["dtype"]), lr=float(d["lr"]),
                   shuffle=bool(d["shuffle"]), formulation=str(d["formulation"]),
                   batching=dict(batching) if isinstance(batching, dict) else None)


def job_recipe(config: PipelineConfig, profile: str | None = None) -> str:
    """The job's recipe: ``config.recipe`` with ``auto`` resolved by the model
    profile (``profile``, else ``config.profile`` resolved against the store)."""
    if config.recipe != "auto":
        return config.recipe
    if profile is None:
        from engine.models.store import resolve_profile

        profile = resolve_profile(config.profile)
    return resolve_recipe(config.recipe, profile)


def recipe_dtype(recipe: str, dtype: str, device: Any) -> str:
    """The training precision: an explicit ``options.dtype`` as given; ``auto`` is
    float32 under ``reference`` and, under ``fast``, bfloat16 where the device
    computes it natively (:func:`engine.devices.resolve_dtype`)."""
    from engine.devices import resolve_dtype

    if dtype == "auto" and recipe == "reference":
        return "float32"
    return resolve_dtype(dtype, device)


def _plan(stage_dir: Path | None, resolve: Callable[[], dict[str, Any]],
          formulation: str, choose: Callable[[dict[str, Any]], "Choice"] | None,
          default: str) -> TrainingPlan:
    """The resolved settings plus the formulation: ``resolve()``'s when it chose
    one, else the job's when it names one, else ``choose``'s measurement for those
    settings, else ``default``."""
    def full() -> dict[str, Any]:
        d = resolve()
        if "formulation" not in d:
            d["formulation"] = (formulation if formulation != "auto" else
                                choose(d).name if choose is not None else default)
        return d

    if stage_dir is None:
        return TrainingPlan.from_dict(full())
    return TrainingPlan.from_dict(stage_settings(stage_dir, full))


def pti_plan(config: PipelineConfig, recipe: str, *, resolution: int, device: Any,
             frames: int, stage_dir: Path | None = None,
             choose: Callable[[dict[str, Any]], "Choice"] | None = None,
             devices: int = 1) -> TrainingPlan:
    """PTI's plan under ``recipe`` (``settings.json`` in ``stage_dir`` when given).

    ``choose(plan)`` returns the formulation for the resolved batch and dtype when
    ``options.pti.formulation`` is ``auto`` (a measurement,
    :func:`engine.stages.formulation.choose`); without it, ``modulated``. Under
    ``fast`` with ``pti.batch_size`` automatic it also decides whether the
    mini-batch pays (module docstring); the comparison is written to
    ``settings.json`` as ``batching``. Not on several ``devices`` (data
    parallelism splits each mini-batch across them, so it always pays there)."""
    cfg = config.pti

    def resolve() -> dict[str, Any]:
        dtype = recipe_dtype(recipe, config.dtype, device)
        if recipe == "reference":  # one update per frame, in order, reference lr
            return {"recipe": recipe, "batch_size": 1, "dtype": dtype, "lr": cfg.lr,
                    "shuffle": False}
        batch = max(1, resolve_batch(cfg.batch_size, "pti", resolution, device,
                                     frames))
        d = {"recipe": recipe, "batch_size": batch, "dtype": dtype,
             "lr": cfg.lr * (batch if cfg.lr_batch_scaling else 1), "shuffle": True}
        if batch > 1 and not cfg.batch_size and cfg.formulation == "auto" \
                and choose is not None and devices == 1:
            d.update(_batching(d, cfg.lr, choose))
        return d

    return _plan(stage_dir, resolve, cfg.formulation, choose, "modulated")


def _batching(plan: dict[str, Any], lr: float,
              choose: Callable[[dict[str, Any]], "Choice"]) -> dict[str, Any]:
    """The fast recipe's mini-batch against batch 1, per frame (both measured once
    per machine): what ``plan`` becomes."""
    batched = choose(plan)
    single = choose(dict(plan, batch_size=1, lr=lr))
    gain = single.frame_seconds / batched.frame_seconds - 1.0
    record = {"batch": plan["batch_size"], "frame_seconds": batched.frame_seconds,
              "batch_1_frame_seconds": single.frame_seconds, "gain": round(gain, 4)}
    if gain > BATCHING_GAIN:
        return {"formulation": batched.name, "batching": record}
    return {"batch_size": 1, "lr": lr, "formulation": single.name,
            "batching": record}


def stitch_plan(config: PipelineConfig, recipe: str, *, resolution: int,
                device: Any, frames: int, stage_dir: Path | None = None,
                choose: Callable[[dict[str, Any]], "Choice"] | None = None
                ) -> TrainingPlan:
    """Stitching tuning's plan under ``recipe``: every frame keeps its own copy,
    optimiser and early stop in both recipes; they differ in precision only.
    ``choose`` as in :func:`pti_plan` (default ``grouped``)."""
    cfg = config.stitch

    def resolve() -> dict[str, Any]:
        return {"recipe": recipe,
                "batch_size": max(1, resolve_batch(cfg.batch_size, "stitch",
                                                   resolution, device, frames)),
                "dtype": recipe_dtype(recipe, config.dtype, device), "lr": cfg.lr,
                "shuffle": False}

    return _plan(stage_dir, resolve, cfg.formulation, choose, "grouped")
