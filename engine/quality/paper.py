"""The published TL-ID, TG-ID and warping-error figures, set beside ours.

``facestitch metrics --compare-paper`` prints them with the caveats that decide how
far the numbers can be compared. The figures and what is known about how they were
measured are in docs/reference.md ("Warping error", "Identity metrics TL-ID and
TG-ID"); they are recalled from the papers, not re-checked against them.

Example::

    d = temporal_metrics(src, edited).to_dict()
    print(comparison_text(d))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

__all__ = ["PaperFigure", "PAPER_FIGURES", "METRIC_LABELS", "paper_caveats",
           "comparison", "comparison_text"]


@dataclass(frozen=True)
class PaperFigure:
    """One published number.

    Attributes:
        metric: the key of ours it sits beside (``tl_id``, ``tg_id``, ``warp_error``).
        method: the method the paper measured.
        value: the figure.
        source: the paper and the setting it was measured in.
    """

    metric: str
    method: str
    value: float
    source: str


_STIT = "Tzaban et al. 2022 (STIT), their videos and edits, ArcFace"
_VEG = "Xu et al. 2022 (VideoEditGAN), in-domain edits"

#: docs/reference.md "Identity metrics TL-ID and TG-ID" and "Warping error"
#: (paper figures, not re-checked).
PAPER_FIGURES: tuple[PaperFigure, ...] = (
    PaperFigure("tl_id", "STIT", 0.996, _STIT),
    PaperFigure("tl_id", "Latent Transformer", 0.976, _STIT),
    PaperFigure("tl_id", "PTI", 0.933, _STIT),
    PaperFigure("tg_id", "STIT", 0.933, _STIT),
    PaperFigure("tg_id", "PTI", 0.901, _STIT),
    PaperFigure("tg_id", "Latent Transformer", 0.811, _STIT),
    PaperFigure("warp_error", "with flow refinement", 0.0031, _VEG),
    PaperFigure("warp_error", "direct editing", 0.0076, _VEG),
)

METRIC_LABELS = {"tl_id": "TL-ID", "tg_id": "TG-ID",
                 "warp_error": "E_warp (Lai et al.)"}


def paper_caveats(ours: Mapping[str, Any]) -> list[str]:
    """Why our figures and the published ones may differ, for the backends and the
    clip behind ``ours`` (a :meth:`TemporalMetrics.to_dict`)."""
    backends = ours.get("backends") or {}
    identity = str(backends.get("identity", ""))
    flow = str(backends.get("flow", ""))
    out = [
        "The published figures are recalled from the papers and have not been "
        "re-checked against them (docs/reference.md).",
        "They are averages over the papers' own clips and edits (per edit and "
        "video, then over videos); ours are one clip with one set of edits, "
        "measured on the whole frame after compositing.",
    ]
    if identity.startswith("arcface"):
        out.append("TL-ID/TG-ID use an ArcFace network, as the papers do; which "
                   f"ArcFace weights and face alignment they used is not known "
                   f"(ours: {identity}).")
    else:
        out.append(f"TL-ID/TG-ID here use {identity or 'a non-ArcFace network'}, "
                   "not ArcFace as in the papers: the ratios move in the same "
                   "direction but their size is not comparable. Install ArcFace "
                   "weights under models/arcface/ in the model store "
                   "(docs/models.md) to measure with the papers' network.")
    src = ours.get("warp_error_source")
    src_text = f" (here {src:.5f})" if isinstance(src, (int, float)) else ""
    out.append(
        "E_warp follows Lai et al.'s definition with flows from the source clip "
        f"({flow or 'unknown flow'}); Lai et al. used FlowNet2, later work RAFT, "
        "and which flows, resolution and crop VideoEditGAN measured with is not "
        "confirmed. E_warp grows with motion, detail and frame size, so read ours "
        f"against the source's own E_warp{src_text} before the published values.")
    return out


def comparison(ours: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-able comparison: one row per metric (ours and the published figures)
    and the caveats."""
    rows = []
    for key, label in METRIC_LABELS.items():
        rows.append({"metric": key, "label": label, "ours": ours.get(key),
                     "published": [asdict(f) for f in PAPER_FIGURES
                                   if f.metric == key]})
    return {"rows": rows, "caveats": paper_caveats(ours)}


def comparison_text(ours: Mapping[str, Any]) -> str:
    """The comparison as the lines ``facestitch metrics --compare-paper`` prints."""
    cmp = comparison(ours)
    lines = ["published figures beside ours (docs/reference.md):"]
    for row in cmp["rows"]:
        v = row["ours"]
        spec = ".5f" if row["metric"] == "warp_error" else ".4f"
        mine = "n/a" if v is None else format(v, spec)
        pub = "; ".join(f"{f['method']} {f['value']:g}" for f in row["published"])
        lines.append(f"  {row['label']:<20} ours {mine:<9} published: {pub}")
        lines.append(f"  {'':<20} ({row['published'][0]['source']})")
    lines.append("  caveats:")
    lines += [f"  - {c}" for c in cmp["caveats"]]
    return "\n".join(lines)
