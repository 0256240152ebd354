"""Path confinement: every path a document names stays inside the job folder (or
the exchange root) or inside a media root the engine was explicitly allowed to read.

Relative paths resolve against ``base``. ``..`` components are refused outright;
absolute paths must lie inside an allowed root; symlinks are resolved and the target
must still be inside (a link pointing out of the exchange is an escape).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterable

from fsexchange.errors import PathEscapeError, PathUnusable, io_error
from fsexchange.fsutil import describe_mode, unique_name

__all__ = ["confine", "is_within", "check_output"]


def is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def confine(
    raw: str,
    base: str | os.PathLike[str],
    roots: Iterable[str | os.PathLike[str]] = (),
    *,
    field: str = "path",
) -> Path:
    """Resolve ``raw`` and check it stays inside ``base`` or one of ``roots``.

    Raises:
        PathEscapeError: ``..`` components, a foreign absolute path, or a symlink
            whose target leaves the allowed folders.
    """
    if not raw or "\x00" in raw:
        raise PathEscapeError(f"{field} is empty or contains a NUL byte", field=field)
    parts = PurePosixPath(raw.replace("\\", "/")).parts
    if ".." in parts:
        raise PathEscapeError(f"{field} {raw!r} contains '..'", field=field)
    base_real = Path(os.path.realpath(base))
    allowed = [base_real] + [Path(os.path.realpath(r)) for r in roots]
    p = Path(raw)
    is_abs = p.is_absolute() or PureWindowsPath(raw).is_absolute()
    candidate = p if is_abs else base_real / p
    real = Path(os.path.realpath(candidate))
    for root in allowed:
        if is_within(real, root):
            return real
    if is_abs:
        raise PathEscapeError(
            f"{field} {raw!r} is outside the exchange folder and every allowed media "
            "root; start the engine with --media-root for that folder", field=field)
    raise PathEscapeError(f"{field} {raw!r} resolves outside the job folder "
                          "(a symlink pointing out?)", field=field)


def check_output(path: str | os.PathLike[str], *, folder: bool = False,
                 flag: str = "--out") -> Path:
    """Check, before any long work, that a command can write ``path``.

    A file: its folder exists and is writable, and it is not a folder itself. A
    folder (``folder=True``): it is a folder or can be created (its nearest
    existing parent is a writable folder). Writability is tried, not guessed: a
    probe file is created and removed.

    Raises:
        PathUnusable: a missing parent folder, a file where a folder is needed
            (or the other way round).
        AccessDenied: not writable (permissions, a read-only file system).
    """
    p = Path(path).absolute()
    if folder:
        probe_dir = p
        while not os.path.lexists(probe_dir) and probe_dir.parent != probe_dir:
            probe_dir = probe_dir.parent
    else:
        probe_dir = p.parent
        if os.path.isdir(p):
            raise PathUnusable(f"{flag} {path}: is a folder; give a file name",
                               field=flag)
        if not os.path.lexists(probe_dir):
            raise PathUnusable(f"{flag} {path}: folder {probe_dir} does not exist",
                               field=flag)
    try:
        mode = os.stat(probe_dir).st_mode
    except OSError as exc:
        raise io_error(exc, probe_dir, doing=f"checking {flag}") from None
    if not stat.S_ISDIR(mode):
        what = "it" if probe_dir == p else probe_dir
        raise PathUnusable(f"{flag} {path}: {what} is {describe_mode(mode)}, not a "
                           "folder", field=flag)
    test = probe_dir / f".facestitch-probe-{unique_name()}"
    try:
        test.write_bytes(b"")
        test.unlink()
    except OSError as exc:
        raise io_error(exc, probe_dir, doing=f"writing {flag}") from None
    return p
