"""Atomic file publication (Maildir discipline): write a temporary sibling, fsync,
rename over the target, fsync the directory. Readers never see a partial file."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from itertools import count
from pathlib import Path

__all__ = ["atomic_write_bytes", "fsync_dir", "unique_name", "sha256_file",
           "publish_once"]

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


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (a temporary file in the same
    folder, then ``os.replace``)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{unique_name()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
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
