"""The watched-folder engine: wake on new jobs (``watch``), claim and run them in
worker processes (``worker``), and run one claimed job to its published result
with leases, progress and cancellation (``runner``).

May import ``fsexchange``, ``engine.devices`` and ``engine.stages.pipeline`` (and
the stage contract); imports no torch itself, so an engine starts without it.
"""
