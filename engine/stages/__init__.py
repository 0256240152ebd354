"""The pipeline's stages, one module per STIT stage (``track``, ``align``,
``invert``, ``pti``, ``edit``, ``refine`` (VideoEditGAN's temporal
refinement), ``stitch_tune``, ``paste``, ``report``; ``render``
for ``--no-stitch``; ``draft``, the same stages on a draft's few frames, and
``sweep``, a draft's strengths), the stage contract (``contract``), the files each
stage leaves (``outputs``), the pipeline definition and its loop (``pipeline``), and
what several stages share (``crops``, ``mask``, ``batching``).

May import ``fsexchange`` and the engine's lower layers (``nets``, ``media``,
``models``, ``faces``, ``quality``, ``devices``); never ``service`` or
``commands``. Stage modules import torch only inside ``run``.
"""
