"""The ``facestitch`` subcommands that run engine code (``engine``, ``demo``,
``preview``, ``faces``, ``edits``, ``models``, ``metrics``); each module has
``main(argv) -> int`` and is imported only when its command runs (the table is
``host_bridge.cli.COMMANDS``); ``args`` holds the argparse types several of them
share. They may import anything in ``engine`` and ``fsexchange``; nothing
outside this package imports them."""
