"""Path confinement: every path a document names stays inside the job folder (or
the exchange root) or inside a media root the engine was explicitly allowed to read.

Relative paths resolve against ``base``. ``..`` components are refused outright;
absolute paths must lie inside an allowed root; symlinks are resolved and the target
must still be inside (a link pointing out of the exchange is an escape).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterable

from fsexchange.errors import PathEscapeError

__all__ = ["confine", "is_within"]


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
