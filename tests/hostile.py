"""Bad entries for the hostile-exchange tests (tests/test_hostile_*.py): every kind
of thing a broken or hostile bridge, a NAS or an unlucky user can leave where
FaceStitch expects a file or a folder. Real FIFOs, sockets, symlinks, folders and
permission bits; no mocks.

Permissions: root ignores permission bits, so when the tests run as root the
engine and CLI children drop every capability first (:func:`without_root_powers`,
a ``preexec_fn``): uid 0 without ``CAP_DAC_OVERRIDE`` obeys the bits like anyone.
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Callable

import msgpack

#: Kinds of entry where a regular file is expected.
FILE_KINDS = ("fifo", "socket", "folder", "symlink_in", "symlink_out", "dangling",
              "unreadable", "empty", "truncated", "oversized", "nested", "nan")
#: Kinds of entry where a folder is expected.
FOLDER_KINDS = ("file", "fifo", "socket", "symlink_in", "symlink_out")

_sockets: list[socket.socket] = []  # kept open while the test runs


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_socket(path: Path) -> None:
    """A listening AF_UNIX socket file (connect() works; open() gives ENXIO)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = os.getcwd()
    os.chdir(path.parent)  # AF_UNIX paths are limited to ~108 bytes
    try:
        s.bind(path.name)
    finally:
        os.chdir(cwd)
    s.listen(1)
    _sockets.append(s)


def close_sockets() -> None:
    while _sockets:
        _sockets.pop().close()


def nested(depth: int = 5000) -> bytes:
    """msgpack of ``depth`` nested one-element lists: deeper than any reader takes."""
    return b"\x91" * depth + b"\xc0"


def bad_file(path: Path, kind: str, *, good: bytes, outside: Path,
             limit: int, nan_doc: bytes | None = None) -> None:
    """Put a bad entry of ``kind`` (one of :data:`FILE_KINDS`) at ``path``.

    Args:
        good: what a valid file there would hold (truncated: its first half).
        outside: a regular file outside the exchange (symlink_out's target).
        limit: the document's size limit (oversized: one byte more).
        nan_doc: a valid-looking document holding NaN (``nan``), else NaN bytes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        make_fifo(path)
    elif kind == "socket":
        make_socket(path)
    elif kind == "folder":
        path.mkdir()
        (path / "inside.txt").write_text("a folder, not a file")
    elif kind == "symlink_in":
        real = path.with_name(f"real-{path.name}")
        real.write_bytes(good)
        os.symlink(real.name, path)
    elif kind == "symlink_out":
        os.symlink(outside, path)
    elif kind == "dangling":
        os.symlink(path.with_name("nothing-here"), path)
    elif kind == "unreadable":
        path.write_bytes(good)
        path.chmod(0)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: max(1, len(good) // 2)])
    elif kind == "oversized":
        path.write_bytes(b"\0" * (limit + 1))
    elif kind == "nested":
        path.write_bytes(nested())
    elif kind == "nan":
        path.write_bytes(nan_doc if nan_doc is not None else msgpack.packb(math.nan))
    else:
        raise ValueError(kind)


def bad_folder(path: Path, kind: str, *, outside_dir: Path) -> None:
    """Put a bad entry of ``kind`` (one of :data:`FOLDER_KINDS`) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "file":
        path.write_text("a file, not a folder")
    elif kind == "fifo":
        make_fifo(path)
    elif kind == "socket":
        make_socket(path)
    elif kind == "symlink_in":
        real = path.with_name(f"real-{path.name}")
        real.mkdir()
        os.symlink(real.name, path)
    elif kind == "symlink_out":
        os.symlink(outside_dir, path)
    else:
        raise ValueError(kind)


def restore_permissions(root: Path) -> None:
    """Make everything under ``root`` removable again (chmod 000 entries)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            try:
                if not p.is_symlink():
                    p.chmod(0o755 if p.is_dir() else 0o644)
            except OSError:
                pass
    try:
        root.chmod(0o755)
    except OSError:
        pass


# --- running without root's powers --------------------------------------------

_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_PR_CAPBSET_DROP = 24
_CAP_SETPCAP = 8


def without_root_powers() -> None:
    """``preexec_fn``: drop every capability (only when running as root), so that
    permission bits bind this process and what it executes as any user's.

    exec() gives uid 0 its bounding set back as permitted capabilities, so the
    bounding set is emptied first (CAP_SETPCAP last: it is what allows it)."""
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    for cap in [c for c in range(64) if c != _CAP_SETPCAP] + [_CAP_SETPCAP]:
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the last cap
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def permissions_bind() -> bool:
    """Whether a child started with :func:`without_root_powers` obeys mode 000
    (false only on exotic systems; the tests that need it skip then)."""
    import subprocess

    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f".fs-perm-{os.getpid()}"
    probe.write_text("x")
    probe.chmod(0)
    try:
        rc = subprocess.run([sys.executable, "-c", f"open({str(probe)!r}).read()"],
                            preexec_fn=without_root_powers,
                            capture_output=True).returncode
        return rc != 0
    finally:
        probe.chmod(0o600)
        probe.unlink()


# --- engines ------------------------------------------------------------------


def worker_pids(output: str) -> list[int]:
    """Worker process ids an engine logged (``worker host:PID:hex on ...``)."""
    return [int(pid) for pid in re.findall(
        r"engine\.service\.worker: worker \S+?:(\d+):[0-9a-f]+ on ", output)]


def ended(pid: int) -> bool:
    """Whether a process has ended (a zombie not yet reaped counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return Path("/proc/self").exists()
    return text.rsplit(")", 1)[1].split()[0] == "Z"


def age(path: Path, seconds: float) -> None:
    """Make ``path`` (not following a link) look ``seconds`` old: fake time with
    ``os.utime`` instead of sleeping."""
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


def is_fifo(path: Path) -> bool:
    return stat.S_ISFIFO(os.lstat(path).st_mode)


def call_with_timeout(fn: Callable[[], object], seconds: float = 10.0) -> object:
    """Run ``fn`` in a daemon thread; fail (instead of hanging the suite) if it
    blocks, as an open() of a FIFO would."""
    import threading

    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise AssertionError(f"blocked for more than {seconds} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")
