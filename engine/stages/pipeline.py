"""Which stages run, in order, for each job kind.

Stages are named by ``module:Class`` and imported only when a job needs them, so
the engine starts without importing torch and a broken optional stage cannot stop
jobs of another kind.
"""

from __future__ import annotations

import importlib

from engine.stages.contract import Stage

__all__ = ["PIPELINES", "stages_for"]

PIPELINES: dict[str, tuple[str, ...]] = {
    # Track -> smoothed alignment -> identity paste-back, for checking a track.
    "align-preview": (
        "engine.stages.track:TrackStage",
        "engine.stages.align:AlignStage",
        "engine.stages.paste:PasteStage",
        "engine.stages.report:ReportStage",
    ),
    # The full STIT pipeline (pipeline.md §1).
    "stitch": (
        "engine.stages.track:TrackStage",
        "engine.stages.align:AlignStage",
        "engine.stages.invert:InvertStage",
        "engine.stages.pti:PTIStage",
        "engine.stages.edit:EditStage",
        "engine.stages.stitch_tune:StitchTuneStage",
        "engine.stages.paste:PasteStage",
        "engine.stages.report:ReportStage",
    ),
}


def stages_for(kind: str) -> list[Stage]:
    """Instantiate the stages of a job kind, in order."""
    out = []
    for ref in PIPELINES[kind]:
        module, _, cls = ref.partition(":")
        out.append(getattr(importlib.import_module(module), cls)())
    return out
