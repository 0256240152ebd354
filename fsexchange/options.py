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
    "RefineConfig",
    "REFINE_FLOWS",
    "refine_options",
    "PasteConfig",
    "MetricsConfig",
    "PipelineConfig",
]


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
    # Adam lr x batch_size (linear scaling): the reference steps once per frame; with
    # B frames per step this keeps the progress per pass (bench/pipeline.py).
    lr_batch_scaling: bool = True
    l2_weight: float = 10.0  # STIT CLI override of L2 λ (docs/reference.md "PTI")
    lpips_weight: float = 1.0
    batch_size: int = 0  # frames per optimiser step (reference: 1); 0 = auto
    # (as many as the device's memory holds, up to 16: engine/stages/batching.py)
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
    batch_size: int = 0  # frames tuned at once with stacked per-frame weights;
    # 0 = auto (engine/stages/batching.py)
    l1: bool = False


#: ``options.refine.flow`` values: RAFT in the autograd graph when its weights are
#: installed, else OpenCV DIS on detached frames (auto); or one of them by name.
REFINE_FLOWS = ("auto", "raft", "dis")


@dataclass(frozen=True)
class RefineConfig:
    """VideoEditGAN's flow-based refinement (stage ``refine``, between ``edit`` and
    ``stitch_tune``). Defaults: the README's in-domain command (docs/reference.md
    "Refinement settings"); FaceStitch's own choices say so (docs/pipeline.md
    "Temporal refinement")."""

    enabled: bool = True  # runs in stitch jobs unless `facestitch submit --no-refine`
    flow: str = "auto"  # "auto" | "raft" | "dis" (REFINE_FLOWS)
    flow_scale: int = 4  # README --scale_factor 4: flow and loss at R/4 (256 at 1024)
    # ours: at least this many px (LPIPS-alex and DIS need room; tiny profile only)
    min_flow_size: int = 64
    raft_iters: int = 20  # RAFT updates (docs/reference.md "Flow network")
    batch_size: int = 0  # (anchor, frame) pairs per step (reference 1); 0 = auto
    # Adam lr x pairs per step (linear scaling, as pti.lr_batch_scaling)
    lr_batch_scaling: bool = True
    visibility_k: float = 5.0  # V = exp(-5 e), forward-backward error e in pixels
    # ours: the anchor re-rendered at each frame's edit strength, so keyframed edits
    # keep their curve (docs/pipeline.md "Temporal refinement"); False = reference
    strength_matched_anchor: bool = True
    weight_photo: float = 1.0  # README --weight_photo
    # ours: an L1 term on the same masked pairs, for LPIPS without a perceptual
    # backbone (the tiny profile's); 0 = the reference's LPIPS-only photometric loss
    weight_photo_l1: float = 0.0
    weight_cycle: float = 10.0  # README --weight_cycle
    weight_tv_flow: float = 0.0  # README --weight_tv_flow
    lr_step_epochs_w: int = 50  # StepLR(50, 0.5) in phase 1
    lr_step_epochs_g: int = 100  # StepLR(100, 0.5) in phase 2
    lr_gamma: float = 0.5
    # phase 1: latent residual mapper (StyleCLIP LevelsMapper), generator frozen
    epochs_w: int = 10  # README --epochs_w
    lr_w: float = 1e-3  # README --lr
    residual_scale: float = 0.04  # s in w' = w + s MLP(w) (0.05 only for eyeglasses)
    # ours: the mapper's last layers start at zero (w' = w_edit before training);
    # False = the reference's random start
    mapper_zero_init: bool = True
    reg_frame: float = 0.2  # README --reg_frame: weight of mean |MLP(w)|
    weight_out_mask_w: float = 0.5  # README --weight_out_mask (phase 1 uses it as is)
    # phase 2: generator fine-tuning, latents fixed to phase 1's
    epochs_g: int = 3  # README --epochs_G
    lr_g: float = 1e-4  # README --lr_G
    weight_out_mask_g: float = 7.5  # README 0.5 x 15 (the code's phase-2 factor)
    weight_in_mask: float = 0.0  # README --weight_in_mask
    reg_g: float = 100.0  # README --reg_G: weight of PTI's locality regulariser
    locality_alpha: float = 30.0  # PTI locality regulariser (docs/reference.md "PTI")
    locality_l2: float = 0.1
    locality_lpips: float = 0.1
    # ours (the paper; the reference code trains every layer): the W+ layers from
    # num_ws - 8 on (128 px and finer at 1024) stay frozen, against blur
    freeze_fine_layers: int = 8
    checkpoint_every: int = 5  # epochs between resumable checkpoints
    checkpoint_seconds: float = 120.0  # also checkpoint this often (0 = off)
    cache_frames: int = 64  # aligned crops kept decoded (the rest re-read)

    def __post_init__(self) -> None:
        if self.flow not in REFINE_FLOWS:
            raise DocumentFieldError(
                f"options.refine.flow must be one of {', '.join(REFINE_FLOWS)}, got "
                f"{self.flow!r}", field="options.refine.flow")
        if self.flow_scale < 1:
            raise DocumentFieldError("options.refine.flow_scale must be >= 1",
                                     field="options.refine.flow_scale")


def refine_options(options: Mapping[str, Any] | None, enabled: bool | None = None
                   ) -> dict[str, Any]:
    """``options`` with ``refine.enabled`` recorded: ``enabled`` when given (the
    ``--no-refine`` switches), else what the options say, else the default (on)."""
    out = dict(options or {})
    section = out.get("refine")
    section = dict(section) if isinstance(section, Mapping) else {}
    if enabled is not None:
        section["enabled"] = bool(enabled)
    section.setdefault("enabled", RefineConfig.enabled)
    out["refine"] = section
    return out


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
    "refine": RefineConfig,
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
    # bfloat16 where the device computes it natively (CUDA with bf16, CPUs with
    # AVX512-BF16 or AMX), else float32; resolved per stage by
    # engine.devices.resolve_dtype and recorded in the stage's facts.
    dtype: str = "auto"
    seed: int = 0
    track: TrackConfig = field(default_factory=TrackConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    invert: InvertConfig = field(default_factory=InvertConfig)
    pti: PTIConfig = field(default_factory=PTIConfig)
    edit: EditConfig = field(default_factory=EditConfig)
    stitch: StitchConfig = field(default_factory=StitchConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
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
            elif key in ("profile", "device", "dtype"):
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
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
