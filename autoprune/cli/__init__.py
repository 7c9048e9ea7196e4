"""The ``autoprune`` command line: typed configs (``config``) and one module per command (``commands``)."""
from autoprune.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
