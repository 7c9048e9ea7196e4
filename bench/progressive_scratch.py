"""Progressive train-prune-train from scratch vs the three-stage pipeline, at equal epochs.

Protocol (defaults; also written at the top of ``progressive-scratch.md``): ResNet-20 from random
initialization (``torch.manual_seed(seed)``: every arm of a seed starts from the same weights) on the
JPEG CIFAR-10 training split minus 2,000 held-out images (the split drawn by the seed, as
``autoprune progressive --seed`` does; 1,024 of the rest recalibrate BN and calibrate the score), 40
epochs in all, SGD (momentum 0.9, nesterov, weight decay 5e-4, batch 128), cosine from 0.1; final
MACs 50% and 30% of the dense model; seeds 0 and 1; L1 criterion; bf16 autocast where the CPU has it.
The search everywhere is DDPG (``--action sensitivity``, the default when the benchmark started) with the search's
default score (``reconstruct:loss``), 100 episodes of
which 30 random warm-up, seeded; the universal policy reads sensitivity by the score it was trained with. Arms:

* ``pipeline``: dense 40 epochs (trained once per seed, shared by both targets), searched on the
  trained model, one-shot pruned (L1) to that shape, BN recalibrated, 8 epochs of LR rewinding
  (cosine from 0.01, the final-quality recipe);
* ``progressive-searched``: ``autoprune progressive --from-scratch``, the shape searched on the dense
  model at the decision epoch (15% of the run: epoch 6), cubic schedule from there, a cut every
  quarter epoch, the last 25% of the run at the final width;
* ``progressive-universal``: the same, the shape from the committed universal policy
  (``bench/results/policies/universal.zip``) zero-shot at the decision epoch;
* ``progressive-uniform``: the same, every group cut by the same ratio;

  the three progressive arms of a seed, at both targets, train the same dense model up to the decision: the
  first to get there trains it, the others start from its state there (``--fork-from``, checked equal to a
  run trained from the initialization by ``tests/test_progressive_scratch.py``); their seconds and training
  MACs count that shared part as their own, as if each had trained it;
* ``scratch-B``: the pipeline's searched shape from fresh weights, cosine from 0.1, for as many
  training MACs as ``progressive-searched`` spent (Liu et al. 2019).

Each row: test accuracy (fp32, the 10,000 test images, the model as trained: training-time BN
statistics; progressive rows also give the BN-recalibrated file's), training MACs (forward MACs per
image x images seen, summed over every step; search evaluations not counted), wall seconds (the
pipeline's include its whole dense training and its search), the decision epoch, and the command
to rerun it. Rows go to ``bench/results/progressive-scratch.json`` and ``.md`` as they finish;
rerunning the same command skips finished rows, and an interrupted run continues from its last epoch
(checkpoints under ``--work``). Searched allocations are kept in ``bench/results/progressive-scratch/``.

Expected duration on one torch thread, scaled from a one-epoch smoke run on 1,024 training images
(fp32: the CPU it ran on has no native bf16; load average ~6 on 2 cores, so an idle core is faster):
dense training 127 images/s, models at 70% / 56% of MACs 141 / 155 images/s (wall time falls far less
than MACs), one adaptive-BN candidate 5.8 s, one DDPG episode 6.0 s (the default score
``reconstruct:loss`` costs ~1.4x adaptive BN per candidate: each search ~14 min). Per run: the dense 40 epochs
~4.2 h (once per seed); LR rewinding ~0.7 h (50%) / ~0.6 h (30%); each
progressive arm ~3.6 h (50%) / ~3.4 h (30%), ~0.6 h less for the five that fork; scratch-B ~4.3 h (50%: 52 epochs) / ~5.1 h (30%: 68
epochs). All 20 rows: ~33 h per seed, ~67 h in all; with bf16 (2.5x faster training on an AVX-512 BF16
CPU) roughly 30 h. ``--seeds`` splits the grid between processes in one checkout (rows merge under a
file lock; a seed's dense run is shared by its arms, so give each seed to one process); ``--targets`` and
``--arms`` pick parts of a seed.

    python -m bench.progressive_scratch                     # the protocol (resumable: rerun to continue)
    python -m bench.progressive_scratch --seeds 1           # a part of the grid
    python -m bench.progressive_scratch --quick             # smoke test (1,024 images, 1 epoch; ~3 min)
    python -m bench.progressive_scratch --report            # rewrite the .md from the JSON
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import statistics
import time
from pathlib import Path

import torch

from autoprune.agents import get_allocator
from autoprune.core.allocation import Allocation
from autoprune.core.io import load_pruned
from autoprune.core.prune import prune
from autoprune.experiments.compare_config import reinitialise
from autoprune.experiments.progressive import ProgressiveConfig, run_progressive
from autoprune.train.progressive import DENSE_STATE
from autoprune.runs import write_json_atomic
from autoprune.train.data import DataBundle, cache_dir
from autoprune.train.evaluator import accuracy, recalibrate_bn
from autoprune.train.precision import resolve_precision
from autoprune.train.scores import DEFAULT_SCORE
from autoprune.train.training import TrainRecipe, make_optimizer, train
from autoprune.workspace import Workspace, WorkspaceOptions, open_workspace

from .base_models import DATA
from .common import RESULTS, machine, paired_difference, save_merged

MODEL = "resnet20"
ACTION = "sensitivity"  # the agent's default when seed 0 ran; kept so both seeds search the same way
ARMS = ("pipeline", "progressive-searched", "progressive-universal", "progressive-uniform", "scratch-B")
POLICY = RESULTS / "policies" / "universal.zip"
# options that change what a row measures (the others only choose which rows run)
PROTOCOL = ("data", "train_subset", "val_size", "calib_size", "test_limit", "epochs", "lr", "batch_size",
            "rewind_epochs", "rewind_lr", "decide_at", "schedule", "final_share", "prune_every", "episodes",
            "warmup_episodes", "precision")
GOALS = {"pipeline": ">= -0.2 points at <= 0.6x its training MACs", "progressive-uniform": ">= +0.5 points"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.3])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--data", default=DATA)
    p.add_argument("--train-subset", type=int, default=None, help="train on a fixed random subset (smoke tests)")
    p.add_argument("--val-size", type=int, default=2000, help="held-out training images (the search's score)")
    p.add_argument("--calib-size", type=int, default=1024, help="training images recalibrating BN")
    p.add_argument("--test-limit", type=int, default=None, help="score on a fixed random N test images only")
    p.add_argument("--epochs", type=float, default=40.0, help="epochs of every arm but scratch-B (pipeline: dense)")
    p.add_argument("--lr", type=float, default=0.1, help="peak lr from scratch (cosine)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rewind-epochs", type=float, default=8.0, help="pipeline: epochs of LR rewinding")
    p.add_argument("--rewind-lr", type=float, default=0.01, help="pipeline: peak lr of LR rewinding (cosine)")
    p.add_argument("--decide-at", default="0.15", help="progressive arms: fraction of the run, or auto")
    p.add_argument("--schedule", default="cubic", help="progressive arms: pruning schedule")
    p.add_argument("--final-share", type=float, default=0.25, help="progressive arms: share of the run at the final width")
    p.add_argument("--prune-every", type=float, default=0.25, help="progressive arms: epochs between cuts")
    p.add_argument("--episodes", type=int, default=100, help="DDPG episodes of each search")
    p.add_argument("--warmup-episodes", type=int, default=30, help="random warm-up episodes of each search")
    p.add_argument("--precision", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1,024 training images, 500 held out, 1 epoch (+0.5 rewinding), 4 search "
                        "episodes, 1,000 test images, seed 0, 50%% of MACs; writes progressive-scratch-quick.*")
    p.add_argument("--work", type=Path, default=None,
                   help="checkpoints and run folders (default: $AUTOPRUNE_CACHE/progressive-scratch[-quick])")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default bench/results/progressive-scratch.json)")
    p.add_argument("--report", action="store_true", help="only rewrite the .md from the results JSON")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    if args.quick:
        args.train_subset, args.val_size, args.calib_size, args.test_limit = 1024, 500, 256, 1000
        args.epochs, args.rewind_epochs, args.episodes, args.warmup_episodes = 1.0, 0.5, 4, 2
        args.seeds, args.targets = args.seeds[:1], args.targets[:1]
    name = "progressive-scratch-quick" if args.quick else "progressive-scratch"
    args.out = args.out or RESULTS / f"{name}.json"
    args.work = args.work or cache_dir() / name
    return args


def grid_command(args: argparse.Namespace) -> list[str]:
    """The bench command that runs (or, rerun, continues) the whole grid of this protocol."""
    defaults = vars(parser().parse_args([]))
    flags = ["--quick"] if args.quick else [
        f"--{k.replace('_', '-')}={getattr(args, k)}" for k in PROTOCOL if getattr(args, k) != defaults[k]]
    standard = parse_args(["--quick"] if args.quick else [])
    flags += [f"--{k}={getattr(args, k)}" for k in ("out", "work") if getattr(args, k) != getattr(standard, k)]
    return ["python", "-m", "bench.progressive_scratch", *flags]


def widen_to_grid(record: dict, args: argparse.Namespace) -> None:
    """Plan (and list as missing) the protocol's whole grid, plus any seed or target run beyond it, whichever part
    of it this process runs (``--seeds 0``), and name the command that continues all of it."""
    standard = parse_args(["--quick"] if args.quick else [])
    proto = record["protocol"]
    proto.update(seeds=sorted(set(proto.get("seeds", [])) | set(standard.seeds) | set(args.seeds)),
                 targets=sorted(set(proto.get("targets", [])) | set(standard.targets) | set(args.targets), reverse=True))
    record["command"] = shlex.join(grid_command(args))


def rerun_command(args: argparse.Namespace, arm: str, target: float, seed: int) -> str:
    """The bench command that runs this one row (after removing it from the JSON, or with another --out)."""
    return shlex.join([*grid_command(args), "--arms", arm, "--targets", f"{target:g}", "--seeds", str(seed)])


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.record = self.load()
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- the record -------------------------------------------------------------------------
    def load(self) -> dict:
        protocol = {k: getattr(self.args, k) for k in PROTOCOL}
        if self.args.out.exists():  # continue, never mix two protocols in one file
            saved = json.loads(self.args.out.read_text())
            differ = sorted(k for k in PROTOCOL if saved["protocol"].get(k) != protocol[k])
            if differ:
                raise SystemExit(f"{self.args.out} holds rows of another protocol ({', '.join(differ)} differ): "
                                 "pass another --out")
            return saved
        return {"command": shlex.join(grid_command(self.args)), "protocol": protocol,
                "machine": machine(), "dense": {}, "rows": []}

    def save(self) -> None:
        self.args.out.parent.mkdir(parents=True, exist_ok=True)
        save_merged(self.args.out, self.record, {"rows": lambda r: (r["arm"], r["target"], r["seed"]), "dense": None})
        self.args.out.with_suffix(".md").write_text(markdown(self.record))

    def row(self, arm: str, target: float, seed: int) -> dict | None:
        return next((r for r in self.record["rows"] if (r["arm"], r["target"], r["seed"]) == (arm, target, seed)), None)

    # -- shared pieces ----------------------------------------------------------------------
    def workspace(self, seed: int) -> Workspace:
        """Data split and initial weights of ``seed``, exactly as ``autoprune progressive --seed`` makes them."""
        a = self.args
        torch.manual_seed(seed)
        return open_workspace(MODEL, None, a.data, val_size=a.val_size, calib_size=a.calib_size, seed=seed,
                              train_subset=a.train_subset, precision=a.precision)

    def test_set(self, ws: Workspace) -> tuple[torch.Tensor, torch.Tensor]:
        if self._test is None:
            x, y = ws.data.tensors("test")
            if self.args.test_limit:  # a fixed random subset: the test split is stored sorted by class
                idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[: self.args.test_limit]
                x, y = x[idx], y[idx]
            self._test = (x, y)
        return self._test

    def recipe(self, epochs: float, lr: float) -> TrainRecipe:
        return TrainRecipe(epochs=epochs, lr=lr, batch_size=self.args.batch_size, schedule="cosine")

    def search_spec(self, seed: int) -> str:
        return (f"ddpg@episodes={self.args.episodes},warmup_episodes={self.args.warmup_episodes},seed={seed},"
                f"action={ACTION}")

    def dense(self, seed: int) -> tuple[Workspace, dict]:
        """The seed's dense model trained for --epochs (once; resumable), and its facts."""
        ws = self.workspace(seed)
        path = self.args.work / f"dense_s{seed}.pt"
        macs = ws.structure().dense_macs
        seconds = resumable_train(ws.model, ws.data, self.recipe(self.args.epochs, self.args.lr), seed=seed,
                                  path=path, macs=macs, precision=ws.precision.name)
        facts = self.record["dense"].get(str(seed))
        if facts is None:
            recipe = self.recipe(self.args.epochs, self.args.lr)
            facts = {"test_acc": accuracy(ws.model, *self.test_set(ws)), "seconds": seconds, "macs": macs,
                     "train_macs": macs * images_seen(len(ws.data.train), recipe)}
            self.record["dense"][str(seed)] = facts
            self.save()
        ws._structure = None  # trained since the structure was traced: trace again when asked
        return ws, facts

    def searched(self, ws: Workspace, target: float, seed: int) -> tuple[Allocation, dict]:
        """The pipeline's shape: a search on the trained dense model (kept on disk, resumable)."""
        path = self.args.out.parent / self.args.out.stem / "allocations" / f"{MODEL}_t{target:g}_pipeline_s{seed}.json"
        structure = ws.structure()
        if path.exists():
            saved = json.loads(path.read_text())
            return Allocation.from_dict(saved, structure), saved
        problem = ws.problem(target)
        t0 = time.perf_counter()
        search = get_allocator("ddpg", episodes=self.args.episodes, warmup_episodes=self.args.warmup_episodes,
                               seed=seed, action=ACTION)
        run_dir = self.args.work / "searches" / f"t{target:g}_s{seed}"
        result = search.search(problem, ws.scorer(problem, DEFAULT_SCORE, seed=seed), run_dir, resume=(run_dir / "checkpoints").exists())
        meta = {"score": DEFAULT_SCORE, "score_value": result.best.score, "search_seconds": time.perf_counter() - t0,
                "spec": self.search_spec(seed)}
        path.parent.mkdir(parents=True, exist_ok=True)
        result.allocation.save(path, structure, **meta)
        return result.allocation, meta

    # -- arms: each returns a row ------------------------------------------------------------
    def pipeline(self, target: float, seed: int) -> dict:
        ws, dense = self.dense(seed)
        alloc, meta = self.searched(ws, target, seed)
        structure = ws.structure()
        pruned_macs = alloc.macs(structure)
        net = prune(structure, alloc, "l1")
        recalibrate_bn(net, ws.calibration())
        rewind = self.recipe(self.args.rewind_epochs, self.args.rewind_lr)
        seconds = resumable_train(net, ws.data, rewind, seed=seed, path=self.args.work / f"rewind_t{target:g}_s{seed}.pt",
                                  macs=pruned_macs, precision=ws.precision.name)
        return {"test_acc": accuracy(net, *self.test_set(ws)), "macs_ratio": pruned_macs / structure.dense_macs,
                "train_macs": dense["train_macs"] + pruned_macs * images_seen(len(ws.data.train), rewind),
                "seconds": dense["seconds"] + meta["search_seconds"] + seconds, "decision_epoch": self.args.epochs,
                "parts_seconds": {"dense": dense["seconds"], "search": meta["search_seconds"], "rewind": seconds},
                "dense_test_acc": dense["test_acc"], "allocation": alloc.keep}

    def progressive(self, target: float, seed: int, allocator: str, arm: str) -> dict:
        a = self.args
        out = a.work / "runs" / f"{arm}_t{target:g}_s{seed}"
        resume = (out / "state.pt").exists()
        if out.exists() and not resume:  # stopped before its first epoch ended: nothing to keep
            shutil.rmtree(out)
        ws = WorkspaceOptions(MODEL, None, a.data, val_size=a.val_size, calib_size=a.calib_size,
                              train_subset=a.train_subset, seed=seed, precision=a.precision)
        # the seed's dense training up to the decision is the same for every arm and target: train it once
        fork = None if resume else next((str(d) for d in sorted((a.work / "runs").glob(f"*_s{seed}"))
                                         if (d / DENSE_STATE).exists() and d != out), None)
        cfg = ProgressiveConfig(str(out), ws, target=target, allocator=allocator, criterion="l1",
                                schedule=a.schedule, final_share=a.final_share, prune_every=a.prune_every,
                                from_scratch=True, decide_at=a.decide_at, fork_from=fork,
                                recipe=self.recipe(a.epochs, a.lr), resume=resume)
        summary = run_progressive(cfg)
        assert summary is not None
        trained, _ = load_pruned(out / "state.pt")  # the model as trained (model.pt has BN recalibrated)
        calibrated, _ = load_pruned(out / "model.pt")
        test = self.test_set(self.workspace(seed)) if self._test is None else self._test
        return {"test_acc": accuracy(trained, *test), "test_acc_recalibrated": accuracy(calibrated, *test),
                "macs_ratio": summary["macs_ratio"], "train_macs": summary["train_macs"], "seconds": summary["seconds"],
                "decision_epoch": summary["decision"]["epoch"], "decision_reason": summary["decision"]["reason"],
                "decision_seconds": summary["decision"]["seconds"],
                "allocation": summary["decision"]["widths"], "run_dir": str(out), "forked_from": cfg.fork_from,
                "cli": _cli(cfg)}

    def scratch_b(self, target: float, seed: int) -> dict:
        ref, prog = self.row("pipeline", target, seed), self.row("progressive-searched", target, seed)
        if ref is None or prog is None:
            raise SystemExit(f"scratch-B at {target:g} seed {seed} needs the pipeline and progressive-searched rows: "
                             "run those arms first")
        ws = self.workspace(seed)
        structure = ws.structure()
        alloc = Allocation(dict(ref["allocation"]))
        net = reinitialise(prune(structure, alloc, "l1"), seed)
        macs = alloc.macs(structure)
        epochs = prog["train_macs"] / (macs * len(ws.data.train))
        recipe = self.recipe(epochs, self.args.lr)
        seconds = resumable_train(net, ws.data, recipe, seed=seed, path=self.args.work / f"scratch-B_t{target:g}_s{seed}.pt",
                                  macs=macs, precision=ws.precision.name)
        return {"test_acc": accuracy(net, *self.test_set(ws)), "macs_ratio": macs / structure.dense_macs,
                "train_macs": macs * images_seen(len(ws.data.train), recipe), "seconds": seconds, "decision_epoch": None,
                "epochs": epochs, "allocation": alloc.keep}

    def run_arm(self, arm: str, target: float, seed: int) -> dict:
        if arm == "pipeline":
            return self.pipeline(target, seed)
        if arm == "scratch-B":
            return self.scratch_b(target, seed)
        allocator = {"progressive-searched": self.search_spec(seed), "progressive-universal": f"policy:{POLICY}",
                     "progressive-uniform": "uniform"}[arm]
        return self.progressive(target, seed, allocator, arm)

    def run(self) -> dict:
        for seed in self.args.seeds:
            for target in self.args.targets:
                for arm in ARMS:  # in this order: scratch-B needs the pipeline's shape and progressive's MACs
                    if arm not in self.args.arms or self.row(arm, target, seed) is not None:
                        continue
                    print(f"== {arm} at {target:g} of MACs, seed {seed}", flush=True)
                    row = {"arm": arm, "target": target, "seed": seed, **self.run_arm(arm, target, seed),
                           "command": rerun_command(self.args, arm, target, seed),
                           "torch_threads": torch.get_num_threads(), "cpu": machine()["cpu"],
                           "load_average": machine()["load_average_at_start"],
                           "precision": resolve_precision(self.args.precision, "cpu").name}
                    self.record["rows"].append(row)
                    self.save()
                    print(f"{arm} @{target:g} seed {seed}: test {100 * row['test_acc']:.2f}%, "
                          f"{row['train_macs'] / 1e12:.2f} training TMACs, {row['seconds']:.0f} s", flush=True)
        self.save()
        return self.record


def images_seen(n_train: int, recipe: TrainRecipe) -> int:
    """Images ``train`` feeds through ``recipe`` (every epoch's last batch may be short)."""
    per_epoch = math.ceil(n_train / recipe.batch_size)
    full, rest = divmod(recipe.total_steps(n_train), per_epoch)
    return full * n_train + min(rest * recipe.batch_size, n_train)


def resumable_train(model: torch.nn.Module, data: DataBundle, recipe: TrainRecipe, *, seed: int, path: Path,
                    macs: float, precision: str) -> float:
    """Train ``model`` in place, checkpointing to ``path`` every epoch and continuing from it if present;
    returns the wall seconds of every process that worked on it (``path``.json keeps the count)."""
    side = path.with_suffix(".json")
    done = json.loads(side.read_text()) if side.exists() else {"seconds": 0.0}
    start, optimizer = 0, None
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer = make_optimizer(model, recipe)
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
    if done.get("done"):
        return float(done["seconds"])
    path.parent.mkdir(parents=True, exist_ok=True)
    t0, before = time.perf_counter(), float(done["seconds"])
    per_epoch = math.ceil(len(data.train) / recipe.batch_size)

    def tick(step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if step % per_epoch == 0 and step > start:  # the checkpoint of this epoch end has just been written
            write_json_atomic(side, {"seconds": before + time.perf_counter() - t0, "step": step})

    train(model, data, recipe, seed=seed, checkpoint=path, start_step=start, optimizer=optimizer, macs_per_image=macs,
          progress=False, precision=precision, on_step=tick)
    seconds = before + time.perf_counter() - t0
    write_json_atomic(side, {"seconds": seconds, "step": recipe.total_steps(len(data.train)), "done": True})
    return seconds


def _cli(cfg: ProgressiveConfig) -> str:
    """The ``autoprune progressive`` command of a progressive row."""
    ws, r = cfg.ws, cfg.recipe
    args = ["autoprune", "progressive", "--from-scratch", "--model", ws.model, "--data", ws.data, "--seed", str(ws.seed),
            "--val-size", str(ws.val_size), "--calib-size", str(ws.calib_size), "--precision", ws.precision,
            "--target", f"{cfg.target:g}", "--allocator", cfg.allocator, "--decide-at", str(cfg.decide_at),
            "--schedule", cfg.schedule, "--final-share", f"{cfg.final_share:g}", "--prune-every", f"{cfg.prune_every:g}",
            "--epochs", f"{r.epochs:g}", "--lr", f"{r.lr:g}", "--batch-size", str(r.batch_size), "--output", cfg.output]
    if ws.train_subset:
        args += ["--train-subset", str(ws.train_subset)]
    return shlex.join(args)


# -- the report ------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def comparison_lines(record: dict, target: float) -> list[str]:
    """progressive-searched minus the pipeline and minus progressive-uniform, paired by seed, against the goals."""
    rows = [r for r in record["rows"] if r["target"] == target]
    acc = {(r["arm"], r["seed"]): 100 * r["test_acc"] for r in rows}
    macs = {(r["arm"], r["seed"]): r["train_macs"] for r in rows}
    lines = []
    for ref, goal in GOALS.items():
        diff = paired_difference(acc, "progressive-searched", ref)
        if diff is None:
            continue
        ratios = [macs["progressive-searched", s] / macs[ref, s] for a, s in macs
                  if a == ref and ("progressive-searched", s) in macs]
        lines.append(f"- progressive-searched − {ref}: {diff} points at {statistics.mean(ratios):.2f}x its training "
                     f"MACs (goal: {goal})")
    return lines


def markdown(record: dict) -> str:
    proto = record["protocol"]
    doc = __doc__.split("Protocol (defaults; also written at the top of ``progressive-scratch.md``): ")[1]
    lines = ["# Progressive from scratch vs the three-stage pipeline (ResNet-20)", "",
             "Protocol: " + " ".join(doc.split("\n\nEach row:")[0].split()), "",
             (f"Command: `{record['command']}`; protocol options: `{json.dumps(proto)}`. Raw rows: the .json of "
              "this name; each row's `command` reruns it (remove the row from the JSON first, or pass another --out), "
              "progressive rows also carry the `autoprune progressive` command (`cli`). Training MACs: forward MACs "
              "per image x images seen; search evaluations are not counted (their time is in the wall seconds)."), ""]
    if "--quick" in record["command"]:
        lines += [f"**Smoke run** (`--quick`: {proto['epochs']:g} epoch on {proto['train_subset']:,} images): it checks "
                  "that every arm runs; its accuracies are near chance and rank nothing.", ""]
    if record["dense"]:
        lines += [f"Dense {proto['epochs']:g}-epoch models (the pipeline's first stage): " + "; ".join(
            f"seed {s} {100 * d['test_acc']:.2f}% test in {d['seconds']:.0f} s" for s, d in sorted(record["dense"].items())), ""]
    for target in sorted({r["target"] for r in record["rows"]}, reverse=True):
        rows = [r for r in record["rows"] if r["target"] == target]
        pipe = {r["seed"]: r["train_macs"] for r in rows if r["arm"] == "pipeline"}
        lines += [f"## {100 * target:g}% of MACs", "",
                  ("| arm | seeds | test acc % (mean ± std) | BN-recalibrated % | MACs kept % | train TMACs | x pipeline "
                   "| wall s | decision epoch |"), "|---|---|---|---|---|---|---|---|---|"]
        for arm in ARMS:
            sel = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["seed"])
            if not sel:
                continue
            recal = [100 * r["test_acc_recalibrated"] for r in sel if r.get("test_acc_recalibrated") is not None]
            ratio = [r["train_macs"] / pipe[r["seed"]] for r in sel if r["seed"] in pipe]
            decided = sorted({r["decision_epoch"] for r in sel if r["decision_epoch"] is not None})
            lines.append(f"| {arm} | {','.join(str(r['seed']) for r in sel)} | {_mean_std([100 * r['test_acc'] for r in sel])} "
                         f"| {_mean_std(recal) if recal else '-'} | {100 * statistics.mean(r['macs_ratio'] for r in sel):.1f} "
                         f"| {statistics.mean(r['train_macs'] for r in sel) / 1e12:.2f} "
                         f"| {f'{statistics.mean(ratio):.2f}' if ratio else '-'} "
                         f"| {statistics.mean(r['seconds'] for r in sel):.0f} "
                         f"| {', '.join(f'{e:g}' for e in decided) if decided else '-'} |")
        comparison = comparison_lines(record, target)
        lines += ["", "Paired by seed (mean ± std; resolved: the 95% t-interval of the mean excludes 0):",
                  *(comparison or ["- no seed has both arms yet"]), ""]
    planned = [(a, t, s) for s in proto.get("seeds", []) for t in proto.get("targets", []) for a in ARMS]
    missing = [f"{a}|{t:g}|{s}" for a, t, s in planned
               if not any((r["arm"], r["target"], r["seed"]) == (a, t, s) for r in record["rows"])]
    if planned:
        lines += ["## Rows still missing", "", (f"{len(missing)} of {len(planned)} (arm|target|seed): " + ", ".join(missing))
                  if missing else "None."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.report:
        record = json.loads(args.out.read_text())
        widen_to_grid(record, args)
        args.out.with_suffix(".md").write_text(markdown(record))
        return record
    torch.set_num_threads(args.threads)
    bench = Bench(args)
    widen_to_grid(bench.record, args)
    return bench.run()


if __name__ == "__main__":
    main()
