"""Checkpoint readers, one module per file format; the dispatch by sniffed format
is :mod:`engine.models.checkpoints`. Weights are data, never code: nothing here
executes code stored in a file. May import torch, ``fsexchange`` and
``engine.nets``."""
