"""DaVinci Resolve side of the bridge (docs/hosts.md): connect, read a shot, export
by rendering where the media cannot be read, and place results back.

Every call into Resolve goes through code that expects the measured quirks: None
returns, ``hasattr`` always True (capabilities are checked with ``name in dir(obj)``),
absolute timeline frames, silently dropped appends (placements are read back).
Torch- and numpy-free.
"""

from host_bridge.resolve.connect import (Edition, ResolveSession, find_resolve,
                                         open_session)
from host_bridge.resolve.place import Placement, ResultMedia, place_result
from host_bridge.resolve.render import render_range
from host_bridge.resolve.shot import Shot, pick_items, read_shot, resolve_rate

__all__ = ["Edition", "ResolveSession", "find_resolve", "open_session", "Shot",
           "pick_items", "read_shot", "resolve_rate", "ResultMedia", "Placement",
           "place_result", "render_range"]
