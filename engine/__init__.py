"""FaceStitch engine: the GPU-side worker that runs jobs from the exchange folder.

Layers, bottom-up (each package imports only from those below it and from the
protocol package ``fsexchange``; ``tests/test_import_graph.py`` checks it):

- ``nets``: the networks in our own code (StyleGAN2, e4e, LPIPS, BiSeNet, ops);
- ``devices`` (module): device and training-precision resolution;
- ``media``: frame-accurate reading and writing of movies, sequences and images;
- ``models``: the model store, edit directions, checkpoint readers by format;
- ``faces`` (module): face detection and landmark backends;
- ``quality``: temporal metrics, optical flow, identity embeddings, charts;
- ``stages``: one module per pipeline stage, the stage contract, their files, and
  the pipeline definition with the loop that runs it;
- ``service``: the watched-folder engine (watch, worker processes, job runner);
- ``commands``: the ``facestitch`` subcommands that need the engine.

Importing ``engine`` never imports torch or compiles anything; modules that need
torch import it themselves.
"""
