"""One module per CLI sub-command, each with ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args)``."""

COMMANDS = ["evaluate", "prune", "train", "progressive", "search", "apply", "compare", "export"]
