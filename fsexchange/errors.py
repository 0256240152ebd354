"""One typed error hierarchy for FaceStitch; errors become data in ``Result/1``.

Every error has a stable ``code`` (documented in ``docs/protocol.md``), a message in
the user's terms, and optionally the ``stage`` and source ``frame`` it concerns.
Subclasses may be defined next to the code that raises them (``engine/media/video.py``
defines its media errors); each subclass registers its code here on definition, so
``ERROR_CODES`` is the complete table once the defining modules are imported.

Only truly unexpected exceptions become ``internal``: the engine logs their traceback.
"""

from __future__ import annotations

import errno
import os
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
    "NotRegularFile",
    "NotAFolder",
    "IOFailure",
    "NoSpace",
    "AccessDenied",
    "PathUnusable",
    "io_error",
    "PrecisionUnsupported",
    "MediaError",
    "MediaMissing",
    "MediaCorrupt",
    "MediaUnsupported",
    "MediaUnreadable",
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
    "JobStateError",
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


# --- the exchange's entries and the file system -----------------------------------


class NotRegularFile(FaceStitchError, OSError):
    """An entry where FaceStitch expects a regular file is something else: a named
    pipe, a socket, a device, a folder, or a symbolic link where none may be. It is
    never opened (a pipe would block the reader forever)."""

    code = "exchange.not_regular_file"


class NotAFolder(FaceStitchError, OSError):
    """An entry where FaceStitch expects a folder is a file, a pipe, a socket or a
    symbolic link."""

    code = "exchange.not_a_folder"


class IOFailure(FaceStitchError, OSError):
    """An operating-system error while reading or writing; the message names the
    path and what to do."""

    code = "io.error"


class NoSpace(IOFailure):
    """The disk (or the user's quota, or the file size limit) is full; the message
    names the folder. Nothing is wrong with the job: free space and run it again."""

    code = "io.no_space"


class AccessDenied(IOFailure, PermissionError):
    """Permission denied (or a read-only file system) for a path FaceStitch must
    read, write or move."""

    code = "io.permission"


class PathUnusable(IOFailure):
    """A path given on the command line cannot be used as asked: its folder does
    not exist, or a file stands where a folder is needed (or the other way round)."""

    code = "io.path"


_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_ACCESS_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def io_error(exc: OSError, path: object = None, *, doing: str = "writing",
             stage: str | None = None) -> IOFailure:
    """The typed error for an ``OSError``: :class:`NoSpace` (``ENOSPC``, ``EDQUOT``,
    ``EFBIG`` from a file size limit), :class:`AccessDenied` (``EACCES``, ``EPERM``,
    ``EROFS``), else :class:`IOFailure`. ``path`` defaults to the error's file name;
    for :class:`NoSpace` the message names the folder it concerns."""
    where = str(path if path is not None else (exc.filename or "?"))
    reason = exc.strerror or str(exc) or type(exc).__name__
    err: IOFailure
    if exc.errno in _NO_SPACE_ERRNOS:
        folder = where if path is not None else os.path.dirname(where) or where
        err = NoSpace(f"no space left {doing} in {folder} ({reason}); free some "
                      "space there (or raise the quota) and run the job again",
                      stage=stage)
    elif exc.errno in _ACCESS_ERRNOS:
        err = AccessDenied(f"{where}: {reason} while {doing}; check the file's "
                           "owner and permissions (and that the share is writable)",
                           stage=stage)
    else:
        err = IOFailure(f"{where}: {reason} while {doing}", stage=stage)
    err.errno, err.strerror, err.filename = exc.errno, exc.strerror, where
    return err


# --- media and ranges -----------------------------------------------------------


class MediaError(FaceStitchError, OSError):
    code = "media.error"


class MediaMissing(MediaError, FileNotFoundError):
    code = "media.missing"


class MediaCorrupt(MediaError):
    code = "media.corrupt"


class MediaUnsupported(MediaError):
    code = "media.unsupported"


class MediaUnreadable(MediaError, PermissionError):
    """The media exists but the engine may not read it (permissions)."""

    code = "media.unreadable"


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


# --- devices --------------------------------------------------------------------


class PrecisionUnsupported(FaceStitchError, ValueError):
    """The job asks for a training precision its device cannot compute: ``tf32``
    (TensorFloat-32) anywhere but on a CUDA GPU of compute capability 8.0 or
    later. Refused before any stage runs rather than trained in another
    precision than the one asked for."""

    code = "device.precision_unsupported"


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


class JobStateError(FaceStitchError, ValueError):
    """The job is not in a state that allows what was asked: cancelling a finished
    job, retrying or archiving one that has not finished, picking a strength of a
    job that is not a finished draft."""

    code = "job.state"


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


class DataParallelError(FaceStitchError):
    """A stage running data-parallel over several devices (PTI, refinement) could
    not run or lost one of its processes (docs/scale.md "Data-parallel PTI and
    refinement")."""

    code = "parallel.error"


class DataParallelRefused(DataParallelError, ValueError):
    """The job's settings leave nothing to split: a training batch smaller than
    the number of devices, or devices of different kinds."""

    code = "parallel.refused"


class RankFailed(DataParallelError):
    """One process (rank) of a data-parallel stage died or failed unexpectedly;
    the others were stopped."""

    code = "parallel.rank_failed"


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


# --- colour -----------------------------------------------------------------------


class ColourError(FaceStitchError, ValueError):
    code = "colour.error"


class ColourUnknown(ColourError):
    """``options.colour.source`` (or display, view) names nothing in the OCIO
    config in use."""

    code = "colour.unknown"


class ColourConfigError(ColourError):
    """The OpenColorIO config ($OCIO, ``--ocio-config``, ``options.colour.config``)
    cannot be loaded, or OpenColorIO is not installed."""

    code = "colour.config"


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
