"""Finding the ``resolve`` object and opening a session on the current timeline.

Lookup order (docs/hosts.md "Connecting to Resolve", after OpenRoto, AYON and
AutoSubs): the script's own
``resolve`` global, then ``app``/``fusion``/``fu`` ``.GetResolve()``, then
``bmd.scriptapp("Resolve")``, then the external ``DaVinciResolveScript`` module
(Studio only, "External scripting" set to Local or Network). A bare ``Fusion()``
call is never made: it can start a headless instance.
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from fsexchange.errors import HostError

__all__ = ["Edition", "ResolveSession", "find_resolve", "open_session", "has_api",
           "constant", "script_api_dirs"]

log = logging.getLogger(__name__)


def has_api(obj: Any, name: str) -> bool:
    """Whether a Resolve object implements ``name``. ``hasattr`` is always True on
    Resolve objects (unknown names are callables returning None), ``dir`` is not."""
    try:
        return obj is not None and name in dir(obj)
    except Exception:  # noqa: BLE001 - a dead proxy raises arbitrary types
        return False


def constant(resolve: Any, name: str, default: int) -> int:
    """A ``resolve.NAME`` integer constant, or ``default`` where this build lacks it
    (the proxy then hands back a callable, not an int)."""
    value = getattr(resolve, name, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _is_resolve(obj: Any) -> bool:
    if obj is None:
        return False
    try:
        name = obj.GetProductName()
    except Exception:  # noqa: BLE001 - any object may be passed; proxies raise anything
        return False
    return isinstance(name, str) and name.startswith("DaVinci Resolve")


def script_api_dirs() -> tuple[Path, Path]:
    """Default ``RESOLVE_SCRIPT_API`` and ``RESOLVE_SCRIPT_LIB`` for this OS
    (docs/hosts.md, "Connecting to Resolve")."""
    system = platform.system()
    if system == "Darwin":
        return (Path("/Library/Application Support/Blackmagic Design/DaVinci Resolve/"
                     "Developer/Scripting"),
                Path("/Applications/DaVinci Resolve/DaVinci Resolve.app/Contents/"
                     "Libraries/Fusion/fusionscript.so"))
    if system == "Windows":
        pd = os.environ.get("PROGRAMDATA", r"C:\ProgramData")
        return (Path(pd) / "Blackmagic Design" / "DaVinci Resolve" / "Support" /
                "Developer" / "Scripting",
                Path(r"C:\Program Files\Blackmagic Design\DaVinci Resolve"
                     r"\fusionscript.dll"))
    base = Path("/opt/resolve")
    if not base.exists() and Path("/home/resolve").exists():
        base = Path("/home/resolve")  # ISO installs
    return (base / "Developer" / "Scripting",
            base / "libs" / "Fusion" / "fusionscript.so")


def _external_scriptapp() -> Any:
    """``DaVinciResolveScript.scriptapp("Resolve")`` from another process, setting
    the documented variables first when the user has not."""
    api, lib = script_api_dirs()
    os.environ.setdefault("RESOLVE_SCRIPT_API", str(api))
    os.environ.setdefault("RESOLVE_SCRIPT_LIB", str(lib))
    modules = str(Path(os.environ["RESOLVE_SCRIPT_API"]) / "Modules")
    if modules not in sys.path:
        sys.path.append(modules)
    try:
        module = importlib.import_module("DaVinciResolveScript")
    except ImportError:
        return None
    try:
        return module.scriptapp("Resolve")
    except Exception:  # noqa: BLE001 - fusionscript raises odd types without Resolve
        return None


def find_resolve(namespace: Mapping[str, Any] | None = None, *,
                 external: bool = True) -> Any:
    """Return the running Resolve's scripting object.

    Args:
        namespace: the calling script's ``globals()`` (menu scripts get ``resolve``,
            ``fusion``/``fu``, ``app`` and ``bmd`` injected there).
        external: fall back to ``DaVinciResolveScript`` (another process).

    Raises:
        HostError: Resolve was not found, with what to check.
    """
    ns = dict(namespace or {})
    if _is_resolve(ns.get("resolve")):
        return ns["resolve"]
    for key in ("app", "fusion", "fu"):
        obj = ns.get(key)
        if obj is None:
            continue
        try:
            found = obj.GetResolve()
        except Exception:  # noqa: BLE001 - injected scripting objects raise anything
            found = None
        if _is_resolve(found):
            return found
    bmd = ns.get("bmd")
    if bmd is not None:
        try:
            found = bmd.scriptapp("Resolve")
        except Exception:  # noqa: BLE001 - bmd.scriptapp raises arbitrary types
            found = None
        if _is_resolve(found):
            return found
    if external:
        found = _external_scriptapp()
        if _is_resolve(found):
            return found
    raise HostError(
        "DaVinci Resolve was not found. Run this from Workspace > Scripts inside "
        "Resolve; from another process it needs Resolve Studio running with "
        "Preferences > System > General > 'External scripting using' set to Local "
        "(the free edition refuses external scripts).")


@dataclass(frozen=True)
class Edition:
    """``GetProductName`` / ``GetVersion`` (docs/hosts.md "Studio and the free
    edition")."""

    product: str
    version: tuple[int, ...]

    @property
    def studio(self) -> bool:
        return "Studio" in self.product

    def at_least(self, *version: int) -> bool:
        return self.version[:len(version)] >= tuple(version)

    @classmethod
    def of(cls, resolve: Any) -> "Edition":
        product = resolve.GetProductName() or "DaVinci Resolve"
        raw = resolve.GetVersion() or []
        version = tuple(int(v) for v in raw
                        if isinstance(v, int) and not isinstance(v, bool))
        return cls(str(product), version or (0,))

    def __str__(self) -> str:
        return f"{self.product} {'.'.join(map(str, self.version))}"


@dataclass
class ResolveSession:
    """The objects a bridge action works on: the current project and timeline."""

    resolve: Any
    project: Any
    timeline: Any
    media_pool: Any
    edition: Edition

    def open_page(self, page: str) -> None:
        """Switch page where needed (timeline ``DeleteClips`` needs the Edit page)."""
        current = self.resolve.GetCurrentPage() if has_api(self.resolve,
                                                           "GetCurrentPage") else None
        if current != page:
            self.resolve.OpenPage(page)


def open_session(resolve: Any) -> ResolveSession:
    """Current project and timeline, or a HostError saying what to open."""
    manager = resolve.GetProjectManager()
    project = manager.GetCurrentProject() if manager is not None else None
    if project is None:
        raise HostError("No project is open in Resolve: open the project first.")
    timeline = project.GetCurrentTimeline()
    if timeline is None:
        raise HostError("No timeline is open: open the timeline holding the shot.")
    pool = project.GetMediaPool()
    if pool is None:
        raise HostError("Resolve returned no media pool for this project.")
    return ResolveSession(resolve, project, timeline, pool, Edition.of(resolve))
