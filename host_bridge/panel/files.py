"""A job's files, served only when its ``Result/1`` lists them.

A request names a job id and an output key (``report``, ``preview``, ``sheet``)
or a frame's index in ``Result/1`` ``frames`` (or in a draft row's ``frames``);
the path comes from the result document, never from the request. It must stay
inside the job folder (:func:`fsexchange.paths.confine`: no ``..``, no symbolic
link pointing out) and be a regular file, opened without blocking
(:func:`fsexchange.fsutil.open_regular`: a named pipe in its place is refused,
not read).
"""

from __future__ import annotations

import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from fsexchange.client import job_status
from fsexchange.errors import FaceStitchError
from fsexchange.exchange import Exchange
from fsexchange.fsutil import open_regular
from fsexchange.paths import confine, is_within

__all__ = ["NotListed", "JobFile", "open_job_file", "read_job_file",
           "MEDIA_TYPES"]

#: Types the browser should see for our outputs (mimetypes lacks some).
MEDIA_TYPES = {".pam": "image/x-portable-arbitrarymap", ".exr": "image/x-exr",
               ".mov": "video/quicktime", ".mp4": "video/mp4",
               ".html": "text/html; charset=utf-8", ".json": "application/json",
               ".svg": "image/svg+xml", ".png": "image/png", ".txt": "text/plain"}


class NotListed(LookupError):
    """The job's result lists no such file (or it is not a file the panel serves:
    outside the job folder, not a regular file, gone)."""


@dataclass
class JobFile:
    """An open regular file of a job (the caller closes ``fh``)."""

    fh: BinaryIO
    size: int
    name: str
    media_type: str


def _index(text: str) -> int:
    """A list index from a request: digits only (``-1`` would count from the end
    and ``int`` also takes ``" 1"``, ``"+1"`` and ``"1_0"``)."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError(text)
    return int(text)


def _listed_path(ex: Exchange, job_id: str, what: str, key: str, row: str | None
                 ) -> tuple[str, os.PathLike[str]]:
    status = job_status(ex, job_id)
    result = status.result
    if result is None or status.folder is None:
        raise NotListed(f"job {job_id} has no readable result ({status.state})")
    try:
        if what == "outputs":
            rel = result.outputs[key]
        elif what == "frames":
            rel = result.frames[_index(key)].path
        elif what == "variants":
            if row is None:
                raise NotListed("a draft row is needed")
            rel = result.variants[_index(row)].frames[_index(key)].path
        else:
            raise NotListed(f"no file kind {what!r}")
    except (KeyError, IndexError, ValueError):
        raise NotListed(f"job {job_id}: its result lists no {what} {key!r}") from None
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or \
            PurePosixPath(rel.replace("\\", "/")).is_absolute():
        raise NotListed(f"job {job_id}: {what} {key!r} is not a path in the job")
    return rel, status.folder


def open_job_file(ex: Exchange, job_id: str, what: str, key: str,
                  row: str | None = None) -> JobFile:
    """Open a file a finished job's result lists.

    Args:
        what: ``outputs`` (``key`` = output name), ``frames`` (``key`` = index in
            ``Result/1`` ``frames``) or ``variants`` (``row`` = draft row index,
            ``key`` = index in that row's ``frames``).

    Raises:
        JobNotFound: no such job.
        NotListed: the result lists no such file, or it is not a regular file
            inside the job folder.
    """
    rel, folder = _listed_path(ex, job_id, what, key, row)
    # the job folder itself must be a folder of the exchange, not a link to one
    # elsewhere (its result could then list files anywhere under the target)
    if os.path.islink(folder) or not is_within(
            Path(os.path.realpath(folder)), Path(os.path.realpath(ex.root))):
        raise NotListed(f"job {job_id}: its folder is not inside the exchange")
    try:
        real = confine(rel, folder, field=f"{what}.{key}")
        fh = open_regular(real)
    except (FaceStitchError, OSError) as exc:
        raise NotListed(f"job {job_id}: {what} {key!r} cannot be served: "
                        f"{getattr(exc, 'message', None) or exc}") from None
    size = os.fstat(fh.fileno()).st_size
    name = PurePosixPath(rel.replace("\\", "/")).name
    suffix = PurePosixPath(name).suffix.lower()
    media = MEDIA_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or \
        "application/octet-stream"
    return JobFile(fh, size, name, media)


def read_job_file(ex: Exchange, job_id: str, what: str, key: str, *,
                  limit: int = 1 << 20) -> bytes:
    """The bytes of a small listed file (a sheet's layout); refuses one larger
    than ``limit`` bytes.

    Raises:
        NotListed: as :func:`open_job_file`, or too large.
    """
    f = open_job_file(ex, job_id, what, key)
    with f.fh:
        if f.size > limit:
            raise NotListed(f"job {job_id}: {what} {key!r} is over {limit} bytes")
        return f.fh.read(limit + 1)[:limit]
