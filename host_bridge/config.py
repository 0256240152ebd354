"""The bridge's settings on the editor's workstation, read once per menu action.

``bridge.json`` (see :func:`config_path`; ``FACESTITCH_BRIDGE_CONFIG`` overrides the
location)::

    {"exchange": "/Volumes/NAS/facestitch",      # required (or FACESTITCH_EXCHANGE)
     "python_path": ["/opt/facestitch", "..."],  # read by the menu-script shims only
     "handles": 8, "kind": "stitch", "selection": "playhead", "opacity": 100,
     "track_locally": true, "edit": "age=-4", "edits": ["age", "smile", "pose"],
     "refine": true, "options": {"profile": "official"}, "ui": "auto",
     "draft_edit": "age=-8:8:5", "draft_wait": 300,
     "panel_python": "/opt/facestitch/.venv/bin/python"}

``draft_edit`` is what the "FaceStitch Preview Edit" dialog offers (a sweep or
edits); ``draft_wait`` how many seconds that action waits for the draft before
leaving it to "FaceStitch Import Results". ``panel_python`` is the Python that
runs the job panel for "FaceStitch Open Panel" (one with the ``panel`` extra).

``refine`` (default true) runs the temporal refinement in stitch jobs; the send
dialog's edit spec can override it per shot (``age=-4; no-refine``).

Unknown keys are kept (a newer bridge's settings survive); wrong types fail with the
key named.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsexchange.errors import HostError

__all__ = ["BridgeConfig", "config_path"]

_KINDS = ("stitch", "align-preview")


def config_path() -> Path:
    """``%APPDATA%\\FaceStitch\\bridge.json`` on Windows, else
    ``$XDG_CONFIG_HOME/facestitch/bridge.json`` (``~/.config`` by default, macOS
    included). The menu-script shims compute the same path."""
    if os.environ.get("FACESTITCH_BRIDGE_CONFIG"):
        return Path(os.environ["FACESTITCH_BRIDGE_CONFIG"])
    if os.name == "nt":
        return Path(os.environ.get("APPDATA", "")) / "FaceStitch" / "bridge.json"
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "facestitch" / "bridge.json"


@dataclass(frozen=True)
class BridgeConfig:
    exchange: Path | None = None
    # frames each side (docs/hosts.md "Round-trip conventions": handles for re-trims)
    handles: int = 8
    kind: str = "stitch"
    selection: str = "playhead"  # playhead | flagged[:Color] | color:Name
    opacity: float = 100.0
    track_locally: bool = True
    edit: str = ""  # default edit spec offered in the dialog, e.g. "age=-4"
    edits: tuple[str, ...] = ()  # names to offer when the engine's list is not here
    refine: bool = True  # temporal refinement in stitch jobs (options.refine.enabled)
    options: dict[str, Any] = field(default_factory=dict)  # Job.options
    python_path: tuple[str, ...] = ()
    ui: str = "auto"  # auto | fusion | tk | console
    draft_edit: str = ""  # default edit or sweep of the Preview Edit dialog
    draft_wait: float = 300.0  # seconds Preview Edit waits for its draft
    panel_python: str = ""  # the Python "Open Panel" runs the panel with
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "bridge.json"
                  ) -> "BridgeConfig":
        def get(key: str, kinds: Any, default: Any) -> Any:
            if data.get(key) is None:
                return default
            value = data[key]
            kinds = kinds if isinstance(kinds, tuple) else (kinds,)
            if not isinstance(value, kinds) or (isinstance(value, bool)
                                                and bool not in kinds):
                raise HostError(f"{source}: '{key}' has the wrong type "
                                f"({type(value).__name__})")
            return value

        exchange = get("exchange", str, None)
        kind = get("kind", str, "stitch")
        if kind not in _KINDS:
            raise HostError(f"{source}: 'kind' must be one of {', '.join(_KINDS)}")
        handles = get("handles", int, 8)
        if handles < 0:
            raise HostError(f"{source}: 'handles' must be >= 0")
        known = {"exchange", "handles", "kind", "selection", "opacity", "track_locally",
                 "edit", "edits", "refine", "options", "python_path", "ui",
                 "draft_edit", "draft_wait", "panel_python"}
        draft_wait = float(get("draft_wait", (int, float), 300.0))
        if draft_wait < 0:
            raise HostError(f"{source}: 'draft_wait' must be >= 0")
        return cls(
            exchange=Path(exchange).expanduser() if exchange else None, handles=handles,
            kind=kind, selection=get("selection", str, "playhead"),
            opacity=float(get("opacity", (int, float), 100.0)),
            track_locally=get("track_locally", bool, True), edit=get("edit", str, ""),
            edits=tuple(str(e) for e in get("edits", list, [])),
            refine=get("refine", bool, True),
            options=dict(get("options", dict, {})),
            python_path=tuple(str(p) for p in get("python_path", list, [])),
            ui=get("ui", str, "auto"), draft_edit=get("draft_edit", str, ""),
            draft_wait=draft_wait, panel_python=get("panel_python", str, ""),
            extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> "BridgeConfig":
        """Read ``bridge.json`` (a missing file gives the defaults); then
        ``FACESTITCH_EXCHANGE`` overrides the exchange folder."""
        p = Path(path) if path else config_path()
        data: dict[str, Any] = {}
        if p.is_file():
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise HostError(f"{p} is not valid JSON: {exc}") from None
            if not isinstance(data, dict):
                raise HostError(f"{p} must hold a JSON object")
        cfg = cls.from_dict(data, str(p))
        if os.environ.get("FACESTITCH_EXCHANGE"):
            from dataclasses import replace

            cfg = replace(cfg, exchange=Path(os.environ["FACESTITCH_EXCHANGE"]))
        return cfg

    def require_exchange(self) -> Path:
        if self.exchange is None:
            raise HostError(f"No exchange folder is configured: set \"exchange\" in "
                            f"{config_path()} (or FACESTITCH_EXCHANGE) to the folder "
                            "the engine watches.")
        return self.exchange
