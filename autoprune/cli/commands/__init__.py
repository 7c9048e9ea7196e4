"""One module per CLI sub-command, each with ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args)``."""

COMMANDS = ["evaluate", "prune", "train", "progressive", "search", "apply", "compare", "export", "convert-policy"]
# the commands that train with DDP under ``torchrun --nproc_per_node K -m autoprune.cli ...`` (rank 0 writes)
DATA_PARALLEL = ["train", "progressive", "compare"]
