"""StyleCLIP global directions from a text prompt (docs/reference.md "StyleCLIP
global directions"): a text edit becomes an S-space :class:`Direction`, which the
edit stage applies like any installed S direction (``s + strength · d``).

1. **Text features**: for a class name, CLIP's text features of the 80 ImageNet
   prompt templates ("a bad photo of a {}.", ...), each L2-normalised, averaged,
   and normalised again (:meth:`TextEncoder.class_embedding`).
2. **Direction in CLIP space**: ``Δt = normalise(e(target) − e(neutral))``, the
   neutral class "face" by default.
3. **Relevance**: ``r = fs3 · Δt``, one value per style channel of the generator's
   convolutions (``fs3.npy``: 6048 × 512 for FFHQ-1024). Channels with
   ``|r| ≤ β`` are zeroed; the rest is divided by the largest ``|r|``. If nothing
   survives β the edit is refused (:class:`EditInvalid`; the reference raises a
   ValueError there, STIT #21).

The files come from the model store and are never downloaded on their own:
``ViT-B-32.pt`` (only the text tower is read, as data), its vocabulary
``bpe_simple_vocab_16e6.txt.gz``, and ``fs3.npy``, which must match the job's
generator (its rows = the generator's conv style channels; its columns = CLIP's
embedding size). The text features are computed in float32 (the reference runs
CLIP in float16 on GPUs).

Example::

    enc = TextEncoder.from_store()
    d = text_direction(enc, fs3, "a smiling face", beta=0.12)  # [6048]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from fsexchange.documents import Edit
from fsexchange.errors import EditInvalid, ModelFormatError, ModelMissing

from engine.models.directions import Direction
from engine.models.store import CLIP_FILE, CLIP_VOCAB_FILE, FS3_FILE, Store

if TYPE_CHECKING:
    from engine.nets.clip_text import CLIPTextTransformer
    from engine.models.formats.clip import BPETokenizer

__all__ = ["IMAGENET_TEMPLATES", "TEXT_EDIT_FILES", "text_edit_files",
           "TextEncoder", "load_fs3", "relevance_direction", "text_direction",
           "text_edit_directions"]

log = logging.getLogger(__name__)

#: The 80 prompt templates of CLIP's ImageNet zero-shot classifier, as StyleCLIP
#: and STIT use them for a class's text features.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.",
    "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.",
    "a photo of a hard to see {}.", "a bright photo of a {}.",
    "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.",
    "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.",
    "a bright photo of the {}.", "a cropped photo of a {}.", "a plastic {}.",
    "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.",
    "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.",
    "the origami {}.", "the {} in a video game.", "a sketch of a {}.",
    "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.",
    "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.",
    "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.",
    "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.",
    "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a plushie {}.",
    "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.",
    "a drawing of the {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.",
    "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
)

TEXT_EDIT_FILES = (CLIP_FILE, CLIP_VOCAB_FILE, FS3_FILE)


def text_edit_files(store: Store | None = None) -> dict[str, Path]:
    """The installed files text edits need, by name.

    Raises:
        ModelMissing: naming every missing file and the commands that install them.
    """
    store = store or Store()
    found = {n: store.installed(n) for n in TEXT_EDIT_FILES}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise ModelMissing(
            f"text edits (--edit-text) need {', '.join(missing)} in the model store "
            f"({store.home / 'models'}); nothing is downloaded on its own. Install "
            f"them with 'facestitch models fetch --accept-licence "
            f"{' '.join(missing)}', or put the files in a folder and run "
            "'facestitch models install --from FOLDER --accept-licence' "
            "(docs/models.md \"CLIP text tower\")", field="edits")
    return {n: p for n, p in found.items() if p is not None}


@dataclass
class TextEncoder:
    """CLIP's text tower and tokenizer, for class embeddings."""

    model: "CLIPTextTransformer"
    tokenizer: "BPETokenizer"
    device: str = "cpu"
    source: str = ""

    @classmethod
    def from_files(cls, clip_path: str | Path, vocab_path: str | Path,
                   device: str = "cpu") -> "TextEncoder":
        from engine.models.formats.clip import BPETokenizer, read_clip_state_dict
        from engine.nets.clip_text import text_tower_from_state

        model = text_tower_from_state(read_clip_state_dict(clip_path))
        tok = BPETokenizer(vocab_path)
        if tok.vocab_size != model.vocab_size:
            raise ModelFormatError(
                f"{Path(vocab_path).name} makes {tok.vocab_size} tokens but "
                f"{Path(clip_path).name} embeds {model.vocab_size}; they are not "
                "from the same CLIP")
        return cls(model.to(device), tok, device, Path(clip_path).name)

    @classmethod
    def from_store(cls, store: Store | None = None,
                   device: str = "cpu") -> "TextEncoder":
        files = text_edit_files(store)
        return cls.from_files(files[CLIP_FILE], files[CLIP_VOCAB_FILE], device)

    def class_embedding(self, name: str) -> np.ndarray:
        """float64 ``[embed]``, unit length: the mean of the normalised features of
        ``name`` in the 80 templates, normalised."""
        import torch

        texts = [t.format(name) for t in IMAGENET_TEMPLATES]
        tokens = self.tokenizer.tokenize(texts, self.model.context_length)
        with torch.no_grad():
            f = self.model(tokens.to(self.device)).double().cpu()  # [80, embed]
        f = f / f.norm(dim=-1, keepdim=True)
        e = f.mean(dim=0)
        return (e / e.norm()).numpy()

    def delta(self, target: str, neutral: str = "face") -> np.ndarray:
        """``Δt = normalise(e(target) − e(neutral))``, float64 ``[embed]``."""
        d = self.class_embedding(target) - self.class_embedding(neutral)
        n = float(np.linalg.norm(d))
        if n == 0.0:
            raise EditInvalid(f"the prompts {target!r} and {neutral!r} have the same "
                              "CLIP features: no direction between them",
                              field="edits.text")
        return d / n


def load_fs3(path: str | Path, style_channels: int, embed_dim: int) -> np.ndarray:
    """``fs3.npy`` as float64 ``[style_channels, embed_dim]`` (no pickles).

    Raises:
        ModelFormatError: another shape (e.g. the FFHQ-1024 file with a smaller
            generator).
    """
    try:
        fs3 = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"cannot read {Path(path).name}: {exc}") from None
    if fs3.shape != (style_channels, embed_dim) or not np.issubdtype(fs3.dtype,
                                                                      np.floating):
        raise ModelFormatError(
            f"{Path(path).name} is {fs3.dtype} {fs3.shape}; this generator and CLIP "
            f"need [{style_channels}, {embed_dim}] floats (one row per style channel "
            "of the generator's convolutions)")
    return fs3.astype(np.float64)


def relevance_direction(fs3: np.ndarray, delta: np.ndarray, beta: float
                        ) -> np.ndarray:
    """``r = fs3 · Δt``; zero where ``|r| ≤ β``; divided by ``max |r|``.

    Raises:
        EditInvalid: no channel is above β.
    """
    r = np.asarray(fs3, np.float64) @ np.asarray(delta, np.float64)
    r = np.where(np.abs(r) > beta, r, 0.0)
    top = float(np.abs(r).max()) if r.size else 0.0
    if top == 0.0:
        raise EditInvalid(f"beta {beta:g} is too high: no style channel is more "
                          "relevant than that to the prompt; try a lower --beta "
                          "(the reference fails the same way, STIT issue #21)",
                          field="edits.beta")
    return r / top


def text_direction(encoder: TextEncoder, fs3: np.ndarray, target: str, *,
                   neutral: str = "face", beta: float = 0.2) -> np.ndarray:
    """The S-space direction ``[style channels]`` of a prompt."""
    return relevance_direction(fs3, encoder.delta(target, neutral), beta)


def text_edit_directions(edits: Sequence[Edit], style_channels: Sequence[int],
                         style_is_torgb: Sequence[bool], *,
                         store: Store | None = None, device: str = "cpu"
                         ) -> Mapping[int, Direction]:
    """S-space directions of the text edits among ``edits``, by their index.

    Args:
        edits: the job's edits; those with ``space == "text"`` are computed.
        style_channels, style_is_torgb: ``Generator.style_channels`` /
            ``style_is_torgb`` of the generator the edits apply to.

    Raises:
        ModelMissing: CLIP, its vocabulary or fs3.npy is not installed.
        ModelFormatError: the files do not fit each other or the generator.
        EditInvalid: a prompt too long, or β too high.
    """
    todo = [(i, e) for i, e in enumerate(edits) if e.space == "text"]
    if not todo:
        return {}
    files = text_edit_files(store)
    encoder = TextEncoder.from_files(files[CLIP_FILE], files[CLIP_VOCAB_FILE], device)
    conv = sum(c for c, rgb in zip(style_channels, style_is_torgb) if not rgb)
    fs3 = load_fs3(files[FS3_FILE], conv, encoder.model.embed_dim)
    out = {}
    for i, e in todo:
        assert e.text is not None  # Edit.from_dict requires it for space "text"
        try:
            vec = text_direction(encoder, fs3, e.text, neutral=e.neutral, beta=e.beta)
        except EditInvalid as exc:
            exc.field = f"edits[{i}].{(exc.field or 'text').rpartition('.')[2]}"
            raise
        kept = int(np.count_nonzero(vec))
        log.info("text edit %r (neutral %r, beta %g): %d of %d channels", e.text,
                 e.neutral, e.beta, kept, vec.size)
        out[i] = Direction(
            name=e.name, vector=vec, layers=None, recommended=(-10.0, 10.0),
            space="s", source=f"StyleCLIP global direction from {e.text!r} (neutral "
            f"{e.neutral!r}, beta {e.beta:g}; {encoder.source}, {FS3_FILE})",
            licence="computed from CLIP (MIT) and fs3.npy (StyleCLIP, MIT)",
            test_data=False, step_scale=1.0,
            description=f"text edit: {kept} of {vec.size} style channels")
    return out
