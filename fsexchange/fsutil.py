"""Atomic file publication (Maildir discipline): write a temporary sibling, fsync,
rename over the target, fsync the directory. Readers never see a partial file.

And safe reading: anything in a shared exchange folder may be hostile or broken,
so a file is opened only after checking what it is (:func:`open_regular`): a named
pipe would block its reader forever, a socket or a device is never data, and a
symbolic link may point anywhere. Writes that hit a full disk or a permission
problem raise the typed errors of :mod:`fsexchange.errors` naming the folder.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import time
from itertools import count
from pathlib import Path
from typing import BinaryIO

from fsexchange.errors import NotAFolder, NotRegularFile, io_error

__all__ = ["atomic_write_bytes", "fsync_dir", "unique_name", "sha256_file",
           "describe_mode", "open_regular", "read_regular", "check_regular",
           "check_folder", "publish_once", "write_synced"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def describe_mode(mode: int) -> str:
    """What an ``st_mode`` is, in words (``"a named pipe (FIFO)"``)."""
    for test, words in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"),
                        (stat.S_ISLNK, "a symbolic link"),
                        (stat.S_ISFIFO, "a named pipe (FIFO)"),
                        (stat.S_ISSOCK, "a socket"),
                        (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device")):
        if test(mode):
            return words
    return "an unknown kind of file"


def _not_regular(path: Path, what: str, field: str | None) -> NotRegularFile:
    return NotRegularFile(f"{path.name} is {what}, not a regular file; it was not "
                          f"opened (in {path.parent})", field=field)


def open_regular(path: str | os.PathLike[str], *, follow_symlinks: bool = False,
                 field: str | None = None) -> BinaryIO:
    """Open a regular file for reading, never blocking on what it turns out to be.

    The file is opened non-blocking (a named pipe without a writer then opens at
    once instead of waiting forever) and, unless ``follow_symlinks``, without
    following a symbolic link; then ``fstat`` on the open descriptor decides, so a
    swap between a check and the open cannot fool it.

    Raises:
        FileNotFoundError: nothing there.
        NotRegularFile: a pipe, socket, device, folder, or (``follow_symlinks``
            False) a symbolic link.
        PermissionError: the usual.
    """
    p = Path(path)
    flags = os.O_RDONLY | _NONBLOCK | getattr(os, "O_BINARY", 0)
    if not follow_symlinks:
        flags |= _NOFOLLOW
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        if exc.errno == getattr(os, "ELOOP", 40) or (
                not follow_symlinks and os.path.islink(p)):
            raise _not_regular(p, "a symbolic link", field) from None
        if exc.errno == getattr(os, "ENXIO", 6):  # a socket, a pipe's far end
            try:
                what = describe_mode(os.lstat(p).st_mode)
            except OSError:
                what = "not openable"
            raise _not_regular(p, what, field) from None
        if isinstance(exc, IsADirectoryError):
            raise _not_regular(p, "a folder", field) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(p, describe_mode(mode), field)
        if _NONBLOCK:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike[str], limit: int | None = None, *,
                 follow_symlinks: bool = False, field: str | None = None) -> bytes:
    """The bytes of a regular file (at most ``limit``; :func:`open_regular`)."""
    with open_regular(path, follow_symlinks=follow_symlinks, field=field) as fh:
        return fh.read() if limit is None else fh.read(limit)


def check_regular(path: str | os.PathLike[str], *, follow_symlinks: bool = True,
                  field: str | None = None) -> os.stat_result:
    """``stat`` a path that must be a regular file (before a library opens it by
    name: PyAV, OpenCV). Raises like :func:`open_regular`."""
    p = Path(path)
    st = os.stat(p) if follow_symlinks else os.lstat(p)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(p, describe_mode(st.st_mode), field)
    return st


def check_folder(path: str | os.PathLike[str], *, follow_symlinks: bool = False,
                 field: str | None = None) -> os.stat_result:
    """``stat`` a path that must be a folder (by default: not a symbolic link).

    Raises:
        FileNotFoundError: nothing there.
        NotAFolder: anything else.
    """
    p = Path(path)
    st = os.stat(p) if follow_symlinks else os.lstat(p)
    if not stat.S_ISDIR(st.st_mode):
        raise NotAFolder(f"{p.name} is {describe_mode(st.st_mode)}, not a folder "
                         f"(in {p.parent})", field=field)
    return st

_counter = count()


def unique_name(prefix: str = "") -> str:
    """A name unique across hosts and processes: time, pid, counter, host."""
    host = socket.gethostname().replace("/", "_").replace(".", "_")[:32] or "host"
    return f"{prefix}{time.time_ns()}.{os.getpid()}_{next(_counter)}.{host}"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # Windows / some network shares cannot open directories
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_synced(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a new file at ``path`` and fsync it before returning (the
    first half of every atomic publish: write, sync, then rename or link)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (a temporary file in the same
    folder, then ``os.replace``).

    Raises:
        NoSpace: the disk, a quota or the file size limit is full (the folder is
            named; the target is left as it was).
        FileNotFoundError: the folder is gone (a job folder that moved away).
    """
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{unique_name()}.tmp")
    try:
        write_synced(tmp, data)
        os.replace(tmp, p)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        err = io_error(exc, p.parent) if isinstance(exc, OSError) else None
        if err is not None and err.code == "io.no_space":
            raise err from exc
        raise
    fsync_dir(p.parent)


def publish_once(path: str | os.PathLike[str], data: bytes) -> bytes:
    """Publish ``data`` at ``path`` unless something is there already; return what
    ``path`` holds afterwards. Of several racing writers (on several machines) the
    first wins and everyone reads its bytes: a temporary file, then ``os.link``,
    which never replaces an existing file (atomic on POSIX and NFS)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{unique_name()}.tmp")
    try:
        write_synced(tmp, data)
        try:
            os.link(tmp, p)
            fsync_dir(p.parent)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return p.read_bytes()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
