"""FaceStitch host bridge: the editor side (the ``facestitch`` CLI, the Resolve
round trip, the OpenFX build, OTIO export).

May import ``fsexchange`` only, never ``engine``: it runs in an editor's Python,
which may have neither torch nor numpy. When an engine is installed on the same
machine, the bridge uses it through a child process (``engine_cli``). Tests import
every module here with ``engine``, torch, numpy, OpenCV and PyAV made unimportable.
"""
