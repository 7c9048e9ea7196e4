"""``autoprune`` command line: thin parsing around library calls; user errors print as one line."""
from __future__ import annotations

import argparse
import importlib
import sys

from autoprune.cli.commands import COMMANDS, DATA_PARALLEL
from autoprune.errors import AutopruneError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoprune", description="Learn channel-pruning budgets and prune CNNs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        mod = importlib.import_module(f"autoprune.cli.commands.{name.replace('-', '_')}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)  # flags state their own defaults
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _join_torchrun(args.command)
        args._run(args)
    except AutopruneError as exc:
        print(f"autoprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autoprune {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


def _join_torchrun(command: str) -> None:
    """Under ``torchrun`` (WORLD_SIZE > 1): data-parallel commands join the process group, others refuse."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if command not in DATA_PARALLEL:
        raise AutopruneError(f"'{command}' does not train data-parallel: run it without torchrun "
                             f"(searches scale with --workers; torchrun is for {', '.join(DATA_PARALLEL)})")
    from autoprune.train.distributed import init_from_env

    init_from_env()


if __name__ == "__main__":
    sys.exit(main())
