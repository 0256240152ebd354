"""FaceStitch exchange protocol: documents, errors, rational time and the exchange
folder lifecycle. Imports only the standard library and msgpack, so an editor's
workstation without torch can use it."""

__version__ = "0.1.0"

from fsexchange.errors import ERROR_CODES, FaceStitchError  # noqa: F401
