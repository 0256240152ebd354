"""The engine's commands, run in a child process when the engine is installed next
to the bridge.

The bridge never imports the engine: torch, the networks and their memory stay out
of the editor's process (Resolve's Python may not even be able to import them).
When this machine also has the engine (``pip install 'facestitch[engine]'``), the
bridge can still use it for two conveniences, through ``facestitch`` in a child
process that prints JSON: listing and tracking the faces of a shot before it is
sent (``facestitch faces``), and the names of the installed edits
(``facestitch edits --json``). Without the engine both are skipped and the engine
machine decides.

Which Python runs the child: ``$FACESTITCH_ENGINE_PYTHON`` when set (``off``: never
use a local engine), else this process's interpreter when the ``engine`` package
is importable from it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from fsexchange.errors import HostError, error_from_dict

__all__ = ["ENGINE_PYTHON_ENV", "engine_python", "run_engine_command",
           "installed_edit_names"]

log = logging.getLogger(__name__)

ENGINE_PYTHON_ENV = "FACESTITCH_ENGINE_PYTHON"


def _engine_root() -> Path | None:
    """The folder holding the ``engine`` package, if this Python can import it."""
    try:
        spec = importlib.util.find_spec("engine")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).parent


#: what the engine's face and edit commands need besides the ``engine`` package
#: itself (the ``engine`` extra); a base install of the bridge has none of them.
_ENGINE_NEEDS = ("numpy", "cv2", "av", "dlib")


def _engine_installed() -> bool:
    if _engine_root() is None:
        return False
    try:
        return all(importlib.util.find_spec(m) is not None for m in _ENGINE_NEEDS)
    except (ImportError, ValueError):
        return False


def engine_python() -> str | None:
    """The interpreter that can run the engine's commands here, or None."""
    explicit = os.environ.get(ENGINE_PYTHON_ENV, "").strip()
    if explicit.lower() == "off":
        return None
    if explicit:
        return explicit
    exe = Path(sys.executable or "")
    # Inside an editor, sys.executable can be the editor itself, not a Python.
    if not exe.name.lower().startswith("python") or not _engine_installed():
        return None
    return str(exe)


def run_engine_command(args: Sequence[str], *, timeout: float = 600.0
                       ) -> dict[str, Any] | None:
    """Run ``facestitch ARGS...`` with the engine's Python; its JSON answer.

    Returns None when no engine is installed here (or it cannot start).

    Raises:
        FaceStitchError: the command failed with one of ours (the same code).
        HostError: it answered something that is not the JSON it promises.
    """
    python = engine_python()
    if python is None:
        return None
    env = dict(os.environ)
    root = _engine_root()
    if root is not None:  # the same checkout / install as this process
        env["PYTHONPATH"] = os.pathsep.join(
            [str(root)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    cmd = [python, "-m", "host_bridge.cli", *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("cannot run the engine here (%s); the engine machine decides", exc)
        return None
    try:
        data = json.loads(out.stdout) if out.stdout.strip() else None
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        raise error_from_dict(data["error"])
    if out.returncode != 0 or not isinstance(data, dict):
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise HostError(f"'facestitch {args[0]}' failed here (exit {out.returncode}): "
                        f"{tail}")
    return data




def installed_edit_names(profile: str = "auto") -> tuple[str, ...] | None:
    """The edits installed for ``profile`` on this machine's engine, or None when
    no engine is installed here (the engine machine will check)."""
    data = run_engine_command(["edits", "--json", "--profile", profile])
    if data is None:
        return None
    return tuple(sorted(str(e["name"]) for e in data.get("edits", [])))
