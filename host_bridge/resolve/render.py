"""Export a shot's record range by rendering, for media the engine cannot read
(compound clips, generators, camera raw): the OpenRoto pattern of docs/hosts.md
"Render-based export".

The user's render settings are saved as a temporary preset first and restored
afterwards (``LoadRenderPreset`` + ``DeleteRenderPreset``) whatever happens; the
duplicated timeline and the render job are removed too. ``DeleteRenderPreset`` exists
from Resolve 19.1 only: before that the temporary preset stays, and the export says
which one to delete by hand.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fsexchange.errors import HostError
from fsexchange.fsutil import unique_name

from host_bridge.resolve.connect import ResolveSession, has_api
from host_bridge.resolve.shot import Shot

__all__ = ["render_range", "RenderedRange", "RENDER_NAME", "DELETE_PRESET_SINCE"]

log = logging.getLogger(__name__)

RENDER_NAME = "frame"  # files come back as frame.<record frame:07d>.png
#: first Resolve whose scripting API has Project.DeleteRenderPreset (README 19.1)
DELETE_PRESET_SINCE = (19, 1)
_TRAILING_NUMBER = re.compile(r"(\d+)\.png$", re.IGNORECASE)


@dataclass(frozen=True)
class RenderedRange:
    folder: Path  # frame.<record frame:07d>.png, one per record frame
    count: int
    warnings: tuple[str, ...] = ()  # clean-up steps Resolve refused


def _png_format_and_codec(project) -> tuple[str, str]:
    """GetRenderFormats maps description -> id; GetRenderCodecs(id) maps description
    -> codec id, and only ids are accepted by SetCurrentRenderFormatAndCodec."""
    formats = project.GetRenderFormats() or {}
    fmt = next((v for k, v in formats.items() if "png" in (str(k) + str(v)).lower()),
               None)
    if fmt is None:
        raise HostError("this Resolve offers no PNG render format; export the shot by "
                        "hand as a PNG sequence")
    codecs = project.GetRenderCodecs(fmt) or {}
    if not codecs:
        raise HostError(f"Resolve lists no codecs for the {fmt} render format")

    def rank(desc: str) -> tuple[int, int]:  # prefer 16-bit RGB, then 8-bit RGB
        d = desc.lower()
        return ("16" not in d, "rgba" in d or "alpha" in d)

    best = min(codecs, key=lambda d: rank(str(d)))
    return fmt, codecs[best]


def _collect(folder: Path, count: int) -> list[Path]:
    """Rendered files in frame order, checked against the range: the job status alone
    is no proof (docs/hosts.md "Render-based export" step 7)."""
    files = sorted((p for p in folder.iterdir() if _TRAILING_NUMBER.search(p.name)),
                   key=lambda p: int(_TRAILING_NUMBER.search(p.name)[1]))  # type: ignore
    if len(files) != count:
        raise HostError(f"the render produced {len(files)} frames, the shot has "
                        f"{count}; check the Deliver page for errors and try again")
    numbers = [int(_TRAILING_NUMBER.search(p.name)[1]) for p in files]  # type: ignore
    if numbers != list(range(numbers[0], numbers[0] + count)):
        raise HostError("the render skipped frames (file numbers are not consecutive)")
    return files


def render_range(session: ResolveSession, shot: Shot,
                 out_dir: str | os.PathLike[str], *,
                 poll: float = 0.5, timeout: float = 3600.0,
                 sleep: Callable[[float], None] = time.sleep) -> RenderedRange:
    """Render the shot's record range, its own track alone, as PNG frames.

    Writes ``out_dir/frame.<record frame:07d>.png`` (``record_duration`` files).

    Raises:
        HostError: a refused setting, a failed or incomplete render (the user's render
            settings are restored in every case).
    """
    project, original = session.project, session.timeline
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f".render-{unique_name()}"
    preset = f"FaceStitch restore {unique_name()[:24]}"
    if not project.SaveAsNewRenderPreset(preset):
        raise HostError("could not save the current render settings; export refused so "
                        "that they are not lost")
    duplicate = job = None
    problems: list[str] = []
    try:
        duplicate = original.DuplicateTimeline(f"FaceStitch export {shot.item_name}")
        if duplicate is None or not project.SetCurrentTimeline(duplicate):
            raise HostError("could not duplicate the timeline for the export render")
        for index in range(1, (duplicate.GetTrackCount("video") or 0) + 1):
            duplicate.SetTrackEnable("video", index, index == shot.track_index)
        for index in range(1, (duplicate.GetTrackCount("audio") or 0) + 1):
            duplicate.SetTrackEnable("audio", index, False)
        fmt, codec = _png_format_and_codec(project)
        if not project.SetCurrentRenderFormatAndCodec(fmt, codec):
            raise HostError(f"Resolve refused render format {fmt} / codec {codec}")
        project.SetCurrentRenderMode(1)  # single clip
        settings = {"SelectAllFrames": False, "MarkIn": shot.record_start,
                    "MarkOut": shot.record_end - 1,  # render marks are inclusive
                    "TargetDir": str(target), "CustomName": RENDER_NAME,
                    "ExportVideo": True, "ExportAudio": False}
        if not project.SetRenderSettings(settings):  # all or nothing
            raise HostError(f"Resolve refused the render settings {sorted(settings)}")
        job = project.AddRenderJob()
        if not job:
            raise HostError("Resolve would not add the export render job")
        if not project.StartRendering([job], False):
            raise HostError("Resolve would not start the export render")
        deadline = time.monotonic() + timeout
        polls = 0
        while project.IsRenderingInProgress():
            if time.monotonic() > deadline:
                project.StopRendering()
                raise HostError(f"the export render took longer than {timeout:.0f} s")
            sleep(min(poll, 0.02 * 2 ** polls))  # short shots finish in a blink
            polls += 1
        status = project.GetRenderJobStatus(job) or {}
        if status.get("JobStatus") != "Complete":
            raise HostError("the export render ended "
                            f"{status.get('JobStatus', 'unknown')}"
                            f": {status.get('Error') or 'no reason given'}")
        files = _collect(target, shot.record_duration)
        for offset, path in enumerate(files):
            path.replace(out / f"{RENDER_NAME}.{shot.record_start + offset:07d}.png")
        log.info("rendered %d frames of '%s' into %s", len(files), shot.item_name, out)
    finally:
        if job and not project.DeleteRenderJob(job):
            problems.append("deleting the export render job")
        if not project.SetCurrentTimeline(original):
            problems.append("switching back to your timeline")
        if duplicate is not None and \
                not session.media_pool.DeleteTimelines([duplicate]):
            problems.append(f"deleting the timeline '{duplicate.GetName()}'")
        if not project.LoadRenderPreset(preset):
            problems.append("restoring your render settings")
        left_behind = _delete_preset(session, preset, problems)
        shutil.rmtree(target, ignore_errors=True)
        if problems:
            log.warning("export cleanup incomplete: %s", ", ".join(problems))
    refused = tuple(f"after the export render, Resolve refused {p}; check by hand"
                    for p in problems)
    return RenderedRange(out, len(files), refused + left_behind)


def _delete_preset(session: ResolveSession, preset: str, problems: list[str]
                   ) -> tuple[str, ...]:
    """Delete the temporary preset where this Resolve can (19.1+); else return the
    note that tells the editor to delete it by hand. An unknown call on an older
    Resolve would return None without doing anything, so it is not even tried."""
    project = session.project
    if session.edition.at_least(*DELETE_PRESET_SINCE) and \
            has_api(project, "DeleteRenderPreset"):
        if not project.DeleteRenderPreset(preset):
            problems.append(f"deleting the temporary render preset '{preset}'")
        return ()
    return (f"{session.edition} cannot delete render presets from a script (19.1 "
            f"can): delete the preset '{preset}' on the Deliver page by hand",)
