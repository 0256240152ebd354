"""One typed error hierarchy for FaceStitch; errors become data in ``Result/1``.

Every error has a stable ``code`` (documented in ``docs/protocol.md``), a message in
the user's terms, and optionally the ``stage`` and source ``frame`` it concerns.
Subclasses may be defined next to the code that raises them (``engine/media/video.py``
defines its media errors); each subclass registers its code here on definition, so
``ERROR_CODES`` is the complete table once the defining modules are imported.

Only truly unexpected exceptions become ``internal``: the engine logs their traceback.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ERROR_CODES",
    "FaceStitchError",
    "InternalError",
    "DocumentError",
    "DocumentNotMsgpack",
    "DocumentVersionError",
    "DocumentFieldError",
    "DocumentTooLarge",
    "PathEscapeError",
    "MediaError",
    "MediaMissing",
    "MediaCorrupt",
    "MediaUnsupported",
    "RangeInvalid",
    "RangeOutOfBounds",
    "FaceError",
    "NoFaceFound",
    "SubjectInvalid",
    "ModelError",
    "ModelMissing",
    "ModelUnsafe",
    "ModelHashMismatch",
    "ModelFormatError",
    "EditError",
    "EditUnknown",
    "EditInvalid",
    "JobCancelled",
    "JobNotFound",
    "JobExists",
    "JobCrashed",
    "LeaseLost",
    "PipelineUnavailable",
    "StageNotReady",
    "HostError",
    "MetricsError",
    "error_from_dict",
]

#: code -> class, filled by ``FaceStitchError.__init_subclass__``.
ERROR_CODES: dict[str, type["FaceStitchError"]] = {}


class FaceStitchError(Exception):
    """Base of every error FaceStitch reports to a user.

    Args:
        message: what went wrong and what to do, in the user's terms.
        stage: pipeline stage name, if the error happened inside one.
        frame: source frame number concerned, if any.
        field: document field path concerned (``"range.end"``), if any.
    """

    code: ClassVar[str] = "error"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        code = cls.__dict__.get("code")
        if code is None:
            return
        other = ERROR_CODES.get(code)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise TypeError(f"error code {code!r} used by {other} and {cls}")
        ERROR_CODES[code] = cls

    def __init__(
        self,
        message: str,
        *,
        stage: str | None = None,
        frame: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.stage = stage
        self.frame = frame
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object of ``Result/1``."""
        return {
            "code": self.code,
            "message": self.message,
            "stage": self.stage,
            "frame": self.frame,
            "field": self.field,
        }

    def __str__(self) -> str:
        where = []
        if self.stage:
            where.append(f"stage {self.stage}")
        if self.frame is not None:
            where.append(f"frame {self.frame}")
        suffix = f" ({', '.join(where)})" if where else ""
        return f"[{self.code}] {self.message}{suffix}"


class InternalError(FaceStitchError):
    """An unexpected exception; the engine logs its traceback."""

    code = "internal"


# --- documents ------------------------------------------------------------------


class DocumentError(FaceStitchError, ValueError):
    """A protocol document is malformed."""

    code = "document.malformed"


class DocumentNotMsgpack(DocumentError):
    code = "document.not_msgpack"


class DocumentVersionError(DocumentError):
    code = "document.version"


class DocumentFieldError(DocumentError):
    """A field is missing or has the wrong type or value; ``field`` names it."""

    code = "document.field"


class DocumentTooLarge(DocumentError):
    code = "document.too_large"


class PathEscapeError(FaceStitchError, PermissionError):
    """A path in a document leaves the exchange root and the allowed media roots."""

    code = "path.escape"


# --- media and ranges -----------------------------------------------------------


class MediaError(FaceStitchError, OSError):
    code = "media.error"


class MediaMissing(MediaError, FileNotFoundError):
    code = "media.missing"


class MediaCorrupt(MediaError):
    code = "media.corrupt"


class MediaUnsupported(MediaError):
    code = "media.unsupported"


class RangeInvalid(FaceStitchError, ValueError):
    """An empty or reversed frame range."""

    code = "range.invalid"


class RangeOutOfBounds(FaceStitchError, ValueError):
    """A frame range that reaches past the media."""

    code = "range.out_of_bounds"


# --- faces ----------------------------------------------------------------------


class FaceError(FaceStitchError):
    code = "face.error"


class NoFaceFound(FaceError):
    """No face in any frame of the range (a missing face in some frames is not an
    error: those frames pass through untouched)."""

    code = "face.not_found"


class SubjectInvalid(FaceError, ValueError):
    code = "face.subject_invalid"


# --- models ---------------------------------------------------------------------


class ModelError(FaceStitchError):
    code = "model.error"


class ModelMissing(ModelError, FileNotFoundError):
    code = "model.missing"


class ModelUnsafe(ModelError):
    """A checkpoint would need code execution to load (a pickle outside the allow
    list)."""

    code = "model.unsafe"


class ModelHashMismatch(ModelError):
    code = "model.hash_mismatch"


class ModelFormatError(ModelError, ValueError):
    code = "model.format"


# --- edits ----------------------------------------------------------------------


class EditError(FaceStitchError, ValueError):
    code = "edit.error"


class EditUnknown(EditError):
    code = "edit.unknown"


class EditInvalid(EditError):
    code = "edit.invalid"


# --- job lifecycle --------------------------------------------------------------


class JobCancelled(FaceStitchError):
    code = "cancelled"


class JobNotFound(FaceStitchError, LookupError):
    """No job with that id in any state folder of the exchange."""

    code = "job.not_found"


class JobExists(FaceStitchError, FileExistsError):
    """A job with that id was already submitted (ids are never reused)."""

    code = "job.exists"


class JobCrashed(FaceStitchError):
    """Workers kept dying while running this job (out of memory, a native crash),
    so it is failed instead of being handed to yet another worker."""

    code = "job.crashed"


class PipelineUnavailable(FaceStitchError):
    """The job kind needs a stage this engine does not have installed."""

    code = "pipeline.unavailable"


class StageNotReady(FaceStitchError):
    """One unit of a stage was asked to run (``facestitch stage run``, a Ray task,
    a farm task) before the stages it reads had completed in that job folder."""

    code = "stage.not_ready"


class LeaseLost(FaceStitchError):
    """This worker's claim on a job was taken over (its lease expired)."""

    code = "lease.lost"


class HostError(FaceStitchError):
    """The editing host (Resolve, an OpenFX host) refused or misreported something."""

    code = "host.error"


class MetricsError(FaceStitchError, ValueError):
    code = "metrics.error"


class MetricsLengthMismatch(MetricsError):
    """The source and the edited clip have different numbers of frames."""

    code = "metrics.length_mismatch"


class MetricsSizeMismatch(MetricsError):
    """The source and the edited frames differ in width or height."""

    code = "metrics.size_mismatch"


class MetricsFrameInvalid(MetricsError):
    """A frame is not an HxWx3 / HxWx4 uint8 or uint16 image."""

    code = "metrics.frame_invalid"


class MetricsNoFrames(MetricsError):
    code = "metrics.no_frames"


def error_from_dict(data: dict[str, Any]) -> FaceStitchError:
    """Rebuild an error from a ``Result/1`` ``error`` object (unknown codes -> base)."""
    cls = ERROR_CODES.get(str(data.get("code")), FaceStitchError)
    err = cls(
        str(data.get("message", "")),
        stage=data.get("stage"),
        frame=data.get("frame"),
        field=data.get("field"),
    )
    if cls is FaceStitchError:
        err.code = str(data.get("code", "error"))  # type: ignore[misc]
    return err
