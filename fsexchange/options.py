"""Frozen, resolved pipeline configuration, built once from ``Job.options``.

``PipelineConfig.from_options(job.options)`` validates every key (errors name the
field, e.g. ``options.pti.steps``) and the engine writes ``config.json`` (the fully
resolved values) into the job folder, so a result can always be traced back to the
settings that produced it. Stage code receives its own sub-config and never reads
globals. Defaults cite their source.

Options layout in a job (all optional)::

    {"profile": "tiny", "device": "cpu",
     "pti": {"steps": 40}, "stitch": {"steps": 50, "batch_size": 4}, ...}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from fsexchange.errors import DocumentFieldError

__all__ = [
    "TrackConfig",
    "AlignConfig",
    "MaskConfig",
    "InvertConfig",
    "PTIConfig",
    "EditConfig",
    "StitchConfig",
    "PasteConfig",
    "MetricsConfig",
    "PipelineConfig",
    "RECIPES",
    "resolve_recipe",
    "PTI_FORMULATIONS",
    "STITCH_FORMULATIONS",
]

#: ``options.recipe`` values: how PTI and stitching tuning train (docs/pipeline.md
#: "Recipes"). ``reference`` = STIT's arithmetic (batch-1 updates in frame order at
#: the reference lr, float32); ``fast`` = mini-batches with the lr scaled by the
#: batch, shuffled frames, bfloat16 where the device computes it natively.
RECIPES = ("reference", "fast")


def resolve_recipe(recipe: str, profile: str) -> str:
    """``options.recipe`` for a job on the resolved model ``profile``: ``auto`` is
    ``reference`` for the official networks and ``fast`` for the tiny test ones,
    until a comparison on the official weights shows ``fast`` as good
    (docs/pipeline.md "Recipes"); an explicit recipe passes through."""
    if recipe == "auto":
        return "reference" if profile == "official" else "fast"
    return recipe


#: the ways of computing the same step (engine/stages/formulation.py measures them)
PTI_FORMULATIONS = ("modulated", "autograd", "scaled")
STITCH_FORMULATIONS = ("grouped", "loop", "vmap")


@dataclass(frozen=True)
class TrackConfig:
    backend: str = "auto"  # "auto" | "dlib" | "face-alignment"; auto = fa if weights
    # dlib HOG upsampling; STIT uses 0 (docs/reference.md "Alignment")
    detect_upsample: int = 1
    # dlib HOG score threshold (docs/environment.md "dlib and its data files")
    min_score: float = 0.0
    # gaps up to this many frames are interpolated, longer pass through
    max_gap: int = 8
    # box-centre jump (in face sizes) that breaks identity
    identity_max_jump: float = 0.35


@dataclass(frozen=True)
class AlignConfig:
    resolution: int = 0  # 0 = the generator's resolution (1024 official)
    center_sigma: float = 1.0  # STIT --center_sigma (docs/reference.md "Alignment")
    xy_sigma: float = 3.0  # STIT --xy_sigma (docs/reference.md "Alignment")
    scale: float = 1.0  # STIT --scale
    padding: str = "reflect"  # "reflect" (ours, FFHQ-like) | "black" (STIT)


@dataclass(frozen=True)
class MaskConfig:
    parser: str = "auto"  # "auto" | "bisenet" | "hull"; auto = bisenet if installed
    # STIT outer_mask_dilation at 1024 (docs/reference.md "Stitching tuning")
    outer_dilation: int = 50
    inner_dilation: int = 0  # STIT inner_mask_dilation
    # crop-edge band at 1024 (25 at 512, docs/reference.md "Stitching tuning")
    border_band: int = 50
    feather: bool = False  # STIT feathering variant: erode 51 + Gaussian (σ 8 px)


@dataclass(frozen=True)
class InvertConfig:
    batch_size: int = 8  # frames per encoder batch (reference: 1)


@dataclass(frozen=True)
class PTIConfig:
    # passes over all frames; STIT README uses 80 (docs/reference.md "PTI")
    steps: int = 80
    lr: float = 3e-5  # STIT PTI lr (docs/reference.md "PTI"), for one frame per step
    # fast recipe: Adam lr x batch_size (linear scaling): the reference steps once
    # per frame; with B frames per step this keeps the progress per pass
    # (docs/pipeline.md "Recipes"). The reference recipe never scales.
    lr_batch_scaling: bool = True
    l2_weight: float = 10.0  # STIT CLI override of L2 λ (docs/reference.md "PTI")
    lpips_weight: float = 1.0
    batch_size: int = 0  # fast recipe: frames per optimiser step; 0 = auto (as
    # many as the device's memory holds, up to 16: engine/stages/batching.py). The
    # reference recipe updates once per frame (batch 1) whatever this says.
    # how the network computes a step (same arithmetic; docs/pipeline.md "Speed"):
    # "auto" = the fastest measured on this device (engine/stages/formulation.py),
    # or "modulated" | "autograd" | "scaled"
    formulation: str = "auto"
    locality_reg: bool = False  # off in STIT's effective defaults
    locality_alpha: float = 30.0
    locality_l2: float = 0.1
    locality_lpips: float = 0.1
    checkpoint_every: int = 10  # passes between resumable checkpoints
    checkpoint_seconds: float = 300.0  # also checkpoint this often (0 = off)
    cache_frames: int = 64  # decoded crops kept in memory (the rest re-read per pass)
    gradient_checkpointing: bool = False  # trade compute for memory on small GPUs


@dataclass(frozen=True)
class EditConfig:
    # STIT --freeze_fine_layers (docs/reference.md "Editing")
    freeze_fine_layers: int | None = None


@dataclass(frozen=True)
class StitchConfig:
    steps: int = 100  # STIT stitching steps (docs/reference.md "Stitching tuning")
    lr: float = 3e-4  # STIT stitching lr (docs/reference.md "Stitching tuning")
    # interior loss λ (docs/reference.md "Stitching tuning")
    content_weight: float = 0.01
    # early stop; 0 = off (docs/reference.md "Stitching tuning")
    border_loss_threshold: float = 0.0
    batch_size: int = 0  # frames tuned at once (independent per-frame copies);
    # 0 = auto (engine/stages/batching.py)
    l1: bool = False
    # how a batch of per-frame copies is computed (same arithmetic; docs/pipeline.md
    # "Speed"): "auto" = the fastest measured on this device
    # (engine/stages/formulation.py), or "grouped" | "loop" | "vmap"
    formulation: str = "auto"


@dataclass(frozen=True)
class PasteConfig:
    preview_codec: str = "libx264"
    write_report: bool = True


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    identity: str = "dlib"  # "dlib" | "arcface"
    flow: str = "dis"  # "dis" | "farneback" | "raft"


_SECTIONS = {
    "track": TrackConfig,
    "align": AlignConfig,
    "mask": MaskConfig,
    "invert": InvertConfig,
    "pti": PTIConfig,
    "edit": EditConfig,
    "stitch": StitchConfig,
    "paste": PasteConfig,
    "metrics": MetricsConfig,
}


def _build_section(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise DocumentFieldError(f"{where} must be a map", field=where)
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        f = known.get(key)
        if f is None:
            raise DocumentFieldError(
                f"unknown option {where}.{key}; known: {', '.join(sorted(known))}",
                field=f"{where}.{key}")
        default = f.default
        if default is None or isinstance(default, dataclasses._MISSING_TYPE):
            ok = value is None or isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise DocumentFieldError(
                f"option {where}.{key} must be {type(default).__name__}, got {value!r}",
                field=f"{where}.{key}")
        if (isinstance(value, (int, float)) and not isinstance(value, bool)
                and value < 0):
            raise DocumentFieldError(f"option {where}.{key} must be >= 0",
                                     field=f"{where}.{key}")
        kwargs[key] = value
    return cls(**kwargs)


@dataclass(frozen=True)
class PipelineConfig:
    # "auto" (official if installed, else tiny) | "official" | "tiny"
    profile: str = "auto"
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    # "auto" | "float32" | "bfloat16": the precision PTI and stitching tuning train
    # in (bfloat16 = autocast with float32 weights and optimiser state). auto =
    # float32 under the reference recipe; under fast, bfloat16 where the device
    # computes it natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX), else
    # float32; resolved per stage (engine/stages/recipe.py) and recorded in the
    # stage's facts.
    dtype: str = "auto"
    # "auto" | "reference" | "fast" (RECIPES, resolve_recipe): auto = reference on
    # the official profile, fast on tiny; the runner records the resolved value
    recipe: str = "auto"
    seed: int = 0
    track: TrackConfig = field(default_factory=TrackConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    invert: InvertConfig = field(default_factory=InvertConfig)
    pti: PTIConfig = field(default_factory=PTIConfig)
    edit: EditConfig = field(default_factory=EditConfig)
    stitch: StitchConfig = field(default_factory=StitchConfig)
    paste: PasteConfig = field(default_factory=PasteConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    @classmethod
    def from_options(cls, options: Mapping[str, Any],
                     **overrides: Any) -> "PipelineConfig":
        """Validate ``Job.options`` (plus engine-side overrides such as ``device``)."""
        opts = dict(options)
        opts.update({k: v for k, v in overrides.items() if v is not None})
        kwargs: dict[str, Any] = {}
        for key, value in opts.items():
            where = f"options.{key}"
            if key in _SECTIONS:
                kwargs[key] = _build_section(_SECTIONS[key], value, where)
            elif key in ("profile", "device", "dtype", "recipe"):
                if not isinstance(value, str):
                    raise DocumentFieldError(f"{where} must be a string", field=where)
                kwargs[key] = value
            elif key == "seed":
                if not isinstance(value, int) or isinstance(value, bool):
                    raise DocumentFieldError(f"{where} must be an integer", field=where)
                kwargs[key] = value
            else:
                raise DocumentFieldError(f"unknown option {where}", field=where)
        cfg = cls(**kwargs)
        if cfg.profile not in ("auto", "official", "tiny"):
            raise DocumentFieldError("options.profile must be auto, official or tiny",
                                     field="options.profile")
        if cfg.dtype not in ("auto", "float32", "bfloat16"):
            raise DocumentFieldError("options.dtype must be auto, float32 or bfloat16",
                                     field="options.dtype")
        if cfg.recipe not in ("auto", *RECIPES):
            raise DocumentFieldError("options.recipe must be auto, reference or fast",
                                     field="options.recipe")
        for where, value, known in (
                ("options.pti.formulation", cfg.pti.formulation, PTI_FORMULATIONS),
                ("options.stitch.formulation", cfg.stitch.formulation,
                 STITCH_FORMULATIONS)):
            if value not in ("auto", *known):
                raise DocumentFieldError(
                    f"{where} must be auto or one of {', '.join(known)}", field=where)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
