"""Start the panel once, detached, and find it again ("FaceStitch Open Panel").

The Resolve menu runs in the editor's Python, which may lack the ``panel`` extra
and must not block on a server. So the panel runs as a detached process of a
Python that has it (``facestitch panel --port 0 --state-file FILE``), which writes
its pid, port, URL and token into a state file in the user's config folder (one
per exchange, mode 0600) while it serves. A later call finds it there, checks it
answers (``/api/health`` with its token: a stale file or a reused pid do not
count) and opens the same URL instead of starting another.

Standard library only: this runs in any bridge Python.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import webbrowser
from pathlib import Path
from typing import Any, Sequence

from fsexchange.errors import HostError

__all__ = ["state_file", "running_panel", "start_panel", "ensure_panel",
           "open_browser", "panel_python"]

_HEALTH_TIMEOUT = 2.0  # seconds one health request may take
_START_TIMEOUT = 30.0  # seconds a starting panel has to answer


def state_file(config_dir: Path, exchange: Path) -> Path:
    """The state file of the panel of ``exchange``: ``panel-<hash>.json`` in
    ``config_dir`` (hash of the exchange's absolute path)."""
    key = hashlib.sha256(str(Path(exchange).absolute()).encode()).hexdigest()[:12]
    return Path(config_dir) / f"panel-{key}.json"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and isinstance(data.get("port"), int) and \
        isinstance(data.get("token"), str) and isinstance(data.get("pid"), int)
    return data if ok else None


def _answers(state: dict[str, Any], exchange: Path) -> bool:
    req = urllib.request.Request(
        f"http://127.0.0.1:{state['port']}/api/health",
        headers={"X-FaceStitch-Token": state["token"]})
    try:
        with urllib.request.urlopen(req, timeout=_HEALTH_TIMEOUT) as resp:
            info = json.loads(resp.read(65536).decode("utf-8"))
    except (OSError, ValueError, urllib.error.URLError):
        return False
    return isinstance(info, dict) and info.get("app") == "facestitch-panel" and \
        info.get("pid") == state["pid"] and \
        info.get("exchange") == str(Path(exchange).absolute())


def running_panel(config_dir: Path, exchange: Path) -> dict[str, Any] | None:
    """The state of the panel serving ``exchange`` when one runs and answers."""
    state = _read(state_file(config_dir, exchange))
    if state is None or not _answers(state, exchange):
        return None
    return state


def _detach_kwargs() -> dict[str, Any]:
    if os.name == "nt":
        flags = getattr(subprocess, "DETACHED_PROCESS", 0x8) | \
            getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200)
        return {"creationflags": flags}
    return {"start_new_session": True}  # not killed with the editor's session


def start_panel(exchange: Path, python: str, config_dir: Path, *,
                python_path: Sequence[str] = (),
                timeout: float = _START_TIMEOUT) -> dict[str, Any]:
    """Start a detached ``facestitch panel`` for ``exchange`` on a free loopback
    port with ``python``; wait until it answers and return its state.

    Args:
        python_path: folders to put on the child's ``PYTHONPATH`` (where this
            FaceStitch and its extras are).

    Raises:
        HostError: it did not start (the reason is the last line it printed:
            the missing ``panel`` extra, an exchange that is not a folder).
    """
    config_dir = Path(config_dir)
    config_dir.mkdir(parents=True, exist_ok=True)
    path = state_file(config_dir, exchange)
    log_path = path.with_suffix(".log")
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[2])  # the folder holding host_bridge
    paths = [*python_path, here, *env.get("PYTHONPATH", "").split(os.pathsep)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    env.pop("FACESTITCH_PANEL_TOKEN", None)  # a fresh token, kept in the state file
    cmd = [python, "-m", "host_bridge.cli", "panel", "--exchange",
           str(Path(exchange).absolute()), "--host", "127.0.0.1", "--port", "0",
           "--state-file", str(path)]
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env,
                                    cwd=str(config_dir), close_fds=True,
                                    **_detach_kwargs())
        except OSError as exc:
            raise HostError(f"cannot start the panel with {python}: "
                            f"{exc.strerror or exc}; set panel_python in "
                            "bridge.json to a Python with FaceStitch's panel "
                            "extra") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _read(path)
        if state is not None and state.get("pid") == proc.pid and \
                _answers(state, exchange):
            return state
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    if proc.poll() is None:
        proc.terminate()
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace")
                 .splitlines() if ln.strip()]
    except OSError:
        lines = []
    last = lines[-1] if lines else "no output"
    raise HostError(f"the panel did not start: {last} (log: {log_path})")


def ensure_panel(exchange: Path, python: str, config_dir: Path, *,
                 python_path: Sequence[str] = ()) -> tuple[dict[str, Any], bool]:
    """The panel of ``exchange``, started if none runs; ``(state, started)``."""
    state = running_panel(config_dir, exchange)
    if state is not None:
        return state, False
    return start_panel(exchange, python, config_dir, python_path=python_path), True


def open_browser(url: str) -> bool:
    """Open ``url`` in the user's browser ($BROWSER is honoured)."""
    try:
        return bool(webbrowser.open(url))
    except webbrowser.Error:
        return False


def panel_python(configured: str = "") -> str:
    """The Python to run the panel with: ``$FACESTITCH_PANEL_PYTHON``, else the
    configured one (``panel_python`` in bridge.json), else this interpreter when
    it is a Python (inside an editor it may be the editor itself).

    Raises:
        HostError: none known.
    """
    for cand in (os.environ.get("FACESTITCH_PANEL_PYTHON", ""), configured):
        if cand.strip():
            return cand.strip()
    exe = Path(sys.executable or "")
    if exe.name.lower().startswith("python"):
        return str(exe)
    raise HostError("No Python to run the panel with: set \"panel_python\" in "
                    "bridge.json to a Python where pip install 'facestitch[panel]' "
                    "was run (python -m host_bridge.resolve_install sets it).")
