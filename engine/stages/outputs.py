"""What each stage leaves in its folder, and typed read access for later stages.

Every stage writes below ``<job>/stages/<stage name>/``; this module is the one
place that names those files. A stage writes through its own ``*Files`` object and
reads earlier stages' results through :class:`JobFiles` (``ctx.files`` in a
stage), never through a path spelled out in a second module::

    clip = ctx.files.align.clip()             # AlignedClip: crops, masks, quads
    pivots = ctx.files.invert.pivots()        # float32 [N, num_ws, w_dim]
    G = ctx.files.pti.generator(ctx.device)   # the PTI-tuned generator

Layout (each folder also holds ``DONE.msgpack`` once its stage completed)::

    stages/track/facetrack.msgpack        FaceTrack/1 of the subject
                 parts/<first>.msgpack    a shard's face detections, per frame
    stages/align/info.json quads.npy      AlignInfo/1, quads [N, 4, 2] (NaN: no face)
                 crops/<frame>.png        aligned crops at the generator resolution
                 masks/<frame>.png        face masks (8-bit, 255 = face)
    stages/invert/pivots.npy frames.json  e4e W+ pivots [N, num_ws, w_dim], their frames
                  projector.json          projector losses (invert.method projector)
    stages/pti/generator.pt(.json)        tuned generator (engine.models.formats.native)
               loss.json checkpoint.pt    loss record; resumable state while running
    stages/edit/latents.npy frames.json   edited W+ latents; styles.npz (S edits)
                curves.json               each edit's strength on every frame
                text_directions.npz       S directions of text edits (e<index>)
    stages/refine/latents.npy frames.json refined W+ latents; styles.npz (S edits)
                  generator.pt(.json)     the refined generator (phase 2)
                  summary.json            losses, settings, metrics before/after
                  scanline_*.png          x–t slices through the face (report)
                  checkpoint.pt           resumable state while running
    stages/stitch_tune/crops/ alpha/      tuned crops (16-bit) and paste alphas
                       summary.json       border losses and curves
    stages/render/crops/ alpha/           --no-stitch: the edit rendered untuned
                                          (16-bit) and naive paste alphas
    stages/paste/composites/<frame>.png   composited preview frames of paste shards
    <stage>/preview/<frame>.png           a few frames rendered for the report
    <stage>/settings.json                 batch and precision resolved for the stage
    <stage>/shards/<i>-of-<n>.msgpack     a finished shard unit (docs/scale.md)
    <stage>/units/<unit>.msgpack          a running unit's progress (docs/scale.md)
    stages/compute.json                   the job's pinned compute threads

Torch-free (numpy only); loading a generator imports torch on demand.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fsexchange.documents import FaceTrack, StageDone, load_document
from fsexchange.errors import FaceStitchError
from fsexchange.exchange import STAGES_DIR

if TYPE_CHECKING:
    from engine.nets.stylegan2 import Generator

__all__ = ["STAGES_DIR", "DONE_FILE", "crop_name", "JobFiles", "TrackFiles",
           "AlignFiles", "AlignedClip", "InvertFiles", "PTIFiles", "EditFiles",
           "RefineFiles", "StitchFiles", "RenderFiles", "PasteFiles"]

log = logging.getLogger(__name__)

DONE_FILE = "DONE.msgpack"
PREVIEW_DIR = "preview"
SETTINGS_FILE = "settings.json"
SHARDS_DIR = "shards"
UNITS_DIR = "units"
COMPUTE_FILE = "compute.json"


def crop_name(frame: int) -> str:
    """File name of a per-frame image (crops, masks, previews): ``0000123.png``."""
    return f"{int(frame):07d}.png"


def read_frames_json(path: Path) -> list[int]:
    return [int(f) for f in json.loads(path.read_text())["frames"]]


@dataclass(frozen=True)
class _StageFiles:
    folder: Path

    @property
    def done_path(self) -> Path:
        return self.folder / DONE_FILE

    @property
    def preview_dir(self) -> Path:
        return self.folder / PREVIEW_DIR

    @property
    def settings_path(self) -> Path:
        return self.folder / SETTINGS_FILE

    def preview(self, frame: int) -> Path:
        return self.preview_dir / crop_name(frame)

    # --- shard units (docs/scale.md) ---

    @property
    def shards_dir(self) -> Path:
        return self.folder / SHARDS_DIR

    def shard_path(self, index: int, count: int) -> Path:
        """The record a finished shard ``index/count`` leaves (msgpack)."""
        return self.shards_dir / f"{int(index)}-of-{int(count)}.msgpack"

    def shard_record(self, index: int, count: int) -> dict[str, Any] | None:
        """A finished shard's record (facts, warnings, info), or None."""
        import msgpack

        try:
            return msgpack.unpackb(self.shard_path(index, count).read_bytes())
        except (OSError, ValueError):
            return None

    def finished_shards(self) -> list[tuple[int, int]]:
        """``(index, count)`` of every finished shard of this stage."""
        out = []
        try:
            names = os.listdir(self.shards_dir)
        except OSError:
            return []
        for name in sorted(names):
            stem, _, ext = name.partition(".")
            i, _, n = stem.partition("-of-")
            if ext == "msgpack" and i.isdigit() and n.isdigit():
                out.append((int(i), int(n)))
        return out

    def shard_records(self) -> list[dict[str, Any]]:
        recs = (self.shard_record(i, n) for i, n in self.finished_shards())
        return [r for r in recs if r is not None]

    @property
    def units_dir(self) -> Path:
        return self.folder / UNITS_DIR

    def unit_progress_path(self, unit: str) -> Path:
        """A running unit's progress (``unit``: ``3-of-4`` or ``final``)."""
        return self.units_dir / f"{unit}.msgpack"


@dataclass(frozen=True)
class TrackFiles(_StageFiles):
    @property
    def facetrack_path(self) -> Path:
        return self.folder / "facetrack.msgpack"

    def facetrack(self) -> FaceTrack:
        return load_document(self.facetrack_path, FaceTrack)

    @property
    def parts_dir(self) -> Path:
        return self.folder / "parts"

    def part(self, first: int) -> Path:
        """The detections of a shard whose first frame is ``first`` (msgpack)."""
        return self.parts_dir / f"{int(first):07d}.msgpack"


@dataclass(frozen=True)
class AlignFiles(_StageFiles):
    @property
    def info_path(self) -> Path:
        return self.folder / "info.json"

    @property
    def quads_path(self) -> Path:
        return self.folder / "quads.npy"

    @property
    def crops_dir(self) -> Path:
        return self.folder / "crops"

    @property
    def masks_dir(self) -> Path:
        return self.folder / "masks"

    def clip(self) -> "AlignedClip":
        return AlignedClip(self)


class AlignedClip:
    """Read access to the ``align`` stage's results.

    Attributes:
        files: the stage's :class:`AlignFiles`. info: ``info.json``.
        quads: ``[N, 4, 2]`` (NaN where the face is missing). resolution: R.
        start: ``range.start`` (``quads[i]`` belongs to frame ``start + i``).
        frames: the source frames that have a crop, in order.
    """

    def __init__(self, files: AlignFiles | Path) -> None:
        self.files = files if isinstance(files, AlignFiles) else AlignFiles(
            Path(files))
        self.folder = self.files.folder
        self.info = json.loads(self.files.info_path.read_text())
        self.quads = np.load(self.files.quads_path, allow_pickle=False)
        self.resolution = int(self.info["resolution"])
        self.start = int(self.info["range"][0])
        self.frames = [int(f) for f in self.info["frames"]]

    def quad(self, frame: int) -> np.ndarray | None:
        q = self.quads[frame - self.start]
        return None if np.isnan(q).any() else q

    def crop(self, frame: int) -> np.ndarray:
        from engine.media.video import read_image

        return read_image(self.files.crops_dir / crop_name(frame))

    def mask(self, frame: int) -> np.ndarray:
        """Face mask ``[R, R]`` bool."""
        from engine.media.video import read_image

        m = read_image(self.files.masks_dir / crop_name(frame))
        return (m[..., 0] if m.ndim == 3 else m) > 127


@dataclass(frozen=True)
class InvertFiles(_StageFiles):
    @property
    def pivots_path(self) -> Path:
        return self.folder / "pivots.npy"

    @property
    def frames_path(self) -> Path:
        return self.folder / "frames.json"

    @property
    def parts_dir(self) -> Path:
        return self.folder / "parts"

    @property
    def projector_path(self) -> Path:
        return self.folder / "projector.json"

    def projector(self) -> dict[str, Any] | None:
        """The projector's settings and per-frame losses (``invert.method``
        "projector" only)."""
        return _read_json(self.projector_path)

    def pivots(self) -> np.ndarray:
        """float32 ``[N, num_ws, w_dim]``, one row per entry of :meth:`frames`."""
        return np.load(self.pivots_path).astype(np.float32)

    def frames(self) -> list[int]:
        return read_frames_json(self.frames_path)


@dataclass(frozen=True)
class PTIFiles(_StageFiles):
    @property
    def generator_path(self) -> Path:
        return self.folder / "generator.pt"

    @property
    def loss_path(self) -> Path:
        return self.folder / "loss.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.folder / "checkpoint.pt"

    def generator(self, device: str = "cpu") -> "Generator":
        """The tuned generator (eval mode, no gradients)."""
        from engine.models.checkpoints import load_generator

        return load_generator(self.generator_path, device=device)

    def loss(self) -> dict[str, Any] | None:
        return _read_json(self.loss_path)


@dataclass(frozen=True)
class EditFiles(_StageFiles):
    @property
    def latents_path(self) -> Path:
        return self.folder / "latents.npy"

    @property
    def styles_path(self) -> Path:
        return self.folder / "styles.npz"

    @property
    def frames_path(self) -> Path:
        return self.folder / "frames.json"

    @property
    def curves_path(self) -> Path:
        return self.folder / "curves.json"

    @property
    def text_directions_path(self) -> Path:
        return self.folder / "text_directions.npz"

    def text_directions(self) -> dict[int, np.ndarray]:
        """The S-space directions computed for the job's text edits, by the edit's
        index in ``Job.edits`` (empty without text edits)."""
        if not self.text_directions_path.exists():
            return {}
        with np.load(self.text_directions_path, allow_pickle=False) as z:
            return {int(k[1:]): z[k] for k in z.files}

    def frames(self) -> list[int]:
        return read_frames_json(self.frames_path)

    def curves(self) -> dict[str, Any] | None:
        return _read_json(self.curves_path)


@dataclass(frozen=True)
class RefineFiles(EditFiles):
    """The ``refine`` stage's folder. Its latent files are laid out as the edit
    stage's (``latents.npy``, ``styles.npz``, ``frames.json``; no curves), so
    stitching tuning reads either through one code path; :meth:`ready` says
    whether refinement ran (a job with ``options.refine.enabled`` false leaves only
    ``DONE.msgpack``)."""

    @property
    def generator_path(self) -> Path:
        return self.folder / "generator.pt"

    @property
    def summary_path(self) -> Path:
        return self.folder / "summary.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.folder / "checkpoint.pt"

    def scanline_path(self, which: str) -> Path:
        """``which``: "source", "before" (the direct edit) or "after"."""
        return self.folder / f"scanline_{which}.png"

    def ready(self) -> bool:
        """True when the stage completed with refined latents and a generator."""
        return (self.done_path.is_file() and self.latents_path.is_file()
                and self.generator_path.is_file())

    def generator(self, device: str = "cpu") -> "Generator":
        """The refined generator (eval mode, no gradients)."""
        from engine.models.checkpoints import load_generator

        return load_generator(self.generator_path, device=device)

    def summary(self) -> dict[str, Any] | None:
        return _read_json(self.summary_path)


@dataclass(frozen=True)
class StitchFiles(_StageFiles):
    @property
    def crops_dir(self) -> Path:
        return self.folder / "crops"

    @property
    def alpha_dir(self) -> Path:
        return self.folder / "alpha"

    @property
    def parts_dir(self) -> Path:
        return self.folder / "parts"

    @property
    def summary_path(self) -> Path:
        return self.folder / "summary.json"

    def crop(self, frame: int) -> Path:
        return self.crops_dir / crop_name(frame)

    def alpha(self, frame: int) -> Path:
        return self.alpha_dir / crop_name(frame)

    def summary(self) -> dict[str, Any] | None:
        return _read_json(self.summary_path)


@dataclass(frozen=True)
class RenderFiles(_StageFiles):
    """The ``render`` stage (``--no-stitch``): per frame the edited crop as the
    PTI generator renders it, and the naive paste alpha; the paste stage reads
    them as it reads stitching tuning's."""

    @property
    def crops_dir(self) -> Path:
        return self.folder / "crops"

    @property
    def alpha_dir(self) -> Path:
        return self.folder / "alpha"

    def crop(self, frame: int) -> Path:
        return self.crops_dir / crop_name(frame)

    def alpha(self, frame: int) -> Path:
        return self.alpha_dir / crop_name(frame)


@dataclass(frozen=True)
class PasteFiles(_StageFiles):
    @property
    def composites_dir(self) -> Path:
        return self.folder / "composites"

    def composite(self, frame: int) -> Path:
        """A shard's composited preview frame (8-bit RGB), which the final unit
        encodes into the preview movie."""
        return self.composites_dir / crop_name(frame)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class JobFiles:
    """The stage folders of one job folder, typed by stage."""

    job_dir: Path

    def stage_dir(self, name: str) -> Path:
        return self.job_dir / STAGES_DIR / name

    def of(self, name: str) -> _StageFiles:
        """The files every stage folder has (DONE, settings, shard records)."""
        return _StageFiles(self.stage_dir(name))

    @property
    def compute_path(self) -> Path:
        """``stages/compute.json``: the intra-op thread count every unit of the job
        computes with (engine/stages/units.py)."""
        return self.job_dir / STAGES_DIR / COMPUTE_FILE

    @property
    def track(self) -> TrackFiles:
        return TrackFiles(self.stage_dir("track"))

    @property
    def align(self) -> AlignFiles:
        return AlignFiles(self.stage_dir("align"))

    @property
    def invert(self) -> InvertFiles:
        return InvertFiles(self.stage_dir("invert"))

    @property
    def pti(self) -> PTIFiles:
        return PTIFiles(self.stage_dir("pti"))

    @property
    def edit(self) -> EditFiles:
        return EditFiles(self.stage_dir("edit"))

    @property
    def refine(self) -> RefineFiles:
        return RefineFiles(self.stage_dir("refine"))

    @property
    def stitch_tune(self) -> StitchFiles:
        return StitchFiles(self.stage_dir("stitch_tune"))

    @property
    def render(self) -> RenderFiles:
        return RenderFiles(self.stage_dir("render"))

    @property
    def paste(self) -> PasteFiles:
        return PasteFiles(self.stage_dir("paste"))

    def done(self, name: str) -> StageDone | None:
        """The DONE document of a stage, or None if it has not completed (a torn
        or unreadable one counts as not completed: the stage runs again)."""
        p = self.stage_dir(name) / DONE_FILE
        try:
            return load_document(p, StageDone)
        except FileNotFoundError:
            return None
        except FaceStitchError as exc:
            log.warning("ignoring unreadable %s: %s", p, exc)
            return None

    def completed(self) -> dict[str, StageDone]:
        """Every completed stage's DONE document, in the order they finished."""
        root = self.job_dir / STAGES_DIR
        docs = [self.done(d.name) for d in sorted(root.iterdir())
                if d.is_dir()] if root.is_dir() else []
        return {d.stage: d for d in sorted((d for d in docs if d is not None),
                                           key=lambda d: d.finished)}
