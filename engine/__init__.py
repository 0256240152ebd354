"""FaceStitch engine: the GPU-side worker that runs jobs from the exchange folder.

Importing ``engine`` never imports torch or compiles anything; modules that need
torch import it themselves.
"""
