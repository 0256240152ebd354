"""FaceStitch exchange protocol: what the bridge and the engine must agree on.

Versioned documents (``documents``), the one typed error hierarchy (``errors``),
the exchange folder's lifecycle (``exchange``, ``client``), path confinement
(``paths``), rational timecode (``timecode``), the job options and their ranges
(``options``), the text grammars users type (``grammar``) and media probing
(``media``, which needs PyAV when a probe runs).

Imports only the standard library and msgpack (and PyAV inside ``media.probe``),
never ``engine`` or ``host_bridge``, so an editor's workstation without torch can
use it."""

__version__ = "0.1.0"

from fsexchange.errors import ERROR_CODES, FaceStitchError  # noqa: F401
