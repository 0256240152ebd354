"""Engine failures as a message an editor can act on: what happened (the error's own
message, with stage and frame) and what to do (advice per error code).

Codes are the stable ``code`` values of :mod:`fsexchange.errors`; a code without
its own entry falls back to its family (``media.*``, ``model.*``...), then to a
generic line.
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["ADVICE", "advice_for", "explain_error", "explain_status"]

#: error code (or family prefix ending in ".") -> what the editor should do
ADVICE: dict[str, str] = {
    "media.missing": "The engine machine cannot find the clip's media. Put the media "
                     "on a drive the engine can read (the same path on both machines), "
                     "or start the engine with --media-root for that folder, then send "
                     "the shot again.",
    "media.corrupt": "The media could not be decoded. Check the file plays in Resolve; "
                     "if it does, render the shot to ProRes and send that instead.",
    "media.unsupported": "The engine cannot read this media (for example a "
                         "variable frame rate phone clip). Transcode it to a "
                         "constant frame rate (Resolve: Optimized Media or a ProRes "
                         "render) and send again.",
    "media.": "The engine could not read the media; check the file and send again.",
    "path.escape": "The media lies outside the folders the engine may read. Start the "
                   "engine with --media-root pointing at the media's drive or folder.",
    "range.out_of_bounds": "The shot asks for frames beyond the end of the media. "
                           "Reduce the handles or re-trim the clip, then send again.",
    "range.invalid": "The shot's frame range is empty. Check the clip's in and out "
                     "points and send again.",
    "face.not_found": "No face was detected in the shot. Check that a face is visible "
                      "and roughly frontal, or send a tighter range; run an "
                      "align-preview job to see what the tracker sees.",
    "face.subject_invalid": "The chosen face was not found where it was picked. Send "
                            "the shot again and pick the face on the first frame.",
    "face.": "Face tracking failed; run an align-preview job to inspect the track.",
    "model.missing": "A model file is not installed on the engine machine. Run "
                     "'facestitch models' there to see what is missing and how to "
                     "install it.",
    "model.": "A model file on the engine machine is damaged or unsafe. Run "
              "'facestitch models verify' there and reinstall what it names.",
    "edit.unknown": "The engine does not know this edit. Run 'facestitch edits' on the "
                    "engine machine for the installed ones and send again with one of "
                    "them.",
    "edit.": "The edit settings were refused; check the edit's strength and keyframes.",
    "document.": "The job file was refused by the engine (a version mismatch between "
                 "this bridge and the engine?). Update both to the same FaceStitch "
                 "version and send again.",
    "cancelled": "The job was cancelled. Send the shot again to run it.",
    "lease.lost": "The engine machine stopped while working on the job; another engine "
                  "will pick it up. If it keeps happening, check the engine machine.",
    "internal": "The engine hit an unexpected error. Send the job folder and the "
                "engine log to whoever runs the engine; sending the shot again may "
                "work.",
}
_GENERIC = "Check the engine's log; send the shot again once the cause is fixed."


def advice_for(code: str | None) -> str:
    """The advice for an error code, by exact code, then by family."""
    code = code or "internal"
    if code in ADVICE:
        return ADVICE[code]
    family = code.split(".", 1)[0] + "."
    return ADVICE.get(family, _GENERIC)


def explain_error(error: Mapping[str, Any] | None, *, job_id: str = "",
                  shot: str = "") -> str:
    """One readable paragraph for a ``Result/1`` error map."""
    error = error or {}
    code = str(error.get("code") or "internal")
    where = []
    if error.get("stage"):
        where.append(f"during {error['stage']}")
    if error.get("frame") is not None:
        where.append(f"at source frame {error['frame']}")
    what = f"FaceStitch job {job_id}" if job_id else "The FaceStitch job"
    if shot:
        what += f" for '{shot}'"
    message = str(error.get("message") or "no message").rstrip(".")
    text = f"{what} failed{' ' + ' '.join(where) if where else ''}: {message}."
    return f"{text}\nWhat to do: {advice_for(code)}\n(error code {code})"


def explain_status(status: Any, *, shot: str = "") -> str:
    """A message for a :class:`fsexchange.client.JobStatus` that is not done."""
    if status.state == "failed":
        return explain_error(status.error, job_id=status.id, shot=shot)
    if status.state == "cancelled":
        return explain_error({"code": "cancelled", "message": "it was cancelled"},
                             job_id=status.id, shot=shot)
    pct = int(round(status.progress * 100))
    stage = f", {status.stage}" if status.stage else ""
    return (f"FaceStitch job {status.id} is {status.state} ({pct}%{stage}): "
            f"{status.message}")
