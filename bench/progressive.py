"""Progressive train-prune-train against the classic arms, at the same final MACs and epochs.

Protocol (defaults): ResNet-20 from the JPEG-adapted dense checkpoint (``bench.base_models``), a
fixed 10k-image subset of the JPEG CIFAR-10 training split (data split seed 0, 5k held out for
validation), ``--epochs 3`` of training per arm, the full 10k test split for the final number,
final MACs 50% and 30% of the dense model, seeds 0 1 2, L1 criterion, SGD momentum 0.9 + nesterov.

Arms (every one ends at the same MACs and trains the same number of epochs, except scratch-B):

* ``tpf-lowlr``     one-shot uniform prune of the trained model, fine-tune at a constant low lr
* ``tpf-rewind``    same pruned model, retrain with the full cosine lr schedule (Renda et al.)
* ``iterative-kK``  K rounds: prune to target^(r/K), retrain epochs/K with the cosine lr each round
* ``prog-SHAPE``    progressive with each pruning schedule, uniform allocator
* ``prog-cubic-A``  progressive (cubic) with allocator A: layer-stats, global, policy:PATH if present
* ``scratch-E``     the tpf architecture from random init, same epochs (Liu et al. 2019)
* ``scratch-B``     same architecture, epochs / macs-ratio epochs (the compute of dense training)

With a searched allocation per (target, seed) (``--searched``: by default the DDPG searches of
``bench/final_quality.py``, the same held-out split and seed), the arms:

* ``oneshot-searched``         one-shot prune to the searched allocation, LR rewinding (cosine from --lr)
* ``prog-SHAPE-searched``      progressive, every cut heading for the searched shape (trajectory final)
* ``prog-cubic-search``        progressive, a ``search:N`` random search (adaptive BN) at every cut
* ``weight-rewind-searched``   the searched channels, their values rewound to --rewind-checkpoint, LR rewinding
* ``scratch-B-searched``       the searched shape from random init, epochs / macs-ratio epochs, --scratch-lr

``--full`` is the full protocol: the whole training split minus the 2,000 held-out images of the
search, 6 epochs, seeds 0 1, 50% and 30% of MACs, lr 0.01, those arms plus ``tpf-rewind`` (one-shot
uniform + LR rewinding) and ``prog-cubic`` (progressive uniform); results in ``progressive-full.json``.

Each arm reports test accuracy, training cost (sum over steps of batch forward MACs) and wall time.
Results are appended to the JSON file after every arm; rerunning with the same ``--out`` skips the
arms already done.

    python -m bench.progressive --full           # the full protocol (~8 h: 10-14 min per 6-epoch run, 1 thread)
    python -m bench.progressive                  # the first protocol (10k images, 3 epochs; ~1.7 h)
    python -m bench.progressive --quick          # smoke test (~1-2 min)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from autoprune.agents import get_allocator
from autoprune.core.io import load_model
from autoprune.core.problem import PruningProblem
from autoprune.core.prune import prune
from autoprune.core.structure import ModelStructure
from autoprune.models import create_model, model_info
from autoprune.runs import write_json_atomic
from autoprune.train.data import make_bundle
from autoprune.train.evaluator import accuracy
from autoprune.train.progressive import default_trajectory, progressive_train
from autoprune.train.schedules import PruningSchedule, list_schedules
from autoprune.train.training import TrainRecipe, train

from .common import paired_difference

RESULTS = Path(__file__).resolve().parent / "results"
# options that change what an arm measures (the others only choose which arms and seeds run)
_PROTOCOL_KEYS = ("quick", "checkpoint", "data", "train_subset", "val_size", "test_limit", "epochs", "lr",
                  "finetune_lr", "batch_size", "rounds", "prune_every", "final_share", "scratch_lr", "searched",
                  "search_samples", "rewind_checkpoint")
FULL_ARMS = ["tpf-rewind", "oneshot-searched", "prog-cubic-searched", "prog-exponential-searched", "prog-cubic",
             "prog-cubic-search", "weight-rewind-searched", "scratch-B-searched"]
MODEL = "resnet20"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny smoke setting (512 images, 1 epoch, 1 seed, 50%%)")
    p.add_argument("--checkpoint", help="dense checkpoint (default: bench.base_models.finetuned_checkpoint)")
    p.add_argument("--data", default=None, help="dataset spec (default: the shared JPEG CIFAR-10)")
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on a fixed random N test images only")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.3])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lr", type=float, default=0.05, help="peak lr (rewind, iterative, progressive, scratch)")
    p.add_argument("--finetune-lr", type=float, default=0.001, help="constant lr of tpf-lowlr")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3, help="rounds of iterative prune-finetune")
    p.add_argument("--schedules", nargs="+", default=list_schedules())
    p.add_argument("--allocators", nargs="*", default=["layer-stats", "global"],
                   help="extra allocators for progressive-cubic (skipped if not available)")
    p.add_argument("--policy", help="learned policy file: adds progressive-cubic with policy:PATH")
    p.add_argument("--prune-every", type=float, default=0.25, help="epochs between progressive cuts")
    p.add_argument("--final-share", type=float, default=0.25, help="share of training at the final width")
    p.add_argument("--arms", nargs="+", default=None, help="run only arms whose name starts with one of these")
    p.add_argument("--full", action="store_true", help="the full protocol (see the module docstring)")
    p.add_argument("--scratch-lr", type=float, default=None, help="peak lr of the scratch arms (default: --lr)")
    p.add_argument("--searched", default=str(RESULTS / "final-quality" / "allocations"),
                   help="folder of searched allocations, MODEL_tTARGET_searched_sSEED.json")
    p.add_argument("--search-samples", type=int, default=16, help="samples of the search:N allocator per cut")
    p.add_argument("--rewind-checkpoint", default=None,
                   help="weights the weight-rewind arm restarts from (default: the shared checkpoint the dense "
                        "model was adapted from, i.e. one epoch before it)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids thrashing on shared cores)")
    p.add_argument("--report", action="store_true", help="only rewrite the .md from the results JSON (--out)")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default bench/results/progressive[-quick].json)")
    args = p.parse_args(argv)
    if args.full:
        args.train_subset, args.val_size, args.epochs, args.lr = None, 2000, max(args.epochs, 6.0), 0.01
        args.seeds = args.seeds if argv and "--seeds" in argv else [0, 1]
        args.scratch_lr = args.scratch_lr or 0.1
        args.arms = args.arms or FULL_ARMS
    args.scratch_lr = args.scratch_lr or args.lr
    if args.quick:
        args.train_subset, args.val_size, args.test_limit = 512, 500, args.test_limit or 1000
        args.epochs, args.seeds, args.targets = 1.0, args.seeds[:1], args.targets[:1]
        args.schedules, args.rounds = ["cubic", "linear"], 2
    args.out = args.out or RESULTS / ("progressive-quick.json" if args.quick else
                                      "progressive-full.json" if args.full else "progressive.json")
    return args


class Bench:
    def __init__(self, args: argparse.Namespace):
        from bench.base_models import CHECKPOINTS, DATA, finetuned_checkpoint

        self.args = args
        self.data_spec = args.data or DATA
        if args.checkpoint:
            self.checkpoint = Path(args.checkpoint)
        elif args.quick:
            self.checkpoint = CHECKPOINTS[MODEL]  # not JPEG-adapted, but needs no build
        else:
            self.checkpoint = finetuned_checkpoint(MODEL)
        self.rewind_checkpoint = Path(args.rewind_checkpoint) if args.rewind_checkpoint else CHECKPOINTS[MODEL]
        info = model_info(MODEL)
        # the data split (and the 10k subset) is fixed by seed 0 for every arm and every run seed
        self.data = make_bundle(self.data_spec, info.mean, info.std, val_size=args.val_size, seed=0,
                                train_subset=args.train_subset)
        self.test_x, self.test_y = self.data.tensors("test")
        if args.test_limit:  # a fixed random subset: the test split is stored sorted by class
            idx = torch.randperm(len(self.test_y), generator=torch.Generator().manual_seed(0))[: args.test_limit]
            self.test_x, self.test_y = self.test_x[idx], self.test_y[idx]
        self.example = self.test_x[:1]
        self.records: list[dict] = []
        if args.out.exists():  # continue an interrupted benchmark, never mix two protocols in one file
            saved = json.loads(args.out.read_text())
            differ = sorted(k for k in _PROTOCOL_KEYS if saved["protocol"].get(k) != getattr(args, k))
            if differ:
                raise SystemExit(f"{args.out} holds results of another protocol ({', '.join(differ)} differ): "
                                 "pass another --out")
            self.records = saved.get("runs", [])

    # -- helpers ----------------------------------------------------------------------------
    def dense(self) -> torch.nn.Module:
        return load_model(MODEL, self.data.num_classes, self.checkpoint)

    def recipe(self, epochs: float, lr: float, schedule: str = "cosine") -> TrainRecipe:
        return TrainRecipe(epochs=epochs, lr=lr, batch_size=self.args.batch_size, schedule=schedule)

    def one_shot(self, model: torch.nn.Module, target: float, allocator: str = "uniform"):
        """Prune ``model`` to ``target`` of its MACs: (pruned copy, allocation, structure)."""
        s = ModelStructure(model, self.example, num_classes=self.data.num_classes)
        alloc = get_allocator(allocator).allocate(PruningProblem(s, target=target, criterion="l1"))
        return prune(s, alloc, "l1"), alloc, s

    def fit(self, model: torch.nn.Module, recipe: TrainRecipe, seed: int):
        macs = ModelStructure(model, self.example, num_classes=self.data.num_classes).dense_macs
        return train(model, self.data, recipe, seed=seed, macs_per_image=macs, progress=False)

    # -- arms: each returns (final model, training MACs) --------------------------------------
    def tpf(self, target: float, seed: int, rewind: bool):
        pruned, _, _ = self.one_shot(self.dense(), target)
        recipe = (self.recipe(self.args.epochs, self.args.lr) if rewind
                  else self.recipe(self.args.epochs, self.args.finetune_lr, "constant"))
        return pruned, self.fit(pruned, recipe, seed).train_macs

    def iterative(self, target: float, seed: int):
        dense = self.dense()
        dense_macs = ModelStructure(dense, self.example).dense_macs
        model, cost, k = dense, 0.0, self.args.rounds
        for r in range(1, k + 1):
            current = ModelStructure(model, self.example).dense_macs
            model, _, _ = self.one_shot(model, min(1.0, target ** (r / k) * dense_macs / current))
            cost += self.fit(model, self.recipe(self.args.epochs / k, self.args.lr), seed + 1000 * r).train_macs
        return model, cost

    def progressive(self, target: float, seed: int, shape: str, allocator: str):
        recipe = self.recipe(self.args.epochs, self.args.lr)
        total = recipe.total_steps(len(self.data.train))
        per_epoch = -(-len(self.data.train) // recipe.batch_size)
        schedule = PruningSchedule.over_training(shape, target, total, 0.0, 1.0 - self.args.final_share,
                                                 every=round(self.args.prune_every * per_epoch))
        res = progressive_train(self.dense(), self.data, recipe, schedule, get_allocator(allocator),
                                base_name=MODEL, seed=seed, progress=False,
                                trajectory=default_trajectory(allocator))  # policy:/allocation: head for that shape
        return res.model, res.train_macs

    def scratch(self, target: float, seed: int, budget: bool):
        _, alloc, s = self.one_shot(self.dense(), target)
        torch.manual_seed(seed)
        fresh = create_model(MODEL, self.data.num_classes)  # random init, then cut to the same widths
        model = prune(ModelStructure(fresh, self.example, num_classes=self.data.num_classes), alloc, "l1")
        epochs = self.args.epochs / (alloc.macs(s) / s.dense_macs) if budget else self.args.epochs
        return model, self.fit(model, self.recipe(epochs, self.args.scratch_lr), seed).train_macs

    # -- arms around a searched allocation ---------------------------------------------------
    def searched_path(self, target: float, seed: int) -> Path:
        return Path(self.args.searched) / f"{MODEL}_t{target:g}_searched_s{seed}.json"

    def searched(self, target: float, seed: int):
        """(structure of the dense model, the searched allocation) for this target and seed."""
        from autoprune.core.allocation import Allocation

        path = self.searched_path(target, seed)
        if not path.exists():
            raise FileNotFoundError(f"no searched allocation {path}: run bench.final_quality first or pass --searched")
        s = ModelStructure(self.dense(), self.example, num_classes=self.data.num_classes)
        return s, Allocation.load(path, s)

    def oneshot_searched(self, target: float, seed: int):
        s, alloc = self.searched(target, seed)
        pruned = prune(s, alloc, "l1")
        return pruned, self.fit(pruned, self.recipe(self.args.epochs, self.args.lr), seed).train_macs

    def weight_rewind_searched(self, target: float, seed: int):
        from autoprune.core.criteria import group_scores
        from autoprune.core.prune import channels_to_remove

        s, alloc = self.searched(target, seed)
        remove = channels_to_remove(s, alloc.counts(s), group_scores(s, "l1", None))  # chosen on the final weights
        early = load_model(MODEL, self.data.num_classes, self.rewind_checkpoint)
        model = s.prune_copy(remove, model=early)
        return model, self.fit(model, self.recipe(self.args.epochs, self.args.lr), seed).train_macs

    def scratch_searched(self, target: float, seed: int):
        s, alloc = self.searched(target, seed)
        torch.manual_seed(seed)
        fresh = create_model(MODEL, self.data.num_classes)
        model = prune(ModelStructure(fresh, self.example, num_classes=self.data.num_classes), alloc, "l1")
        epochs = self.args.epochs / (alloc.macs(s) / s.dense_macs)
        return model, self.fit(model, self.recipe(epochs, self.args.scratch_lr), seed).train_macs

    def progressive_searched(self, target: float, seed: int, shape: str):
        self.searched(target, seed)  # fails early, with the path, if it is missing
        return self.progressive(target, seed, shape, f"allocation:{self.searched_path(target, seed)}")

    def arms(self) -> dict[str, Callable]:
        a = self.args
        arms = {"tpf-lowlr": lambda t, s: self.tpf(t, s, rewind=False),
                "tpf-rewind": lambda t, s: self.tpf(t, s, rewind=True),
                f"iterative-k{a.rounds}": self.iterative}
        for shape in a.schedules:
            arms[f"prog-{shape}"] = lambda t, s, shape=shape: self.progressive(t, s, shape, "uniform")
        extra = list(a.allocators) + ([f"policy:{a.policy}"] if a.policy else [])
        for name in extra:
            try:
                get_allocator(name)
            except Exception as exc:  # not written yet, or a bad policy file: say so and go on
                print(f"skipping allocator {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            label = "policy" if name.startswith("policy:") else name
            arms[f"prog-cubic-{label}"] = lambda t, s, name=name: self.progressive(t, s, "cubic", name)
        arms["scratch-E"] = lambda t, s: self.scratch(t, s, budget=False)
        arms["scratch-B"] = lambda t, s: self.scratch(t, s, budget=True)
        arms["oneshot-searched"] = self.oneshot_searched
        for shape in ("cubic", "exponential"):
            arms[f"prog-{shape}-searched"] = lambda t, s, shape=shape: self.progressive_searched(t, s, shape)
        arms["prog-cubic-search"] = lambda t, s: self.progressive(t, s, "cubic", f"search:{a.search_samples}")
        arms["weight-rewind-searched"] = self.weight_rewind_searched
        arms["scratch-B-searched"] = self.scratch_searched
        if a.arms:  # --full names its arms exactly ("prog-cubic" must not pull in "prog-cubic-global")
            arms = {k: v for k, v in arms.items() if (k in a.arms if a.full else any(k.startswith(p) for p in a.arms))}
        return arms

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> dict:
        done = {(r["arm"], r["target"], r["seed"]) for r in self.records}
        dense_acc = accuracy(self.dense(), self.test_x, self.test_y)
        dense_macs = ModelStructure(self.dense(), self.example).dense_macs
        for target in self.args.targets:
            for seed in self.args.seeds:
                for arm, fn in self.arms().items():
                    if (arm, target, seed) in done:
                        continue
                    torch.manual_seed(seed)
                    t0 = time.perf_counter()
                    model, train_macs = fn(target, seed)
                    seconds = time.perf_counter() - t0
                    macs = ModelStructure(model, self.example, num_classes=self.data.num_classes).dense_macs
                    rec = {"arm": arm, "target": target, "seed": seed,
                           "test_acc": accuracy(model, self.test_x, self.test_y),
                           "macs_ratio": macs / dense_macs, "train_macs": train_macs, "seconds": seconds}
                    self.records.append(rec)
                    print(json.dumps(rec), flush=True)
                    self.save(dense_acc, dense_macs)
        return self.save(dense_acc, dense_macs)

    def save(self, dense_acc: float, dense_macs: int) -> dict:
        out = {"command": "python -m bench.progressive " + " ".join(sys.argv[1:]),
               "protocol": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()},
               "checkpoint": str(self.checkpoint), "data": self.data_spec, "n_train": len(self.data.train),
               "n_test": len(self.test_y), "dense_test_acc": dense_acc, "dense_macs": dense_macs,
               "torch_threads": torch.get_num_threads(), "table": table(self.records, dense_acc),
               "runs": self.records}
        self.args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.args.out, out, indent=2)
        self.args.out.with_suffix(".md").write_text(markdown(out))
        return out


def table(records: list[dict], dense_acc: float) -> list[dict]:
    """Mean +- std over seeds per (target, arm)."""
    rows = []
    keys = sorted({(r["target"], r["arm"]) for r in records}, key=lambda k: (-k[0], k[1]))
    for target, arm in keys:
        rs = [r for r in records if r["target"] == target and r["arm"] == arm]
        acc = np.array([r["test_acc"] for r in rs]) * 100
        rows.append({"target": target, "arm": arm, "seeds": len(rs), "test_acc_mean": float(acc.mean()),
                     "test_acc_std": float(acc.std(ddof=1)) if len(rs) > 1 else 0.0,
                     "drop": float(100 * dense_acc - acc.mean()),
                     "macs_ratio": float(np.mean([r["macs_ratio"] for r in rs])),
                     "train_tmacs": float(np.mean([r["train_macs"] for r in rs]) / 1e12),
                     "seconds": float(np.mean([r["seconds"] for r in rs]))})
    return rows


# the goals: each progressive arm heading for the searched shape, against these references
GOALS = {"oneshot-searched": "at least as accurate with fewer training MACs",
         "prog-cubic": "at least +1 point at 30% of MACs"}


def goal_lines(out: dict, target: float) -> list[str]:
    """Paired-by-seed differences of the progressive-to-searched arms from their references, with the
    training-MACs ratio: what the goals are judged on."""
    runs = [r for r in out["runs"] if r["target"] == target]
    acc = {(r["arm"], r["seed"]): 100 * r["test_acc"] for r in runs}
    macs = {(r["arm"], r["seed"]): r["train_macs"] for r in runs}
    lines = []
    for arm in sorted({r["arm"] for r in runs if r["arm"].startswith("prog-") and r["arm"].endswith("-searched")}):
        for ref, goal in GOALS.items():
            diff = paired_difference(acc, arm, ref)
            if diff is None:
                continue
            ratio = np.mean([macs[arm, seed] / macs[ref, seed] for a, seed in macs if a == ref and (arm, seed) in macs])
            lines.append(f"- {arm} − {ref}: {diff} points, {ratio:.2f}x its training MACs (goal: {goal})")
    return lines


def missing_runs(out: dict) -> list[str]:
    """Planned (target, seed, arm) runs not in the file, when the arms were named (``--full``, ``--arms``)."""
    proto = out["protocol"]
    if not proto.get("arms"):
        return []
    done = {(r["target"], r["seed"], r["arm"]) for r in out["runs"]}
    return [f"{t:g}|{s}|{a}" for t in proto["targets"] for s in proto["seeds"] for a in proto["arms"]
            if (t, s, a) not in done]


def markdown(out: dict) -> str:
    protocol = (__doc__.split("``--full`` is the full protocol: ")[1].split("\n\n")[0].replace("\n", " ")
                if out["protocol"].get("full") else None)
    lines = [f"# Progressive vs train-prune-finetune ({MODEL})", "", f"`{out['command']}`", "",
             *([f"Protocol (``--full``): {protocol}", ""] if protocol else []),
             f"dense test accuracy {100 * out['dense_test_acc']:.2f}% on {out['n_test']} test images; "
             f"{out['n_train']} training images; checkpoint `{out['checkpoint']}`; wall time with "
             f"{out['torch_threads']} torch thread(s)", "",
             "| MACs target | arm | seeds | test acc % (mean ± std) | drop | MACs kept | train TMACs | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in out["table"]:
        lines.append(f"| {r['target']:.2f} | {r['arm']} | {r['seeds']} | {r['test_acc_mean']:.2f} ± {r['test_acc_std']:.2f} "
                     f"| {r['drop']:+.2f} | {100 * r['macs_ratio']:.1f}% | {r['train_tmacs']:.3f} | {r['seconds']:.0f} |")
    for target in sorted({r["target"] for r in out["table"]}, reverse=True):
        rows = [r for r in out["table"] if r["target"] == target]
        best = max(rows, key=lambda r: r["test_acc_mean"])
        lines += ["", f"Best at {100 * target:.0f}% MACs: **{best['arm']}** ({best['test_acc_mean']:.2f}%)."]
        goals = goal_lines(out, target)
        if goals:
            lines += ["", "Paired by seed (mean ± std; resolved: the 95% t-interval of the mean excludes 0):", *goals]
    missing = missing_runs(out)
    if out["protocol"].get("arms"):
        proto = out["protocol"]
        planned = len(proto["targets"]) * len(proto["seeds"]) * len(proto["arms"])
        lines += ["", f"Runs still missing (target|seed|arm): {len(missing)} of {planned}"
                      + (": " + ", ".join(missing) if missing else ".")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.report:  # only rewrite the markdown from the results file
        out = json.loads(args.out.read_text())
        args.out.with_suffix(".md").write_text(markdown(out))
        return out
    torch.set_num_threads(args.threads)
    out = Bench(args).run()
    print(json.dumps(out["table"], indent=1))
    return out


if __name__ == "__main__":
    main()
