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
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from fsexchange.errors import DocumentFieldError, FaceStitchError

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
    "ColourConfig",
    "DraftConfig",
    "PipelineConfig",
    "RECIPES",
    "DTYPES",
    "resolve_recipe",
    "PTI_FORMULATIONS",
    "STITCH_FORMULATIONS",
    "Range",
    "OPTION_RANGES",
]

#: ``options.recipe`` values: how PTI and stitching tuning train (docs/pipeline.md
#: "Recipes"). ``reference`` = STIT's arithmetic (batch-1 updates in frame order at
#: the reference lr, float32); ``fast`` = mini-batches with the lr scaled by the
#: batch, shuffled frames, bfloat16 where the device computes it natively.
RECIPES = ("reference", "fast")

#: ``options.dtype`` values besides ``auto``: the training precision
#: (docs/pipeline.md "Batches and precision"). ``float32`` is IEEE float32 on
#: every device; ``tf32`` is float32 with TensorFloat-32 convolutions and matrix
#: products (CUDA, compute capability 8.0+; labelled, never chosen by ``auto``);
#: ``bfloat16`` is autocast over float32 weights and optimiser state.
DTYPES = ("float32", "tf32", "bfloat16")


def resolve_recipe(recipe: str, profile: str) -> str:
    """``options.recipe`` for a job on the resolved model ``profile``: ``auto`` is
    ``reference`` for the official networks and ``fast`` for the tiny test ones,
    until a comparison on the official weights shows ``fast`` as good
    (docs/pipeline.md "Recipes"); an explicit recipe passes through."""
    if recipe == "auto":
        return "reference" if profile == "official" else "fast"
    return recipe


#: the ways of computing the same step (engine/stages/formulation.py measures them)
PTI_FORMULATIONS = ("modulated", "autograd", "scaled", "hybrid", "loop")
STITCH_FORMULATIONS = ("grouped", "loop", "hybrid", "vmap")


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
    # or "modulated" | "autograd" | "scaled" | "hybrid" | "loop"
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
    # (engine/stages/formulation.py), or "grouped" | "loop" | "hybrid" | "vmap"
    formulation: str = "auto"
    # False (--no-stitch): no tuning; the edited crops are pasted back with the
    # undilated face mask, STIT's edit_video.py (docs/reference.md "Paste-back")
    tune: bool = True


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
    # "auto" (ArcFace when installed in the model store, the papers' network; else
    # dlib) | "dlib" | "arcface" (docs/reference.md "Identity metrics TL-ID and
    # TG-ID")
    identity: str = "auto"
    flow: str = "dis"  # "dis" | "farneback" | "raft"


@dataclass(frozen=True)
class ColourConfig:
    """The source's colour encoding and the networks' view of it (docs/colour.md).
    A section of ``Job.options`` rather than a Job field: it is a pipeline setting
    like the others, recorded resolved in ``config.json``, and needs no new Job
    version (older engines refuse the unknown option instead of ignoring it)."""

    # OCIO colour-space name or alias (fsexchange.colour.SOURCE_NAMES); "" = from
    # the media's tags (Rec.709 for untagged video, docs/colour.md)
    source: str = ""
    # OCIO config file on the engine's machine; "" = the engine's $OCIO or
    # --ocio-config, else the built-in studio config (engine.media.colour)
    config: str = ""
    display: str = ""  # the networks' display; "" = Rec.1886 Rec.709 - Display
    view: str = ""  # its view transform; "" = the config's default for the display


@dataclass(frozen=True)
class DraftConfig:
    """A ``draft`` job (docs/pipeline.md "Drafts")."""

    count: int = 5  # frames spread evenly over the range, first and last included
    frames: tuple[int, ...] = ()  # these source frames instead (--frames)
    # strengths to render, fsexchange.grammar.parse_sweep text ("age=-8:8:5");
    # "" = the job's edits once
    sweep: str = ""
    pti_steps: int = 0  # --draft-pti: PTI passes over the draft frames; 0 = e4e only
    tile: int = 256  # sheet tile size in pixels


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
    "colour": ColourConfig,
    "draft": DraftConfig,
}


@dataclass(frozen=True)
class Range:
    """The values a numeric option accepts: ``lo..hi`` (``lo`` itself excluded
    when ``above``); ``power_of_two``: a power of two in ``lo..hi``, or 0 (= the
    automatic value)."""

    lo: float
    hi: float
    above: bool = False
    power_of_two: bool = False

    def accepts(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.power_of_two:
            return value == 0 or (self.lo <= value <= self.hi
                                  and int(value) & (int(value) - 1) == 0)
        return (self.lo < value if self.above else self.lo <= value) and \
            value <= self.hi

    def text(self) -> str:
        """In words, as docs/protocol.md "Job options" writes it."""
        lo, hi = _number(self.lo), _number(self.hi)
        if self.power_of_two:
            return f"0 or a power of two from {lo} to {hi}"
        if self.above:
            return f"greater than {lo} and at most {hi}"
        return f"from {lo} to {hi}"


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


#: Every numeric option's accepted values (docs/protocol.md "Job options", kept in
#: sync by tests). Bounds keep a job inside what a machine can do (a resolution of
#: 2^20 asked for terabytes), learning rates and sigmas finite and positive.
OPTION_RANGES: dict[str, Range] = {
    "seed": Range(0, 2**32 - 1),  # numpy seeds are 32-bit
    "track.detect_upsample": Range(0, 4),
    "track.min_score": Range(0, 10),
    "track.max_gap": Range(0, 10_000),
    "track.identity_max_jump": Range(0, 100, above=True),
    "align.resolution": Range(8, 4096, power_of_two=True),
    "align.center_sigma": Range(0, 1000),
    "align.xy_sigma": Range(0, 1000),
    "align.scale": Range(0.1, 10),
    "mask.outer_dilation": Range(0, 4096),
    "mask.inner_dilation": Range(0, 4096),
    "mask.border_band": Range(0, 4096),
    "invert.batch_size": Range(1, 1024),
    "invert.projector_steps": Range(1, 100_000),
    "invert.projector_lr": Range(0, 1, above=True),
    "invert.projector_lpips_weight": Range(0, 1e6),
    "invert.projector_l2_weight": Range(0, 1e6),
    "invert.projector_w_samples": Range(1, 1_000_000),
    "pti.steps": Range(0, 100_000),
    "pti.lr": Range(0, 1, above=True),
    "pti.l2_weight": Range(0, 1e6),
    "pti.lpips_weight": Range(0, 1e6),
    "pti.batch_size": Range(0, 1024),
    "pti.locality_alpha": Range(0, 1e6),
    "pti.locality_l2": Range(0, 1e6),
    "pti.locality_lpips": Range(0, 1e6),
    "pti.checkpoint_every": Range(0, 100_000),
    "pti.checkpoint_seconds": Range(0, 86_400),
    "pti.cache_frames": Range(0, 1_000_000),
    "edit.freeze_fine_layers": Range(0, 64),
    "stitch.steps": Range(0, 100_000),
    "stitch.lr": Range(0, 1, above=True),
    "stitch.content_weight": Range(0, 1e6),
    "stitch.border_loss_threshold": Range(0, 1e6),
    "stitch.batch_size": Range(0, 1024),
    "refine.flow_scale": Range(1, 64),
    "refine.min_flow_size": Range(8, 4096),
    "refine.raft_iters": Range(1, 1000),
    "refine.batch_size": Range(0, 1024),
    "refine.visibility_k": Range(0, 1e6),
    "refine.weight_photo": Range(0, 1e6),
    "refine.weight_photo_l1": Range(0, 1e6),
    "refine.weight_cycle": Range(0, 1e6),
    "refine.weight_tv_flow": Range(0, 1e6),
    "refine.lr_step_epochs_w": Range(1, 100_000),
    "refine.lr_step_epochs_g": Range(1, 100_000),
    "refine.lr_gamma": Range(0, 1, above=True),
    "refine.epochs_w": Range(0, 100_000),
    "refine.lr_w": Range(0, 1, above=True),
    "refine.residual_scale": Range(0, 1000),
    "refine.reg_frame": Range(0, 1e6),
    "refine.weight_out_mask_w": Range(0, 1e6),
    "refine.epochs_g": Range(0, 100_000),
    "refine.lr_g": Range(0, 1, above=True),
    "refine.weight_out_mask_g": Range(0, 1e6),
    "refine.weight_in_mask": Range(0, 1e6),
    "refine.reg_g": Range(0, 1e6),
    "refine.locality_alpha": Range(0, 1e6),
    "refine.locality_l2": Range(0, 1e6),
    "refine.locality_lpips": Range(0, 1e6),
    "refine.freeze_fine_layers": Range(0, 64),
    "refine.checkpoint_every": Range(0, 100_000),
    "refine.checkpoint_seconds": Range(0, 86_400),
    "refine.cache_frames": Range(0, 1_000_000),
    "draft.count": Range(1, 64),
    "draft.pti_steps": Range(0, 10_000),
    "draft.tile": Range(32, 1024),
}
#: Numeric options missing from the table (none, by a test) keep at least this.
_DEFAULT_RANGE = Range(0, 2**31 - 1)


def _check_range(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    rng = OPTION_RANGES.get(name, _DEFAULT_RANGE)
    if not rng.accepts(value):
        raise DocumentFieldError(f"option options.{name} must be {rng.text()}, got "
                                 f"{value}", field=f"options.{name}")


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
        elif isinstance(default, tuple):  # lists of frame numbers
            ok = isinstance(value, (list, tuple)) and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for v in value)
            value = tuple(value) if ok else value
        else:
            ok = isinstance(value, type(default))
        if not ok:
            kind = ("a list of frame numbers" if isinstance(default, tuple)
                    else type(default).__name__)
            raise DocumentFieldError(
                f"option {where}.{key} must be {kind}, got {value!r}",
                field=f"{where}.{key}")
        _check_range(f"{where.removeprefix('options.')}.{key}", value)
        kwargs[key] = value
    return cls(**kwargs)


@dataclass(frozen=True)
class PipelineConfig:
    # "auto" (official if installed, else tiny) | "official" | "tiny"
    profile: str = "auto"
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    # "auto" | "float32" | "tf32" | "bfloat16": the precision PTI, stitching and
    # refinement tuning train in (bfloat16 = autocast with float32 weights and
    # optimiser state; tf32 = float32 throughout but convolutions and matrix
    # products with TensorFloat-32 inputs, CUDA GPUs of compute capability 8.0+
    # only, never chosen by auto). auto = float32 under the reference recipe;
    # under fast, bfloat16 where the device computes it natively (CUDA with bf16,
    # CPUs with AVX512-BF16 or AMX), else float32; resolved per stage
    # (engine/stages/recipe.py) and recorded in the stage's facts.
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
    refine: RefineConfig = field(default_factory=RefineConfig)
    paste: PasteConfig = field(default_factory=PasteConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    colour: ColourConfig = field(default_factory=ColourConfig)
    draft: DraftConfig = field(default_factory=DraftConfig)

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
                _check_range(key, value)
                kwargs[key] = value
            else:
                raise DocumentFieldError(f"unknown option {where}", field=where)
        cfg = cls(**kwargs)
        if cfg.profile not in ("auto", "official", "tiny"):
            raise DocumentFieldError("options.profile must be auto, official or tiny",
                                     field="options.profile")
        if cfg.dtype not in ("auto", *DTYPES):
            raise DocumentFieldError(
                "options.dtype must be auto, float32, tf32 or bfloat16",
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
        _check_draft(cfg.draft)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (``config.json``): tuples become lists."""
        return _lists(dataclasses.asdict(self))


def _lists(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_lists(v) for v in obj]
    return obj


def _check_draft(cfg: DraftConfig) -> None:
    """Ranges of ``options.draft``, and its sweep text parsed as every client and
    the engine parse it (:func:`fsexchange.grammar.parse_sweep`)."""
    from fsexchange.grammar import parse_sweep

    for key, value, lo, hi in (("count", cfg.count, 1, 64), ("tile", cfg.tile, 32,
                                                              1024)):
        if not lo <= value <= hi:
            raise DocumentFieldError(f"option options.draft.{key} must be {lo} to "
                                     f"{hi}, got {value}", field=f"options.draft.{key}")
    if len(cfg.frames) > 64:
        raise DocumentFieldError("option options.draft.frames: at most 64 frames",
                                 field="options.draft.frames")
    try:
        parse_sweep(cfg.sweep)
    except FaceStitchError as exc:  # edit.invalid, naming the option
        exc.field = "options.draft.sweep"
        raise
