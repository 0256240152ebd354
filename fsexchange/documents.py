"""Versioned protocol documents and the one loader for all of them.

Every document is a msgpack map with a ``schema`` key ``"facestitch.<Name>/<major>"``.
:func:`load_document` checks the size, decodes, upgrades older majors through the
registered upgrade functions, rejects unknown majors, validates every field (errors
name the file and the field path) and keeps unknown keys in ``extra`` so that a newer
writer's additions survive a read-modify-write by an older reader.

Documents (see ``docs/protocol.md`` for the prose):

- ``Job/1``        what to do: source media, frame range, subject, edits, options,
                   priority (``Job/1.1``).
- ``FaceTrack/1``  per-frame landmarks/boxes/scores for one subject.
- ``Progress/1``   the running state of a job, replaced atomically while it runs.
- ``Result/1``     the final state, per-stage timings, output frames with sha256.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, TypeVar

import msgpack

from fsexchange.errors import (
    DocumentError,
    DocumentFieldError,
    DocumentNotMsgpack,
    DocumentTooLarge,
    DocumentVersionError,
)
from fsexchange.fsutil import read_regular
from fsexchange.timecode import parse_rate, rate_to_list, timecode_to_frames

__all__ = [
    "SCHEMA_PREFIX",
    "JOB_KINDS",
    "JOB_STATES",
    "PRIORITY_NORMAL",
    "PRIORITY_DRAFT",
    "default_priority",
    "OUTPUT_FORMATS",
    "FrameRange",
    "Source",
    "Subject",
    "Keyframe",
    "Edit",
    "OutputSpec",
    "Job",
    "TrackFrame",
    "FaceTrack",
    "Progress",
    "StageTiming",
    "FrameOutput",
    "Variant",
    "Result",
    "Lease",
    "StageDone",
    "DOCUMENT_TYPES",
    "UPGRADES",
    "register_upgrade",
    "MINOR_UPGRADES",
    "register_minor_upgrade",
    "load_document",
    "decode_document",
    "encode_document",
    "valid_job_id",
    "STRENGTH_LIMIT",
    "MAX_FRAME",
    "MAX_EPOCH",
]

SCHEMA_PREFIX = "facestitch."
JOB_KINDS = ("stitch", "align-preview", "draft")
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
OUTPUT_FORMATS = ("png16", "exr", "prores4444", "pam16")
#: ``Job.priority``: engines claim higher first, first come first served within one.
PRIORITY_NORMAL = 0
PRIORITY_DRAFT = 50  # drafts jump the queue (a running job is never pre-empted)
_PRIORITY_LIMIT = 100
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Edit strengths and keyframe strengths lie within +-this (STIT convention; the
#: weakest published directions need 25-30, docs/reference.md "Editing").
STRENGTH_LIMIT = 100.0
#: Frame numbers in documents (keyframes, subject frames) lie within 0..this.
MAX_FRAME = (1 << 31) - 1
#: Lease epochs and counters stay exact in every msgpack reader (2^53: doubles).
MAX_EPOCH = 1 << 53


def default_priority(kind: str) -> int:
    """The priority a job of ``kind`` gets when its document does not say:
    :data:`PRIORITY_DRAFT` for drafts, else :data:`PRIORITY_NORMAL`."""
    return PRIORITY_DRAFT if kind == "draft" else PRIORITY_NORMAL


def valid_job_id(job_id: str) -> bool:
    """Job ids are file names: letters, digits, ``._-``, at most 128, no leading dot."""
    return bool(_JOB_ID.match(job_id)) and ".." not in job_id


# --- field reading --------------------------------------------------------------


class _Fields:
    """Reads one map with a field-path prefix, so errors say ``edits[2].strength``."""

    def __init__(self, data: Any, prefix: str, known: tuple[str, ...]) -> None:
        if not isinstance(data, Mapping):
            raise DocumentFieldError(f"{prefix or 'document'} must be a map",
                                     field=prefix)
        self.data = data
        self.prefix = prefix
        self.known = known

    def path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def get(self, key: str, kind: Any, default: Any = ..., *,
            none_ok: bool = False) -> Any:
        if key not in self.data:
            if default is ...:
                raise DocumentFieldError(f"missing field {self.path(key)!r}",
                                         field=self.path(key))
            return default
        value = self.data[key]
        if value is None and none_ok:
            return None
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, kinds) and not (
            isinstance(value, bool) and bool not in kinds
        )
        if not ok:
            names = "/".join(k.__name__ for k in kinds)
            raise DocumentFieldError(
                f"field {self.path(key)!r} must be {names}, got {type(value).__name__}",
                field=self.path(key),
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise DocumentFieldError(f"field {self.path(key)!r} must be a finite "
                                     f"number, got {value}", field=self.path(key))
        return value

    def bounded(self, key: str, kind: Any, lo: float, hi: float,
                default: Any = ...) -> Any:
        """``get`` a number that must lie within ``lo..hi``."""
        value = self.get(key, kind, default)
        if value is not None and not lo <= value <= hi:
            raise DocumentFieldError(f"field {self.path(key)!r} must be within "
                                     f"{lo}..{hi}, got {value}",
                                     field=self.path(key))
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise DocumentFieldError(
                f"field {self.path(key)!r} must be one of {', '.join(choices)}, "
                f"got {value!r}", field=self.path(key))
        return value

    def extra(self) -> dict[str, Any]:
        return {k: v for k, v in self.data.items() if k not in self.known}


def _number_list(value: Any, n: int | None, where: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or (n is not None and len(value) != n):
        raise DocumentFieldError(f"field {where!r} must be a list of {n} numbers",
                                 field=where)
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise DocumentFieldError(f"field {where!r} must hold numbers", field=where)
        if not math.isfinite(v):
            raise DocumentFieldError(f"field {where!r} must hold finite numbers, "
                                     f"got {v}", field=where)
        out.append(float(v))
    return tuple(out)


T = TypeVar("T", bound="_Document")


@dataclass(frozen=True)
class _Document:
    """Base of top-level documents: a schema name, a major version, ``extra`` keys."""

    NAME: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    #: compatible additions within a major (``"facestitch.Job/1.1"``); 0 is written
    #: as the major alone (``"facestitch.Job/1"``)
    MINOR: ClassVar[int] = 0
    MAX_BYTES: ClassVar[int] = 1 << 20

    @classmethod
    def schema(cls) -> str:
        minor = f".{cls.MINOR}" if cls.MINOR else ""
        return f"{SCHEMA_PREFIX}{cls.NAME}/{cls.VERSION}{minor}"

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:  # pragma: no cover
        raise NotImplementedError

    def body(self) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(getattr(self, "extra", {}) or {})
        out.update(self.body())
        out["schema"] = self.schema()
        return out

    def to_bytes(self) -> bytes:
        return encode_document(self.to_dict())


# --- Job/1 ----------------------------------------------------------------------


@dataclass(frozen=True)
class FrameRange:
    """Source frames ``start`` (inclusive) to ``end`` (exclusive) at ``rate``.

    Frame numbers are indices into the media (0 = its first frame). The source's
    start timecode lets a host map them to record time; ``start_frame_number``
    is the first source frame's number in timecode frames (86400 for 01:00:00:00 at
    24 fps), so ``start_frame_number + i`` is frame ``i``'s timecode in frames.
    """

    start: int
    end: int
    rate: Fraction
    start_timecode: str | None = None

    @property
    def count(self) -> int:
        return self.end - self.start

    @property
    def start_frame_number(self) -> int:
        if not self.start_timecode:
            return 0
        return timecode_to_frames(self.start_timecode, self.rate)

    @classmethod
    def from_dict(cls, data: Any, prefix: str = "range") -> "FrameRange":
        f = _Fields(data, prefix, ("start", "end", "rate", "start_timecode"))
        start = f.get("start", int)
        end = f.get("end", int)
        rate = parse_rate(f.get("rate", list), f.path("rate"))
        tc = f.get("start_timecode", str, None, none_ok=True)
        if start < 0:
            raise DocumentFieldError(f"{prefix}.start must be >= 0",
                                     field=f.path("start"))
        if end <= start:
            raise DocumentFieldError(
                f"{prefix} is empty: end {end} must be greater than start {start}",
                field=f.path("end"))
        out = cls(start, end, rate, tc)
        if tc:
            try:
                _ = out.start_frame_number  # validates the timecode at this rate
            except DocumentFieldError as exc:
                raise DocumentFieldError(exc.message, field=f.path("start_timecode")
                                         ) from None
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "rate": rate_to_list(self.rate),
                "start_timecode": self.start_timecode}


@dataclass(frozen=True)
class Source:
    """Media to read: a movie file or a folder of numbered images.

    ``path`` is relative to the job folder (media the bridge exported into the job) or
    absolute inside a media root the engine was allowed to read.
    """

    path: str
    kind: str = "video"  # "video" | "sequence"

    @classmethod
    def from_dict(cls, data: Any, prefix: str = "source") -> "Source":
        f = _Fields(data, prefix, ("path", "kind"))
        path = f.get("path", str)
        if not path or "\x00" in path:
            raise DocumentFieldError("source.path is empty or invalid",
                                     field=f.path("path"))
        return cls(path, f.choice("kind", ("video", "sequence"), "video"))

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind}


@dataclass(frozen=True)
class Subject:
    """Which face to follow. At most one of index / point / box; none = the largest.

    ``index``: the N-th face by size at the first frame where faces are found (0 =
    largest). ``point``: (frame, x, y) inside the wanted face. ``box``: (frame, x0, y0,
    x1, y1). ``track``: a ``FaceTrack/1`` file in the job folder computed by the bridge
    (then the engine does not track).
    """

    index: int | None = None
    point: tuple[float, ...] | None = None
    box: tuple[float, ...] | None = None
    track: str | None = None

    @classmethod
    def from_dict(cls, data: Any, prefix: str = "subject") -> "Subject":
        f = _Fields(data, prefix, ("index", "point", "box", "track"))
        index = f.get("index", int, None, none_ok=True)
        point = f.get("point", list, None, none_ok=True)
        box = f.get("box", list, None, none_ok=True)
        track = f.get("track", str, None, none_ok=True)
        if index is not None and index < 0:
            raise DocumentFieldError("subject.index must be >= 0",
                                     field=f.path("index"))
        if sum(x is not None for x in (index, point, box)) > 1:
            raise DocumentFieldError("give at most one of subject.index, point, box",
                                     field=prefix)
        return cls(
            index,
            _number_list(point, 3, f.path("point")) if point is not None else None,
            _number_list(box, 5, f.path("box")) if box is not None else None,
            track,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index,
                "point": list(self.point) if self.point else None,
                "box": list(self.box) if self.box else None,
                "track": self.track}


@dataclass(frozen=True)
class Keyframe:
    frame: int
    strength: float


def _strength(value: float, where: str) -> float:
    if not -STRENGTH_LIMIT <= value <= STRENGTH_LIMIT:
        raise DocumentFieldError(f"{where}: strength {value} must be within "
                                 f"-{STRENGTH_LIMIT:g}..{STRENGTH_LIMIT:g}",
                                 field=where)
    return value


@dataclass(frozen=True)
class Edit:
    """A linear latent edit. Without keyframes the strength is constant; with them
    the strength follows the keyframes (eased between them, held outside).

    ``strength`` follows the STIT CLI convention: w + (strength/2)·d (docs/reference.md,
    "W directions"), so published settings (age -8 = "younger") carry over unchanged.
    """

    name: str
    strength: float = 0.0
    keyframes: tuple[Keyframe, ...] = ()
    # "w" (W+ directions) | "s" (StyleSpace / StyleCLIP global) | "text" (a StyleCLIP
    # global direction computed from ``text`` by the engine)
    space: str = "w"
    ease: str = "smooth"  # "smooth" (ease in/out) | "linear" | "hold"
    # space "text" only (docs/reference.md "StyleCLIP global directions"): the
    # target prompt, the neutral prompt, and the channel threshold β
    text: str | None = None
    neutral: str = "face"
    beta: float = 0.2

    @classmethod
    def from_dict(cls, data: Any, prefix: str = "edit") -> "Edit":
        f = _Fields(data, prefix, ("name", "strength", "keyframes", "space", "ease",
                                   "text", "neutral", "beta"))
        name = f.get("name", str)
        if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", name):
            raise DocumentFieldError(f"edit name {name!r} is not a valid name",
                                     field=f.path("name"))
        kfs = []
        for i, kf in enumerate(f.get("keyframes", list, [])):
            where = f"{f.path('keyframes')}[{i}]"
            if (not isinstance(kf, (list, tuple)) or len(kf) != 2
                    or not isinstance(kf[0], int) or isinstance(kf[0], bool)):
                raise DocumentFieldError(f"{where} must be [frame, strength]",
                                         field=where)
            if not 0 <= kf[0] <= MAX_FRAME:
                raise DocumentFieldError(f"{where}: frame {kf[0]} must be within "
                                         f"0..{MAX_FRAME}", field=where)
            kfs.append(Keyframe(kf[0], _strength(_number_list([kf[1]], 1, where)[0],
                                                 where)))
        frames = [k.frame for k in kfs]
        if frames != sorted(set(frames)):
            raise DocumentFieldError("keyframes must have increasing frame numbers",
                                     field=f.path("keyframes"))
        space = f.choice("space", ("w", "s", "text"), "w")
        text, neutral, beta = None, "face", 0.2
        if space == "text":
            text = f.get("text", str).strip()
            neutral = f.get("neutral", str, "face").strip()
            beta = f.get("beta", float, 0.2)
            for key, value in (("text", text), ("neutral", neutral)):
                if not value or len(value) > 300:
                    raise DocumentFieldError(f"{f.path(key)} must be 1 to 300 "
                                             "characters", field=f.path(key))
            if not 0.0 <= beta < 1.0:
                raise DocumentFieldError(f"{f.path('beta')} must be in [0, 1), got "
                                         f"{beta}", field=f.path("beta"))
        return cls(name, _strength(f.get("strength", float, 0.0), f.path("strength")),
                   tuple(kfs), space,
                   f.choice("ease", ("smooth", "linear", "hold"), "smooth"),
                   text, neutral, beta)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
               "name": self.name, "strength": self.strength,
               "keyframes": [[k.frame, k.strength] for k in self.keyframes],
               "space": self.space, "ease": self.ease}
        if self.space == "text":  # W and S edits read exactly as before
            out.update(text=self.text, neutral=self.neutral, beta=self.beta)
        return out


@dataclass(frozen=True)
class OutputSpec:
    """How results are written. Output frame numbers map 1:1 to source frames:
    ``<name>.<number:07d>.<ext>`` with number = ``start_number + (frame - range.start)``
    when ``start_number`` is set, else the source frame's timecode frame number
    (``range.start_frame_number + frame``)."""

    format: str = "png16"
    name: str = "facestitch"
    start_number: int | None = None
    preview: bool = True

    @classmethod
    def from_dict(cls, data: Any, prefix: str = "output") -> "OutputSpec":
        f = _Fields(data, prefix, ("format", "name", "start_number", "preview"))
        name = f.get("name", str, "facestitch")
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", name) or ".." in name:
            raise DocumentFieldError(f"output.name {name!r} must be a plain file name "
                                     "prefix", field=f.path("name"))
        start = f.get("start_number", int, None, none_ok=True)
        if start is not None and start < 0:
            raise DocumentFieldError("output.start_number must be >= 0",
                                     field=f.path("start_number"))
        return cls(f.choice("format", OUTPUT_FORMATS, "png16"), name, start,
                   f.get("preview", bool, True))

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "name": self.name,
                "start_number": self.start_number, "preview": self.preview}


@dataclass(frozen=True)
class Job(_Document):
    """A unit of work, written once by a submitter and never modified after.

    ``priority`` (minor 1): engines claim higher priorities first, first come first
    served within one; None (the default) means :func:`default_priority` of the
    kind (drafts high). Minor 0 documents are upgraded the same way.
    """

    NAME: ClassVar[str] = "Job"
    MINOR: ClassVar[int] = 1
    MAX_BYTES: ClassVar[int] = 1 << 20

    id: str
    source: Source
    range: FrameRange
    kind: str = "stitch"
    subject: Subject = field(default_factory=Subject)
    edits: tuple[Edit, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    output: OutputSpec = field(default_factory=OutputSpec)
    host: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    priority: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.priority is None:
            object.__setattr__(self, "priority", default_priority(self.kind))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Job":
        f = _Fields(data, "", ("schema", "id", "kind", "source", "range", "subject",
                               "edits", "options", "output", "host", "created",
                               "priority"))
        job_id = f.get("id", str)
        if not valid_job_id(job_id):
            raise DocumentFieldError(f"job id {job_id!r} is not a valid name",
                                     field="id")
        priority = f.get("priority", int, None, none_ok=True)
        if priority is not None and abs(priority) > _PRIORITY_LIMIT:
            raise DocumentFieldError(f"priority {priority} must lie within "
                                     f"-{_PRIORITY_LIMIT}..{_PRIORITY_LIMIT}",
                                     field="priority")
        edits = tuple(Edit.from_dict(e, f"edits[{i}]")
                      for i, e in enumerate(f.get("edits", list, [])))
        return cls(
            id=job_id,
            kind=f.choice("kind", JOB_KINDS, "stitch"),
            source=Source.from_dict(f.get("source", dict)),
            range=FrameRange.from_dict(f.get("range", dict)),
            subject=Subject.from_dict(f.get("subject", dict, {})),
            edits=edits,
            options=dict(f.get("options", dict, {})),
            output=OutputSpec.from_dict(f.get("output", dict, {})),
            host=dict(f.get("host", dict, {})),
            created=f.get("created", str, ""),
            priority=priority,
            extra=f.extra(),
        )

    def body(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "source": self.source.to_dict(),
                "range": self.range.to_dict(), "subject": self.subject.to_dict(),
                "edits": [e.to_dict() for e in self.edits], "options": self.options,
                "output": self.output.to_dict(), "host": self.host,
                "created": self.created, "priority": self.priority}


# --- FaceTrack/1 ----------------------------------------------------------------


@dataclass(frozen=True)
class TrackFrame:
    """One source frame of a face track. ``present`` False: the subject is missing
    or occluded there (``box``/``landmarks`` None); ``interpolated`` True: landmarks
    were filled in from neighbours across a short gap."""

    frame: int
    present: bool
    box: tuple[float, ...] | None = None  # x0, y0, x1, y1 in frame pixels
    score: float | None = None
    landmarks: tuple[tuple[float, float], ...] | None = None  # 68 x (x, y)
    interpolated: bool = False

    @classmethod
    def from_dict(cls, data: Any, prefix: str) -> "TrackFrame":
        f = _Fields(data, prefix, ("frame", "present", "box", "score", "landmarks",
                                   "interpolated"))
        present = f.get("present", bool)
        box = f.get("box", list, None, none_ok=True)
        lms = f.get("landmarks", list, None, none_ok=True)
        if present and lms is None:
            raise DocumentFieldError(f"{prefix}: a present face needs landmarks",
                                     field=f.path("landmarks"))
        landmarks = None
        if lms is not None:
            if len(lms) != 68:
                raise DocumentFieldError(f"{f.path('landmarks')} must hold 68 points",
                                         field=f.path("landmarks"))
            landmarks = tuple(
                tuple(_number_list(p, 2, f"{f.path('landmarks')}[{i}]"))  # type: ignore
                for i, p in enumerate(lms))
        return cls(f.get("frame", int), present,
                   _number_list(box, 4, f.path("box")) if box is not None else None,
                   f.get("score", float, None, none_ok=True), landmarks,
                   f.get("interpolated", bool, False))

    def to_dict(self) -> dict[str, Any]:
        return {"frame": self.frame, "present": self.present,
                "box": list(self.box) if self.box else None, "score": self.score,
                "landmarks": ([list(p) for p in self.landmarks] if self.landmarks
                              else None),
                "interpolated": self.interpolated}


@dataclass(frozen=True)
class FaceTrack(_Document):
    """Landmarks of one chosen subject over a frame range, one entry per frame."""

    NAME: ClassVar[str] = "FaceTrack"
    MAX_BYTES: ClassVar[int] = 64 << 20

    rate: Fraction
    image_size: tuple[int, int]  # width, height
    frames: tuple[TrackFrame, ...]
    backend: str = ""
    subject: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FaceTrack":
        f = _Fields(data, "", ("schema", "rate", "image_size", "frames", "backend",
                               "subject"))
        size = f.get("image_size", list)
        if (len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size)):
            raise DocumentFieldError("image_size must be [width, height]",
                                     field="image_size")
        frames = tuple(TrackFrame.from_dict(fr, f"frames[{i}]")
                       for i, fr in enumerate(f.get("frames", list)))
        numbers = [fr.frame for fr in frames]
        if numbers != sorted(set(numbers)):
            raise DocumentFieldError("frames must be in increasing frame order",
                                     field="frames")
        return cls(parse_rate(f.get("rate", list), "rate"), (size[0], size[1]), frames,
                   f.get("backend", str, ""), dict(f.get("subject", dict, {})),
                   extra=f.extra())

    def body(self) -> dict[str, Any]:
        return {"rate": rate_to_list(self.rate), "image_size": list(self.image_size),
                "frames": [fr.to_dict() for fr in self.frames], "backend": self.backend,
                "subject": self.subject}


# --- Progress/1 -----------------------------------------------------------------


@dataclass(frozen=True)
class Progress(_Document):
    """Replaced atomically while a job runs; the bridge tails it."""

    NAME: ClassVar[str] = "Progress"
    MAX_BYTES: ClassVar[int] = 64 << 10

    job_id: str
    state: str
    stage: str | None = None
    stage_index: int = 0
    stage_count: int = 0
    fraction: float = 0.0  # whole job, 0..1
    message: str = ""
    worker: str = ""
    updated: str = ""  # ISO 8601 UTC
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Progress":
        f = _Fields(data, "", ("schema", "job_id", "state", "stage", "stage_index",
                               "stage_count", "fraction", "message", "worker",
                               "updated"))
        frac = f.get("fraction", float, 0.0)
        if not 0.0 <= frac <= 1.0:
            raise DocumentFieldError("fraction must be within 0..1", field="fraction")
        return cls(f.get("job_id", str), f.choice("state", JOB_STATES),
                   f.get("stage", str, None, none_ok=True),
                   f.get("stage_index", int, 0),
                   f.get("stage_count", int, 0), frac, f.get("message", str, ""),
                   f.get("worker", str, ""), f.get("updated", str, ""), extra=f.extra())

    def body(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "state": self.state, "stage": self.stage,
                "stage_index": self.stage_index, "stage_count": self.stage_count,
                "fraction": self.fraction, "message": self.message,
                "worker": self.worker, "updated": self.updated}


# --- Result/1 -------------------------------------------------------------------


@dataclass(frozen=True)
class StageTiming:
    name: str
    seconds: float
    frames: int = 0
    resumed: bool = False  # True when the stage finished in an earlier attempt

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seconds": self.seconds, "frames": self.frames,
                "resumed": self.resumed}


@dataclass(frozen=True)
class FrameOutput:
    """One delivered frame: source frame index, file (relative to the job's result
    folder), its sha256, and whether the face was edited there (False: passed through
    with alpha 0)."""

    frame: int
    path: str
    sha256: str
    edited: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"frame": self.frame, "path": self.path, "sha256": self.sha256,
                "edited": self.edited}


@dataclass(frozen=True)
class Variant:
    """One row of a draft's strength sweep: each swept edit's strength, and the
    frames rendered with them, in a folder of their own (``folder``, relative to
    the job folder). The job's other edits apply to every row unchanged."""

    label: str
    strengths: tuple[tuple[str, float], ...]  # (edit name, strength)
    folder: str
    frames: tuple[FrameOutput, ...] = ()

    @classmethod
    def from_dict(cls, data: Any, prefix: str) -> "Variant":
        f = _Fields(data, prefix, ())
        strengths = []
        for i, s in enumerate(f.get("strengths", list, [])):
            g = _Fields(s, f"{prefix}.strengths[{i}]", ())
            strengths.append((g.get("name", str), g.get("strength", float)))
        frames = []
        for i, fr in enumerate(f.get("frames", list, [])):
            g = _Fields(fr, f"{prefix}.frames[{i}]", ())
            frames.append(FrameOutput(g.get("frame", int), g.get("path", str),
                                      g.get("sha256", str),
                                      g.get("edited", bool, True)))
        return cls(f.get("label", str), tuple(strengths), f.get("folder", str),
                   tuple(frames))

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label,
                "strengths": [{"name": n, "strength": v} for n, v in self.strengths],
                "folder": self.folder, "frames": [f.to_dict() for f in self.frames]}


@dataclass(frozen=True)
class Result(_Document):
    """Written once when a job ends, then published with its folder."""

    NAME: ClassVar[str] = "Result"
    MAX_BYTES: ClassVar[int] = 32 << 20

    job_id: str
    state: str  # done | failed | cancelled
    stages: tuple[StageTiming, ...] = ()
    frames: tuple[FrameOutput, ...] = ()
    outputs: dict[str, str] = field(default_factory=dict)  # preview, report, ...
    error: dict[str, Any] | None = None  # {code, message, stage, frame, field}
    metrics: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    started: str = ""
    finished: str = ""
    variants: tuple[Variant, ...] = ()  # a draft's sweep rows (empty otherwise)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Result":
        f = _Fields(data, "", ("schema", "job_id", "state", "stages", "frames",
                               "outputs", "error", "metrics", "models", "warnings",
                               "started", "finished", "variants"))
        stages = []
        for i, s in enumerate(f.get("stages", list, [])):
            g = _Fields(s, f"stages[{i}]", ())
            stages.append(StageTiming(g.get("name", str), g.get("seconds", float),
                                      g.get("frames", int, 0),
                                      g.get("resumed", bool, False)))
        frames = []
        for i, fr in enumerate(f.get("frames", list, [])):
            g = _Fields(fr, f"frames[{i}]", ())
            frames.append(FrameOutput(g.get("frame", int), g.get("path", str),
                                      g.get("sha256", str),
                                      g.get("edited", bool, True)))
        error = f.get("error", dict, None, none_ok=True)
        if error is not None:
            g = _Fields(error, "error", ())
            g.get("code", str)
            g.get("message", str)
        state = f.choice("state", ("done", "failed", "cancelled"))
        if state == "failed" and error is None:
            raise DocumentFieldError("a failed result needs an error", field="error")
        warnings = f.get("warnings", list, [])
        variants = tuple(Variant.from_dict(v, f"variants[{i}]")
                         for i, v in enumerate(f.get("variants", list, [])))
        return cls(f.get("job_id", str), state, tuple(stages), tuple(frames),
                   dict(f.get("outputs", dict, {})), error,
                   dict(f.get("metrics", dict, {})), dict(f.get("models", dict, {})),
                   tuple(str(w) for w in warnings), f.get("started", str, ""),
                   f.get("finished", str, ""), variants, extra=f.extra())

    def body(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "state": self.state,
                "stages": [s.to_dict() for s in self.stages],
                "frames": [fr.to_dict() for fr in self.frames], "outputs": self.outputs,
                "error": self.error, "metrics": self.metrics, "models": self.models,
                "warnings": list(self.warnings), "started": self.started,
                "finished": self.finished,
                "variants": [v.to_dict() for v in self.variants]}


# --- Lease/1 --------------------------------------------------------------------


@dataclass(frozen=True)
class Lease(_Document):
    """A worker's claim on a running job, ``cur/<id>/lease.msgpack``.

    Renewed by the worker's heartbeat (rewritten atomically with a later
    ``expires``). ``epoch`` counts claims of this job: each new claimer takes the
    previous epoch + 1, and a worker that reads a lease with a higher epoch or
    another owner has lost the job and stops without publishing anything.
    ``expires`` is POSIX time in seconds (the hosts sharing an exchange keep their
    clocks in sync, e.g. NTP; skew must stay well under the lease length).
    """

    NAME: ClassVar[str] = "Lease"
    MAX_BYTES: ClassVar[int] = 16 << 10

    job_id: str
    worker: str  # "" once released (requeued); the next claimer takes epoch + 1
    epoch: int
    expires: float
    acquired: str = ""  # ISO 8601 UTC
    renewed: str = ""  # ISO 8601 UTC
    host: str = ""
    pid: int = 0
    reclaims: int = 0  # times the job was taken from a worker whose lease expired
    released: str = ""  # why the last holder let go: "" | "shutdown" | "expired"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Lease":
        f = _Fields(data, "", ("schema", "job_id", "worker", "epoch", "expires",
                               "acquired", "renewed", "host", "pid", "reclaims",
                               "released"))
        # Bounded so that epoch + 1 and every counter stay exact integers that
        # any msgpack writer can store (an epoch of 2^64-1 once overflowed).
        return cls(f.get("job_id", str), f.get("worker", str),
                   f.bounded("epoch", int, 0, MAX_EPOCH - 1),
                   f.get("expires", float), f.get("acquired", str, ""),
                   f.get("renewed", str, ""), f.get("host", str, ""),
                   f.bounded("pid", int, 0, MAX_EPOCH, 0),
                   f.bounded("reclaims", int, 0, MAX_EPOCH, 0),
                   f.get("released", str, ""), extra=f.extra())

    def body(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "worker": self.worker, "epoch": self.epoch,
                "expires": self.expires, "acquired": self.acquired,
                "renewed": self.renewed, "host": self.host, "pid": self.pid,
                "reclaims": self.reclaims, "released": self.released}


# --- StageDone/1 ----------------------------------------------------------------


@dataclass(frozen=True)
class StageDone(_Document):
    """``stages/<name>/DONE.msgpack``: the stage completed; never run it again.

    ``facts`` is what the stage's ``run`` returned (``frames``: a count or a list
    of ``FrameOutput`` maps; ``outputs``: name -> path relative to the job folder;
    ``metrics``: a map); ``warnings`` and ``info`` are what the stage added to the
    job's warnings and info while it ran, so a resumed job still reports them.
    """

    NAME: ClassVar[str] = "StageDone"
    MAX_BYTES: ClassVar[int] = 32 << 20

    stage: str
    seconds: float
    facts: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)
    worker: str = ""
    finished: str = ""  # ISO 8601 UTC
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StageDone":
        f = _Fields(data, "", ("schema", "stage", "seconds", "facts", "warnings",
                               "info", "worker", "finished"))
        return cls(f.get("stage", str), f.get("seconds", float),
                   dict(f.get("facts", dict, {})),
                   tuple(str(w) for w in f.get("warnings", list, [])),
                   dict(f.get("info", dict, {})), f.get("worker", str, ""),
                   f.get("finished", str, ""), extra=f.extra())

    def body(self) -> dict[str, Any]:
        return {"stage": self.stage, "seconds": self.seconds, "facts": self.facts,
                "warnings": list(self.warnings), "info": self.info,
                "worker": self.worker, "finished": self.finished}


# --- the loader -----------------------------------------------------------------

DOCUMENT_TYPES: dict[str, type[_Document]] = {
    cls.NAME: cls for cls in (Job, FaceTrack, Progress, Result, Lease, StageDone)
}

#: (name, major) -> function upgrading a dict of that major to major + 1.
UPGRADES: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}


def register_upgrade(name: str, from_major: int):
    """Decorator registering ``fn(doc: dict) -> dict`` from ``name/from_major`` to
    ``name/from_major + 1`` (OpenTimelineIO-style schema upgrades)."""

    def deco(fn: Callable[[dict[str, Any]], dict[str, Any]]):
        UPGRADES[(name, from_major)] = fn
        return fn

    return deco


#: (name, major, minor) -> function upgrading a dict of that minor to minor + 1
#: within the major. A minor only adds optional keys: a reader takes any newer
#: minor of a major it knows as it is (the new keys land in ``extra``).
MINOR_UPGRADES: dict[tuple[str, int, int],
                     Callable[[dict[str, Any]], dict[str, Any]]] = {}


def register_minor_upgrade(name: str, major: int, from_minor: int):
    """Decorator registering ``fn(doc: dict) -> dict`` from ``name/major.from_minor``
    to ``name/major.(from_minor + 1)``; a major upgrade lands at minor 0."""

    def deco(fn: Callable[[dict[str, Any]], dict[str, Any]]):
        MINOR_UPGRADES[(name, major, from_minor)] = fn
        return fn

    return deco


@register_minor_upgrade("Job", 1, 0)
def _job_1_0_to_1_1(doc: dict[str, Any]) -> dict[str, Any]:
    """Job/1 -> Job/1.1: ``priority`` from the kind (drafts high)."""
    kind = doc.get("kind", "stitch")
    doc.setdefault("priority", default_priority(kind if isinstance(kind, str) else ""))
    return doc


_SCHEMA = re.compile(r"^facestitch\.([A-Za-z]+)/(\d+)(?:\.(\d+))?$")


def encode_document(data: Mapping[str, Any]) -> bytes:
    return msgpack.packb(data, use_bin_type=True)


def decode_document(
    raw: bytes,
    expect: type[T] | None = None,
    *,
    source: str = "<bytes>",
) -> Any:
    """Decode, upgrade and validate one document. Errors name ``source`` and the field.

    Args:
        raw: the msgpack bytes.
        expect: the document class wanted (``Job``...); None accepts any known type.
        source: a file name for error messages.
    """
    limit = (expect.MAX_BYTES if expect
             else max(t.MAX_BYTES for t in DOCUMENT_TYPES.values()))
    if len(raw) > limit:
        raise DocumentTooLarge(
            f"{source}: {len(raw)} bytes is over the {limit}-byte limit for "
            f"{expect.NAME if expect else 'documents'}")
    try:
        data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except msgpack.StackError:
        raise DocumentNotMsgpack(f"{source}: maps or lists nested deeper than this "
                                 "reader accepts; not a FaceStitch document") from None
    except Exception as exc:  # noqa: BLE001 - msgpack raises unrelated types
        reason = str(exc) or type(exc).__name__
        raise DocumentNotMsgpack(f"{source}: not a msgpack document ({reason})"
                                 ) from None
    if not isinstance(data, dict):
        raise DocumentError(f"{source}: a document must be a map, got "
                            f"{type(data).__name__}")
    schema = data.get("schema")
    m = _SCHEMA.match(schema) if isinstance(schema, str) else None
    if not m:
        raise DocumentFieldError(f"{source}: missing or malformed 'schema' "
                                 f"(expected like 'facestitch.Job/1'), got {schema!r}",
                                 field="schema")
    name, major, minor = m[1], int(m[2]), int(m[3] or 0)
    cls = DOCUMENT_TYPES.get(name)
    if cls is None or (expect is not None and cls is not expect):
        wanted = expect.schema() if expect else "a FaceStitch document"
        raise DocumentVersionError(f"{source}: is {schema!r}, expected {wanted}",
                                   field="schema")
    if major > cls.VERSION or major < 1:
        raise DocumentVersionError(
            f"{source}: {schema!r} is not supported; this FaceStitch reads "
            f"{cls.NAME}/1..{cls.VERSION} (upgrade FaceStitch to read newer documents)",
            field="schema")
    while major < cls.VERSION:
        step = UPGRADES.get((name, major))
        if step is None:
            raise DocumentVersionError(f"{source}: no upgrade from {name}/{major}",
                                       field="schema")
        data = step(dict(data))
        major, minor = major + 1, 0
    while minor < cls.MINOR:
        step = MINOR_UPGRADES.get((name, major, minor))
        if step is None:
            raise DocumentVersionError(
                f"{source}: no upgrade from {name}/{major}.{minor}", field="schema")
        data = step(dict(data))
        minor += 1
    try:
        return cls.from_dict(data)
    except DocumentError as exc:
        exc.message = f"{source}: {exc.message}"
        exc.args = (exc.message,)
        raise


def load_document(path: str | Path, expect: type[T] | None = None, *,
                  follow_symlinks: bool = False) -> Any:
    """Read a document file, refusing oversized files before reading them.

    Only a regular file is opened, and (unless ``follow_symlinks``) not through a
    symbolic link: a named pipe, socket, device, folder or link raises
    :class:`~fsexchange.errors.NotRegularFile` without blocking
    (:func:`fsexchange.fsutil.open_regular`).
    """
    p = Path(path)
    limit = (expect.MAX_BYTES if expect
             else max(t.MAX_BYTES for t in DOCUMENT_TYPES.values()))
    raw = read_regular(p, limit + 1, follow_symlinks=follow_symlinks, field=p.name)
    return decode_document(raw, expect, source=p.name)


def replace(doc: T, **changes: Any) -> T:
    """``dataclasses.replace`` re-exported for documents."""
    return dataclasses.replace(doc, **changes)
