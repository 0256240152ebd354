"""Colour facts both sides agree on: a video's colour tags, what is assumed when a
file says nothing, and the names users (and hosts) give source colour spaces.

Torch-free and OCIO-free (the standard library only): the bridge reads Resolve's
"Input Color Space" and ``facestitch submit --colour`` with these tables, the engine
decodes and re-encodes movies with :func:`assumed_tags` and resolves a name into an
OpenColorIO colour space with :mod:`engine.media.colour`. docs/colour.md is the
prose: what each format carries, the assumptions, how to pick a colour space.

Tags use FFmpeg's names (``bt709``, ``smpte2084``...); ``""`` means the file does not
say (FFmpeg's "unspecified").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

__all__ = ["ColourTags", "assumed_tags", "tag_conflicts", "SOURCE_NAMES",
           "canonical_source", "from_resolve_name", "PRIMARIES_NAMES",
           "TRANSFER_NAMES", "MATRIX_NAMES", "RANGE_NAMES"]

# FFmpeg's enum values (libavutil/pixfmt.h) <-> names, for the tags PyAV reports as
# integers. Only the values a camera or an NLE writes are named; others read as "".
PRIMARIES_NAMES = {1: "bt709", 4: "bt470m", 5: "bt470bg", 6: "smpte170m",
                   7: "smpte240m", 8: "film", 9: "bt2020", 10: "smpte428",
                   11: "smpte431", 12: "smpte432", 22: "ebu3213"}
TRANSFER_NAMES = {1: "bt709", 4: "gamma22", 5: "gamma28", 6: "smpte170m",
                  7: "smpte240m", 8: "linear", 9: "log100", 10: "log316",
                  11: "iec61966-2-4", 12: "bt1361e", 13: "iec61966-2-1",
                  14: "bt2020-10", 15: "bt2020-12", 16: "smpte2084", 17: "smpte428",
                  18: "arib-std-b67"}
MATRIX_NAMES = {0: "rgb", 1: "bt709", 4: "fcc", 5: "bt470bg", 6: "smpte170m",
                7: "smpte240m", 8: "ycgco", 9: "bt2020nc", 10: "bt2020c"}
RANGE_NAMES = {1: "tv", 2: "pc"}

#: Transfers that mean high dynamic range (Rec.2100).
HDR_TRANSFERS = ("smpte2084", "arib-std-b67")


@dataclass(frozen=True)
class ColourTags:
    """A source's colour tags as it carries them; ``""`` = not said.

    Attributes:
        matrix: YUV<->RGB matrix (``bt709``, ``smpte170m``, ``bt2020nc``, ``rgb``).
        primaries: ``bt709``, ``bt2020``, ``smpte432`` (P3-D65)...
        transfer: ``bt709``, ``iec61966-2-1`` (sRGB), ``smpte2084`` (PQ),
            ``arib-std-b67`` (HLG), ``linear``...
        range: ``tv`` (video/limited) or ``pc`` (full).
        chromaticities: EXR ``chromaticities`` attribute (red, green, blue, white
            xy, 8 floats) when present.
        rgb: the samples are stored as RGB (no YUV matrix applies).
    """

    matrix: str = ""
    primaries: str = ""
    transfer: str = ""
    range: str = ""
    chromaticities: tuple[float, ...] | None = None
    rgb: bool = False

    def to_dict(self) -> dict:
        return {"matrix": self.matrix, "primaries": self.primaries,
                "transfer": self.transfer, "range": self.range,
                "chromaticities": (list(self.chromaticities)
                                   if self.chromaticities else None),
                "rgb": self.rgb}


def assumed_tags(tags: ColourTags, width: int, height: int,
                 kind: str = "video") -> tuple[ColourTags, list[str]]:
    """Every tag filled in, and one sentence per assumption made.

    The rules (docs/colour.md "When a file says nothing"), as editors' tools decode:
    an untagged YUV movie is video range; its matrix is BT.709 for HD (width >= 1280
    or height >= 720) and BT.601 (``smpte170m``) below, the convention of FFmpeg's
    players and browsers for SD; primaries and transfer are BT.709. RGB-coded movies
    (FFV1 RGB, PNG in MOV) are full range. Image sequences without tags are sRGB
    (PNG's own default), EXR is linear.
    """
    notes: list[str] = []
    t = tags
    if kind == "sequence":
        if tags.transfer == "linear":
            return replace(t, matrix="rgb", range="pc", rgb=True,
                           primaries=t.primaries or "bt709"), notes
        return replace(t, matrix="rgb", range="pc", rgb=True,
                       primaries=t.primaries or "bt709",
                       transfer=t.transfer or "iec61966-2-1"), notes
    if t.rgb or t.matrix == "rgb":
        t = replace(t, matrix="rgb", rgb=True, range=t.range or "pc")
    else:
        if not t.matrix:
            hd = width >= 1280 or height >= 720
            t = replace(t, matrix="bt709" if hd else "smpte170m")
            notes.append(f"no YUV matrix tag: decoded with "
                         f"{'BT.709 (HD)' if hd else 'BT.601 (SD)'}")
        if not t.range:
            t = replace(t, range="tv")
            notes.append("no range tag: decoded as video range")
    if not t.primaries:
        t = replace(t, primaries="bt2020" if t.matrix in ("bt2020nc", "bt2020c")
                    else "bt709")
        notes.append(f"no primaries tag: assumed {t.primaries}")
    if not t.transfer:
        t = replace(t, transfer="bt709")
        notes.append("no transfer tag: assumed BT.709")
    return t, notes


def tag_conflicts(tags: ColourTags) -> list[str]:
    """Tags that contradict each other, each as a sentence naming what is assumed
    (the transfer wins for HDR; the matrix follows the primaries)."""
    out = []
    if tags.transfer in HDR_TRANSFERS and tags.primaries not in ("", "bt2020"):
        what = "PQ" if tags.transfer == "smpte2084" else "HLG"
        out.append(f"contradictory colour tags: {what} transfer ({tags.transfer}) "
                   f"with {tags.primaries} primaries; assuming Rec.2100 {what} "
                   "(BT.2020 primaries)")
    if (tags.matrix in ("bt2020nc", "bt2020c") and tags.primaries
            and tags.primaries != "bt2020"):
        out.append(f"contradictory colour tags: {tags.matrix} matrix with "
                   f"{tags.primaries} primaries; decoding with the tagged matrix and "
                   f"assuming {tags.primaries} primaries")
    if (tags.matrix == "bt709" and tags.primaries == "bt2020"
            and tags.transfer not in HDR_TRANSFERS):
        out.append("contradictory colour tags: bt709 matrix with bt2020 primaries; "
                   "decoding with the tagged matrix and assuming Rec.2020 primaries")
    return out


# --- source colour-space names ------------------------------------------------------

#: The names a user can give ``colour.source`` (case and punctuation do not matter),
#: each with the colour space it means in the built-in OCIO studio config
#: (engine.media.colour). Any other colour-space name or alias of the active OCIO
#: config is accepted as well.
SOURCE_NAMES: dict[str, str] = {
    "Rec.709": "Rec.1886 Rec.709 - Display",
    "sRGB": "sRGB - Display",
    "Rec.2020": "Rec.1886 Rec.2020 - Display",
    "Rec.2100 PQ": "Rec.2100-PQ - Display",
    "Rec.2100 HLG": "Rec.2100-HLG - Display",
    "ARRI LogC3": "ARRI LogC3 (EI800)",
    "ARRI LogC4": "ARRI LogC4",
    "S-Log3": "S-Log3 S-Gamut3.Cine",
    "S-Log3 S-Gamut3": "S-Log3 S-Gamut3",
    "V-Log": "V-Log V-Gamut",
    "ACEScct": "ACEScct",
    "ACEScg": "ACEScg",
    "ACES2065-1": "ACES2065-1",
    "Linear Rec.709": "Linear Rec.709 (sRGB)",
    "Linear Rec.2020": "Linear Rec.2020",
}

_ALIASES = {
    "rec709": "Rec.709", "bt709": "Rec.709", "rec709gamma24": "Rec.709",
    "rec1886": "Rec.709", "srgb": "sRGB", "rec2020": "Rec.2020",
    "bt2020": "Rec.2020", "rec2020gamma24": "Rec.2020", "rec2100pq": "Rec.2100 PQ",
    "rec2020pq": "Rec.2100 PQ", "pq": "Rec.2100 PQ", "st2084": "Rec.2100 PQ",
    "rec2100st2084": "Rec.2100 PQ", "rec2100hlg": "Rec.2100 HLG",
    "rec2020hlg": "Rec.2100 HLG", "hlg": "Rec.2100 HLG", "arrilogc3": "ARRI LogC3",
    "logc3": "ARRI LogC3", "logc": "ARRI LogC3", "arrilogc4": "ARRI LogC4",
    "logc4": "ARRI LogC4", "slog3": "S-Log3", "slog3sgamut3cine": "S-Log3",
    "sgamut3cineslog3": "S-Log3", "slog3sgamut3": "S-Log3 S-Gamut3",
    "sgamut3slog3": "S-Log3 S-Gamut3", "vlog": "V-Log", "vlogvgamut": "V-Log",
    "vgamutvlog": "V-Log", "acescct": "ACEScct", "acescg": "ACEScg",
    "aces20651": "ACES2065-1", "aces": "ACES2065-1",
    "linearrec709": "Linear Rec.709", "linear709": "Linear Rec.709",
    "linearrec2020": "Linear Rec.2020",
}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def canonical_source(name: str) -> str | None:
    """The :data:`SOURCE_NAMES` key ``name`` means, or None (then it may still be
    a colour space of the active OCIO config).

    >>> canonical_source("logc3"), canonical_source("Rec.2020 PQ")
    ('ARRI LogC3', 'Rec.2100 PQ')
    """
    k = _key(name)
    for canon in SOURCE_NAMES:
        if _key(canon) == k:
            return canon
    return _ALIASES.get(k)


def from_resolve_name(value: object) -> str | None:
    """Resolve's clip "Input Color Space" as a :data:`SOURCE_NAMES` key, or None
    when it is empty, follows the project ("Project", "Timeline") or names a space
    FaceStitch has no equivalent for (docs/colour.md "Resolve")."""
    if not isinstance(value, str) or not value.strip():
        return None
    k = _key(value)
    if k in ("project", "timeline", "default", "bypass"):
        return None
    # Camera spaces first: "Sony S-Gamut3.Cine/S-Log3" names both gamut and curve.
    if "logc4" in k:
        return "ARRI LogC4"
    if "logc" in k:
        return "ARRI LogC3"
    if "slog3" in k:
        return "S-Log3" if "cine" in k else "S-Log3 S-Gamut3"
    if "vlog" in k:
        return "V-Log"
    if "acescct" in k:
        return "ACEScct"
    if "acescg" in k:
        return "ACEScg"
    if "st2084" in k or k.endswith("pq") or "pq" in re.split(r"[^a-z0-9]+",
                                                             value.lower()):
        return "Rec.2100 PQ"
    if "hlg" in k:
        return "Rec.2100 HLG"
    if "2020" in k or "2100" in k:
        return "Rec.2020"
    if "srgb" in k:
        return "sRGB"
    if "709" in k:
        return "Rec.709"
    return canonical_source(value)
