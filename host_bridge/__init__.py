"""FaceStitch host bridge: the editor side (CLI, Resolve scripts, OTIO).

Torch-free by contract: a test imports every module here with torch made
unimportable.
"""
