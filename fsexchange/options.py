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
]


@dataclass(frozen=True)
class TrackConfig:
    # "dlib" (STIT's and FFHQ's landmarks, docs/reference.md "Alignment") |
    # "face-alignment" (STIT --use_fa) | "auto" (face-alignment when its weights
    # are installed, else dlib)
    backend: str = "dlib"
    # dlib HOG upsampling, on frames reduced to 1280 px for detection; STIT detects
    # at full size with 0 (docs/pipeline.md "Tracking and alignment")
    detect_upsample: int = 1
    # the face to follow when the job names none: "largest" (ours) | "first" (STIT:
    # the detector's first face), chosen at the first frame with faces
    default_subject: str = "largest"
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
    # crop-edge band at 1024; None = outer_dilation, as STIT (its border_pixels is
    # outer_mask_dilation; docs/reference.md "Morphology")
    border_band: int | None = None
    # STIT feathering variant: erode by outer_dilation // 2 (51x51 at 50) with
    # border 0, then Gaussian of the same size (σ 8 px at 51)
    feather: bool = False
    # STIT --whole_image_border: stitching's border is all of 1 - M
    whole_image_border: bool = False


@dataclass(frozen=True)
class InvertConfig:
    batch_size: int = 8  # frames per encoder (or projector) batch (reference: 1)
    # "e4e" (STIT's default) | "projector": per-frame optimisation in W, STIT's
    # other first inversion (docs/reference.md "Inversion by optimisation")
    method: str = "e4e"
    projector_steps: int = 50  # STIT first_inv_steps
    # peak of the projector's lr schedule: 0.01 is what runs in STIT (its config
    # value 5e-3 is overwritten at every step; docs/reference.md)
    projector_lr: float = 0.01
    projector_lpips_weight: float = 1.0
    # an L2 term beside LPIPS (ours; the reference's projector has none: 0)
    projector_l2_weight: float = 1.0
    projector_w_samples: int = 600  # z samples for w_avg and w_std (STIT: 600)
    # warm start each frame from the previous frame's pivot, one frame at a time;
    # False: every frame starts from w_avg, as STIT
    use_last_w_pivots: bool = False


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


@dataclass(frozen=True)
class PasteConfig:
    preview_codec: str = "libx264"
    write_report: bool = True


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    # "auto" (ArcFace when installed in the model store, the papers' network; else
    # dlib) | "dlib" | "arcface" (docs/reference.md "Identity metrics TL-ID and
    # TG-ID")
    identity: str = "auto"
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
