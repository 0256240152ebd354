"""Models as data: the model store and its licences (``store``), edit directions
(``directions``), directions computed from text prompts (``styleclip``), the
networks a job uses (``modelset``), and the checkpoint
readers, one per file format (``formats``) behind one front door
(``checkpoints``). Nothing here executes code stored in a model file.

May import ``fsexchange``, ``engine.nets``, ``engine.media`` and
``engine.devices``.
"""
