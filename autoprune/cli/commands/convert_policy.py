"""``autoprune convert-policy OLD NEW``: rewrite an old (Stable-Baselines3) policy.zip in the current format."""
from __future__ import annotations

NAME = "convert-policy"
HELP = ("Convert a policy.zip in the old format (a Stable-Baselines3 zip) into the current one, which holds no "
        "pickles. Reading the old file unpickles it, which can run any code it carries: only for files you trust.")


def add_arguments(parser) -> None:
    parser.add_argument("old", help="old-format policy.zip (trusted: it is unpickled)")
    parser.add_argument("new", help="file to write (must not exist)")


def run(args) -> None:
    from autoprune.agents.rl.legacy import convert_policy

    net = convert_policy(args.old, args.new)
    sizes = " -> ".join(str(layer.in_features) for layer in net.layers) + f" -> {net.layers[-1].out_features}"
    print(f"wrote {args.new}: actor {sizes}; it reads without unpickling anything")
