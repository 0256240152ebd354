"""The colour pipeline: from the source's encoding to what the networks see, and
back, with OpenColorIO.

The FFHQ-trained networks expect display-referred faces (sRGB / Rec.709 code
values). A :class:`ColourPipeline` knows the source's OCIO colour space and converts
between it and the **network space**, the Rec.709 display rendering
(``Rec.1886 Rec.709 - Display`` through the config's default view of it: in the
built-in config the ACES 2.0 SDR 100-nit Rec.709 output transform, which is
invertible). The conversion points (docs/colour.md "Where colour is converted"):

1. track and align (:mod:`engine.stages.track`, :mod:`engine.stages.align`):
   source frame -> :meth:`ColourPipeline.to_network` before detection and after the
   crop is warped; the aligned crops are network space;
2. paste (:mod:`engine.stages.paste`): the (edited) crop ->
   :meth:`ColourPipeline.from_network` -> warped into the source frame, so pixels
   outside the alpha are the source's own, bit for bit;
3. EXR output: the layer -> :meth:`ColourPipeline.to_linear` (scene-linear in the
   source's gamut; display-linear for display-referred sources), with the
   ``chromaticities`` of that gamut.

Kinds of source:

- ``identity``: Rec.709 and sRGB video are the network space as they are (no
  conversion, no rounding): the networks were trained on sRGB JPEG code values, and
  a Rec.709 face's code values look the same to them;
- ``scene``: camera log and linear (LogC3/4, S-Log3, V-Log, ACEScct, ACEScg, EXR):
  the view transform, forward and inverse;
- ``hdr``: Rec.2100 PQ/HLG: the inverse of the display's own HDR view (to scene
  light), then the SDR view;
- ``display``: other SDR displays (Rec.2020, P3): colorimetric display-to-display.

Processors are built once per (config, source, display, view) and cached. The
built-in config ships inside the ``opencolorio`` wheel; nothing is downloaded.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fsexchange.colour import (SOURCE_NAMES, ColourTags,
                               assumed_tags, canonical_source, tag_conflicts)
from fsexchange.errors import ColourConfigError, ColourUnknown
from fsexchange.media import MediaInfo

if TYPE_CHECKING:
    from fsexchange.options import ColourConfig

__all__ = ["BUILTIN_CONFIG", "NETWORK_DISPLAY", "CHROMATICITIES", "ColourPipeline",
           "load_config", "resolve_space", "detect_source", "pipeline_for",
           "space_of_chromaticities"]

log = logging.getLogger(__name__)

#: The OCIO built-in config used when no other is given (ACES 2 output transforms,
#: whose SDR view inverts to within 3e-4: docs/colour.md "Tolerances").
BUILTIN_CONFIG = "studio-config-v5.0.0_aces-v2.1_ocio-v2.6"
#: The display the networks see.
NETWORK_DISPLAY = "Rec.1886 Rec.709 - Display"
#: Colour spaces whose code values the networks take as they are.
_IDENTITY = frozenset({
    "Rec.1886 Rec.709 - Display", "sRGB - Display", "Gamma 2.2 Rec.709 - Display",
    "Gamma 2.4 Encoded Rec.709", "sRGB Encoded Rec.709 (sRGB)", "Camera Rec.709",
    "Gamma 2.2 Encoded Rec.709"})
#: The display-referred XYZ of the built-in config (its display reference).
_DISPLAY_XYZ = "CIE XYZ-D65 - Display-referred"
#: Rec.2020 SDR is not in the ACES 2 studio config: added from the same built-in
#: display transform the ACES 1.3 studio config defines it with.
_REC2020_DISPLAY = ("Rec.1886 Rec.2020 - Display",
                    "DISPLAY - CIE-XYZ-D65_to_REC.1886-REC.2020")

_D65 = (0.3127, 0.3290)
_ACES_WHITE = (0.32168, 0.33767)
#: Linear colour space -> EXR ``chromaticities`` (red, green, blue, white xy), from
#: each gamut's specification (ITU-R BT.709 / BT.2020, SMPTE ST 2065-1 (AP0),
#: S-2014-004 (AP1), ARRI, Sony and Panasonic gamut white papers).
CHROMATICITIES: dict[str, tuple[float, ...]] = {
    "Linear Rec.709 (sRGB)": (0.64, 0.33, 0.30, 0.60, 0.15, 0.06, *_D65),
    "Linear Rec.2020": (0.708, 0.292, 0.170, 0.797, 0.131, 0.046, *_D65),
    "Linear P3-D65": (0.680, 0.320, 0.265, 0.690, 0.150, 0.060, *_D65),
    "ACES2065-1": (0.7347, 0.2653, 0.0, 1.0, 0.0001, -0.0770, *_ACES_WHITE),
    "ACEScg": (0.713, 0.293, 0.165, 0.830, 0.128, 0.044, *_ACES_WHITE),
    "Linear ARRI Wide Gamut 3": (0.6840, 0.3130, 0.2210, 0.8480, 0.0861, -0.1020,
                                 *_D65),
    "Linear ARRI Wide Gamut 4": (0.7347, 0.2653, 0.1424, 0.8576, 0.0991, -0.0308,
                                 *_D65),
    "Linear S-Gamut3": (0.730, 0.280, 0.140, 0.855, 0.100, -0.050, *_D65),
    "Linear S-Gamut3.Cine": (0.766, 0.275, 0.225, 0.800, 0.089, -0.087, *_D65),
    "Linear V-Gamut": (0.730, 0.280, 0.165, 0.840, 0.100, -0.030, *_D65),
}
#: Scene-referred encodings -> the linear space of the same gamut (EXR output).
_LINEAR_OF = {
    "ARRI LogC3 (EI800)": "Linear ARRI Wide Gamut 3",
    "ARRI LogC4": "Linear ARRI Wide Gamut 4",
    "S-Log3 S-Gamut3": "Linear S-Gamut3",
    "S-Log3 S-Gamut3.Cine": "Linear S-Gamut3.Cine",
    "V-Log V-Gamut": "Linear V-Gamut",
    "ACEScct": "ACEScg", "ACEScc": "ACEScg",
}
#: Display-referred sources -> the linear gamut of their display (1.0 = 100 nits).
_DISPLAY_LINEAR = {
    "Rec.1886 Rec.2020 - Display": "Linear Rec.2020",
    "Rec.2100-PQ - Display": "Linear Rec.2020",
    "Rec.2100-HLG - Display": "Linear Rec.2020",
    "Display P3 - Display": "Linear P3-D65",
    "Gamma 2.6 P3-D65 - Display": "Linear P3-D65",
    "ST2084-P3-D65 - Display": "Linear P3-D65",
}


def _ocio():
    try:
        import PyOpenColorIO as OCIO
    except ImportError:
        raise ColourConfigError("OpenColorIO is not installed in the engine's Python "
                                "(pip install 'facestitch[engine]')") from None
    return OCIO


@functools.lru_cache(maxsize=4)
def load_config(path: str = ""):
    """The OCIO config at ``path`` (a ``config.ocio`` file), or the built-in
    :data:`BUILTIN_CONFIG` for ``""``. Cached per path.

    Raises:
        ColourConfigError: the file is missing or not a valid config.
    """
    OCIO = _ocio()
    if not path:
        cfg = OCIO.Config.CreateFromBuiltinConfig(BUILTIN_CONFIG)
        name, style = _REC2020_DISPLAY
        if name not in cfg.getColorSpaceNames():
            cs = OCIO.ColorSpace(OCIO.REFERENCE_SPACE_DISPLAY, name=name,
                                 encoding="sdr-video", family="Display")
            cs.setTransform(OCIO.BuiltinTransform(style),
                            OCIO.COLORSPACE_DIR_FROM_REFERENCE)
            cfg.addColorSpace(cs)
        return cfg
    if not os.path.isfile(path):
        raise ColourConfigError(f"the OCIO config {path} does not exist",
                                field="options.colour.config")
    try:
        cfg = OCIO.Config.CreateFromFile(path)
        cfg.validate()
    except Exception as exc:  # noqa: BLE001 - OCIO raises its own Exception type
        raise ColourConfigError(f"the OCIO config {path} cannot be loaded: {exc}",
                                field="options.colour.config") from None
    return cfg


def resolve_space(cfg, name: str, field: str = "options.colour.source") -> str:
    """The colour-space name ``name`` means in ``cfg``: one of ours
    (:data:`fsexchange.colour.SOURCE_NAMES`, any spelling), or a colour-space name
    or alias of the config.

    Raises:
        ColourUnknown: neither.
    """
    canon = canonical_source(name)
    for candidate in ((SOURCE_NAMES[canon], name) if canon else (name,)):
        cs = cfg.getColorSpace(candidate)
        if cs is not None:
            return cs.getName()
    raise ColourUnknown(
        f"unknown source colour space {name!r}: use one of "
        f"{', '.join(SOURCE_NAMES)} or a colour space of the OCIO config "
        f"({cfg.getName() or 'in use'}); see docs/colour.md", field=field)


def space_of_chromaticities(chroma: tuple[float, ...] | None) -> str | None:
    """The linear colour space whose primaries an EXR ``chromaticities`` attribute
    gives (within 0.002 in xy), or None."""
    if not chroma or len(chroma) != 8:
        return None
    for name, ref in CHROMATICITIES.items():
        if max(abs(a - b) for a, b in zip(chroma, ref)) < 0.002:
            return name
    return None


def detect_source(info: MediaInfo) -> tuple[str, list[str]]:
    """The source colour space the media's tags say (a :data:`SOURCE_NAMES` key or
    a linear space name), and notes for the user: contradictions and what was
    assumed (docs/colour.md "When a file says nothing").

    PQ / HLG transfer -> Rec.2100 PQ / HLG; BT.2020 primaries -> Rec.2020; sRGB
    transfer -> sRGB; linear (EXR) -> the linear space of its ``chromaticities``
    (Rec.709 when it has none: the OpenEXR default); otherwise Rec.709 (video) or
    sRGB (image sequences).
    """
    notes = list(tag_conflicts(info.colour))
    tags, _ = assumed_tags(info.colour, info.width, info.height, info.kind)
    if tags.transfer == "linear":
        if info.colour.chromaticities is None:
            return "Linear Rec.709", notes
        space = space_of_chromaticities(info.colour.chromaticities)
        if space is None:
            notes.append(f"{info.path.name}: EXR chromaticities "
                         f"{list(info.colour.chromaticities)} match no known gamut; "
                         "assuming linear Rec.709 (set options.colour.source)")
            return "Linear Rec.709", notes
        return space, notes
    if tags.transfer == "smpte2084":
        return "Rec.2100 PQ", notes
    if tags.transfer == "arib-std-b67":
        return "Rec.2100 HLG", notes
    if tags.primaries == "bt2020":
        return "Rec.2020", notes
    if tags.transfer == "iec61966-2-1":
        return "sRGB", notes
    return "Rec.709", notes


def _choice_conflicts(chosen: str, detected: str, tags: ColourTags) -> list[str]:
    """A user's choice the tags contradict (only where the tags say something a
    camera-log file would not: HDR transfer, linear, BT.2020)."""
    says = {"smpte2084": "PQ", "arib-std-b67": "HLG",
            "linear": "linear light"}.get(tags.transfer)
    if says is None and tags.primaries == "bt2020":
        says = "BT.2020 primaries"
    if says is None or canonical_source(chosen) == canonical_source(detected) \
            or chosen == detected:
        return []
    return [f"the source is tagged {says} but options.colour.source is {chosen!r}; "
            f"using {chosen!r} as chosen (the tags alone would give {detected!r})"]


def _float3(rgb: np.ndarray) -> np.ndarray:
    """A private float32 C-contiguous copy of the RGB channels (OCIO works in
    place)."""
    return np.array(np.asarray(rgb)[..., :3], dtype=np.float32, order="C")


@dataclass(frozen=True)
class ColourPipeline:
    """Conversions between a source encoding and the network space.

    Attributes:
        config_path: the OCIO config file ("" = built-in).
        config_name: its name.
        source: the source's OCIO colour-space name.
        kind: ``identity`` | ``scene`` | ``hdr`` | ``display`` (module docstring).
        display, view: the network-side display and view.
        linear: the colour space :meth:`to_linear` delivers (EXR output).
        chromaticities: of ``linear`` (None if not in :data:`CHROMATICITIES`).
    """

    config_path: str
    config_name: str
    source: str
    kind: str
    display: str
    view: str
    linear: str
    chromaticities: tuple[float, ...] | None

    @property
    def identity(self) -> bool:
        return self.kind == "identity"

    def to_network(self, rgb: np.ndarray) -> np.ndarray:
        """Source-encoded ``[..., 3]`` float (0..1 for integer sources, any value
        for linear) -> network-space float32 in 0..1."""
        x = _float3(rgb)
        if not self.identity:
            _processor(self, "to_network").applyRGB(x)
        return np.clip(np.nan_to_num(x), 0.0, 1.0)

    def from_network(self, rgb: np.ndarray) -> np.ndarray:
        """Network-space ``[..., 3]`` float in 0..1 -> source-encoded float32."""
        x = _float3(rgb)
        if not self.identity:
            _processor(self, "from_network").applyRGB(x)
        return np.nan_to_num(x)

    def to_linear(self, rgb: np.ndarray) -> np.ndarray:
        """Source-encoded ``[..., 3]`` float -> float32 in :attr:`linear`."""
        x = _float3(rgb)
        if self.source != self.linear:
            _processor(self, "to_linear").applyRGB(x)
        return np.nan_to_num(x)

    def from_linear(self, rgb: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_linear` (reading an EXR result back)."""
        x = _float3(rgb)
        if self.source != self.linear:
            _processor(self, "from_linear").applyRGB(x)
        return np.nan_to_num(x)

    def describe(self) -> dict:
        """Small JSON facts for the stage result and the report."""
        return {"source": self.source, "kind": self.kind, "display": self.display,
                "view": self.view, "linear": self.linear,
                "config": self.config_path or f"built-in {self.config_name}"}


def _xyz_to_rgb(chroma: tuple[float, ...]) -> np.ndarray:
    """3x3 XYZ -> linear RGB of the given primaries and white (Y of white = 1)."""
    xy = np.array(chroma, dtype=np.float64).reshape(4, 2)
    xyz = np.stack([xy[:, 0] / xy[:, 1], np.ones(4),
                    (1 - xy[:, 0] - xy[:, 1]) / xy[:, 1]], axis=1)  # [4, 3]
    prim = xyz[:3].T  # columns: R, G, B
    scale = np.linalg.solve(prim, xyz[3])
    return np.linalg.inv(prim * scale)


@functools.lru_cache(maxsize=32)
def _processor(p: ColourPipeline, what: str):
    """The cached OCIO CPU processor for one conversion of ``p``."""
    OCIO = _ocio()
    cfg = load_config(p.config_path)
    fwd, inv = OCIO.TRANSFORM_DIR_FORWARD, OCIO.TRANSFORM_DIR_INVERSE
    if what in ("to_linear", "from_linear"):
        if p.kind == "scene":
            t = OCIO.ColorSpaceTransform(src=p.source, dst=p.linear)
        else:  # display light, 1.0 = 100 nits, in the display's primaries
            m = _xyz_to_rgb(CHROMATICITIES[p.linear])
            m44 = np.eye(4)
            m44[:3, :3] = m
            t = OCIO.GroupTransform([
                OCIO.ColorSpaceTransform(src=p.source, dst=_DISPLAY_XYZ),
                OCIO.MatrixTransform(m44.flatten().tolist())])
        return cfg.getProcessor(t, fwd if what == "to_linear" else inv
                                ).getDefaultCPUProcessor()
    direction = fwd if what == "to_network" else inv
    if p.kind == "scene":
        t = OCIO.DisplayViewTransform(src=p.source, display=p.display, view=p.view)
    elif p.kind == "hdr":
        # the source display's own HDR view, inverted, gives scene light (ACES)
        hdr_view = cfg.getDefaultView(p.source)
        back = OCIO.DisplayViewTransform(src="ACES2065-1", display=p.source,
                                         view=hdr_view, direction=inv)
        t = OCIO.GroupTransform([back, OCIO.DisplayViewTransform(
            src="ACES2065-1", display=p.display, view=p.view)])
    else:
        t = OCIO.ColorSpaceTransform(src=p.source, dst=p.display)
    return cfg.getProcessor(t, direction).getDefaultCPUProcessor()


def _network_display(cfg, colour: "ColourConfig") -> tuple[str, str]:
    displays = list(cfg.getDisplays())
    display = colour.display
    if not display:
        for want in (NETWORK_DISPLAY, "Rec.709", "sRGB - Display", "sRGB"):
            if want in displays:
                display = want
                break
        else:
            display = cfg.getDefaultDisplay()
    if display not in displays:
        raise ColourUnknown(f"options.colour.display {display!r} is not a display of "
                            f"the OCIO config ({', '.join(displays)})",
                            field="options.colour.display")
    view = colour.view or cfg.getDefaultView(display)
    if view not in list(cfg.getViews(display)):
        raise ColourUnknown(f"options.colour.view {view!r} is not a view of display "
                            f"{display!r} ({', '.join(cfg.getViews(display))})",
                            field="options.colour.view")
    return display, view


def pipeline_for(colour: "ColourConfig", info: MediaInfo
                 ) -> tuple[ColourPipeline, list[str]]:
    """The colour pipeline of a job: ``colour.source`` when set, else what the
    media's tags say (:func:`detect_source`), plus warnings for the user.

    Raises:
        ColourUnknown, ColourConfigError.
    """
    detected, notes = detect_source(info)
    chosen = colour.source.strip() or detected
    if colour.source.strip():
        notes += _choice_conflicts(chosen, detected, info.colour)
    cfg = load_config(colour.config)
    source = resolve_space(cfg, chosen)
    display, view = _network_display(cfg, colour)
    cs = cfg.getColorSpace(source)
    OCIO = _ocio()
    if source in _IDENTITY:
        kind = "identity"
    elif cs.getReferenceSpaceType() == OCIO.REFERENCE_SPACE_SCENE:
        kind = "scene"
    elif cs.getEncoding() == "hdr-video" or source in ("Rec.2100-PQ - Display",
                                                       "Rec.2100-HLG - Display"):
        kind = "hdr"
    else:
        kind = "display"
    if kind == "scene":
        if cs.getEncoding() == "scene-linear":
            linear = source
        else:
            linear = _LINEAR_OF.get(source) or cfg.getColorSpace(
                "scene_linear").getName()
    else:
        linear = _DISPLAY_LINEAR.get(source, "Linear Rec.709 (sRGB)")
    p = ColourPipeline(colour.config, cfg.getName(), source, kind, display, view,
                       linear, CHROMATICITIES.get(linear))
    if p.chromaticities is None:
        notes.append(f"the linear colour space {linear!r} has no known "
                     "chromaticities; EXR output is written without them")
    return p, notes

