"""Final quality: does the learned budget win after real fine-tuning, and does the
adaptive-BN proxy predict the fine-tuned ranking?

Protocol (also written at the top of ``final-quality.md``):
- Dense models: ResNet-20 and ResNet-56, the shared checkpoints adapted to the JPEG copy for one
  epoch (``bench/base_models.py``; dense test accuracy in ``bench/results/base-models.json``).
- Held-out: 2,000 training images (seeded) score candidates (adaptive BN: BN recalibrated on 1,024
  other training images); training uses the rest of the training split (48,000 images).
- Targets: 50% and 30% of conv+linear MACs. Criterion: L1.
- Arms: ``searched`` (best allocation of a 200-episode DDPG search, 50 warm-up, seeded; the settings
  the search defaulted to when these rows began: no self-imitation, noise decay 0.95),
  ``random`` (best of 200 random feasible allocations, seeded), ``uniform``, ``layer-stats``,
  ``sensitivity`` (deterministic: computed once, reused for every seed).
- Recipes: ``lr-rewind`` (SGD, cosine from 0.01, BN recalibrated first) for 8 epochs (ResNet-20)
  or 4 (ResNet-56); ``scratch-B`` (fresh weights, cosine from 0.1, epochs x dense/pruned MACs so the
  training compute matches) for ``searched`` and ``uniform``. bf16 autocast + channels-last where
  the CPU supports it (``--precision``); test accuracy always scored in fp32 on the 10,000 test images.
- Seeds 0, 1, 2 (ResNet-20) and 0, 1 (ResNet-56): a seed fixes the search and the data order.

Round 2 (``--round 2``; rows carry ``round``): the same models, targets, seeds, held-out split and
LR-rewinding epochs, against what a user would pick instead: ``searched`` (the default search as it
is now: ``autoprune search``'s default score, finalists stage -- which re-scores the sensitivity and
uniform allocations the search started from too -- and DDPG settings, 200 episodes),
``random`` (best of 200 random allocations by the same score, same finalists stage), ``sensitivity``,
``uniform``, ``tp-global`` (torch-pruning's global magnitude pruning, library defaults),
``universal`` (the committed universal policy, zero-shot, no search) and ``searched-universal`` (the
same search, its finalists joined by the universal policy's allocation: ``search --candidates``). Every
arm's model starts from the plain pruned weights with BN recalibrated (``start: recalibrated``), as round 1
and ``apply`` do: the default score's refitted weights fine-tune worse (rows with ``start: refitted``, kept
and reported apart). Recipes:
``lr-rewind`` for every arm, ``lr-rewind-kd`` (the same, distilled from the dense model: weight 0.9,
temperature 4) for ``searched`` and ``sensitivity``.

Rows go to ``bench/results/final-quality.json`` as they finish (resumable row by row: rerun the
same command); allocations and search runs are kept under ``bench/results/final-quality/``. Round 2's
searches and random searches checkpoint there as they go, so a stopped one continues where it was.

    nohup python -m bench.final_quality --models resnet20 &      # ResNet-20 table (~10 h here: lr-rewind rows
                                                                 # 9-10 min on 2 idle threads, scratch-B 2-3.3x that)
    python -m bench.final_quality --report                       # rewrite final-quality.md only
    python -m bench.final_quality --seeds 1                      # a part of the grid: a second process beside
                                                                 # the first (rows merge under a file lock)
    nohup python -m bench.final_quality --round 2 &              # round 2 (both models)
    python -m bench.final_quality --round 2 --seeds 1 --targets 0.5 --arms universal tp-global
                                                                 # a second process on one seed and target: split by
                                                                 # arm (the searching arms share one search: keep
                                                                 # them in one process until it is saved)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict

import torch

from autoprune.agents import get_allocator
from autoprune.agents.random_search import RandomSearch
from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer
from autoprune.experiments.compare_config import reinitialise
from autoprune.train.evaluator import accuracy, recalibrate_bn
from autoprune.train.training import TrainRecipe, train
from autoprune.workspace import open_workspace

from .base_models import DATA, finetuned_checkpoint
from .common import RESULTS, T95, machine, paired_difference, save_merged

OUT = RESULTS / "final-quality.json"
WORK = RESULTS / "final-quality"
ARMS = ("searched", "random", "uniform", "layer-stats", "sensitivity")
SCRATCH_ARMS = ("searched", "uniform")
SEEDED = {"searched", "searched-universal", "random"}
SEARCHING = {"searched", "searched-universal"}  # arms that run the default search (one search serves both)
TARGETS = (0.5, 0.3)
EPOCHS = {"resnet20": 8.0, "resnet56": 4.0}
SEEDS = {"resnet20": (0, 1, 2), "resnet56": (0, 1)}
VAL_SIZE, CALIB_SIZE, EPISODES, WARMUP = 2000, 1024, 200, 50
# the searched arm's DDPG settings, pinned to those its first (ResNet-20) rows ran with: the search defaults
# have since moved (self-imitation, noise decay 0.98), and one table keeps one protocol
SEARCH_SETTINGS = {"imitation": 0.0, "noise_decay": 0.95, "distil_best": False}
# searched-universal: the default search with the universal policy's allocation as a finalist (--candidates)
ROUND2_ARMS = ("searched", "random", "sensitivity", "uniform", "tp-global", "universal", "searched-universal")
ROUND2_KD_ARMS = ("searched", "sensitivity")
UNIVERSAL = RESULTS / "policies" / "universal.zip"
KD = {"kd_weight": 0.9, "kd_temperature": 4.0}


def round2_settings() -> dict:
    """The default search a user gets today (``autoprune search`` without options), recorded in every row."""
    from autoprune.agents.rl.config import RLConfig
    from autoprune.experiments.search import SearchConfig

    defaults = {f.name: f.default for f in dataclasses.fields(SearchConfig)}
    return {"agent": defaults["agent"], "action": RLConfig.action, "score": defaults["score"],
            "finalists": defaults["finalists"], "finalist_score": defaults["finalist_score"], "episodes": EPISODES,
            "warmup_episodes": WARMUP, "heuristic_finalists": True}  # the search's starting points are finalists


def planned_rows_r2(models: list[str]) -> list[tuple[str, str, int, float, str]]:
    """Round 2 (model, recipe, seed, target, arm): every arm's lr-rewind row of a seed, then its kd rows."""
    rows = []
    for model in models:
        for seed in SEEDS[model]:
            for target in TARGETS:
                rows += [(model, "lr-rewind", seed, target, arm) for arm in ROUND2_ARMS]
                rows += [(model, "lr-rewind-kd", seed, target, arm) for arm in ROUND2_KD_ARMS]
    return rows


def planned_rows(models: list[str]) -> list[tuple[str, str, int, float, str]]:
    """(model, recipe, seed, target, arm) in run order: every arm of a seed before the next seed,
    every lr-rewind row of a model before its (long) scratch-B rows."""
    rows = []
    for model in models:
        for recipe, arms in (("lr-rewind", ARMS), ("scratch-B", SCRATCH_ARMS)):
            for seed in SEEDS[model]:
                for target in TARGETS:
                    rows += [(model, recipe, seed, target, arm) for arm in arms]
    return rows


def rows_to_run(models: list[str], done: set[str], seeds: list[int] | None = None,
                recipes: list[str] | None = None, targets: list[float] | None = None,
                arms: list[str] | None = None, round: int = 1) -> list[tuple[str, str, int, float, str]]:
    """A round's planned rows not yet in ``done``, optionally only some seeds, recipes, targets or arms: a part of
    the grid, so a second process can share the work (``save`` merges rows by key under a file lock)."""
    planned, key = (planned_rows, _key) if round == 1 else (planned_rows_r2, _key_r2)
    return [p for p in planned(models) if key(*p) not in done
            and (seeds is None or p[2] in seeds) and (recipes is None or p[1] in recipes)
            and (targets is None or p[3] in targets) and (arms is None or p[4] in arms)]


OLD_ACTION = "sensitivity"  # the agent's action before rows recorded it (their policy.zip files say so)


def stage(arm: str, settings: dict) -> str:
    """A searching arm's finalists stage (and the searched arm's action when it is not the one the first rows
    ran), part of its round-2 key: a row picked another way is not the default search's, and stays in the
    record beside the current one."""
    k, action = settings.get("finalists", 0), settings.get("action", OLD_ACTION)
    parts = [f"top{k}-{settings['finalist_score']}"] if arm in SEEDED and k else []
    parts += [action] if arm in SEARCHING and action != OLD_ACTION else []
    return "-".join(parts + (["heur"] if arm in SEARCHING and settings.get("heuristic_finalists") else []))


def _key(model: str, recipe: str, seed: int, target: float, arm: str, round: int = 1,
         start: str = "recalibrated", stage: str = "") -> str:
    return (f"{model}|{recipe}|{seed}|{target:g}|{arm}" + ("" if round == 1 else f"|r{round}")
            + ("" if start == "recalibrated" else f"|{start}") + (f"|{stage}" if stage else ""))


def _key_r2(model: str, recipe: str, seed: int, target: float, arm: str) -> str:
    """A planned round-2 row's key under today's default search."""
    return _key(model, recipe, seed, target, arm, 2, stage=stage(arm, round2_settings()))


def row_key(r: dict) -> str:
    return _key(r["model"], r["recipe"], r["seed"], r["target"], r["arm"], r.get("round", 1),
                r.get("start", "recalibrated"), stage(r["arm"], r["settings"]) if r.get("round") == 2 else "")


def load() -> dict:
    if OUT.exists():
        record = json.loads(OUT.read_text())
        for r in record["rows"]:
            r.setdefault("round", 1)
            # round 2's first rows started from the default score's refitted weights
            r.setdefault("start", "refitted" if r["round"] == 2 else "recalibrated")
        return record
    return {"command": "python -m bench.final_quality", "machine": machine(), "rows": []}


def save(record: dict) -> None:
    """Write the rows, taking in those another process (on other --seeds/--targets/--models) wrote meanwhile."""
    save_merged(OUT, record, {"rows": row_key})


class ModelBench:
    """One model's data, structure and evaluator, built once; allocations cached on disk."""

    def __init__(self, model: str, precision: str):
        self.model = model
        self.ws = open_workspace(model, str(finetuned_checkpoint(model)), DATA, val_size=VAL_SIZE,
                                 calib_size=CALIB_SIZE, precision=precision)
        self.structure = self.ws.structure()
        self.calib = self.ws.data.calibration_batches(128)
        self.scorer = Scorer(self.problem(0.5), self.ws.evaluator())  # keyed by keep counts: serves every target
        self.test = self.ws.data.tensors("test")
        self._scorers: dict[str, Scorer] = {"adaptive-bn": self.scorer}

    def scorer_for(self, score: str) -> Scorer:
        if score not in self._scorers:
            self._scorers[score] = Scorer(self.problem(0.5), self.ws.evaluator(score=score))
        return self._scorers[score]

    def allocation_r2(self, target: float, arm: str, seed: int) -> tuple[Allocation, float, float, dict]:
        """Round 2: (allocation, its default score, seconds to find it, settings), kept in WORK."""
        from autoprune.core.finalists import rerank

        settings = round2_settings()
        seed = seed if arm in SEEDED else 0
        tag = stage(arm, settings)
        tag = tag.replace(":", "")  # a file name every OS can check out
        path = WORK / "allocations-r2" / f"{self.model}_t{target:g}_{arm}_s{seed}{'_' + tag if tag else ''}.json"
        scorer = self.scorer_for(settings["score"])
        if arm in SEEDED:  # its own cache, so the finalists come from this search's candidates only (also on a
            scorer = Scorer(self.problem(0.5), scorer.evaluator)  # resumed search, whose cache is restored)
        if path.exists():
            saved = json.loads(path.read_text())
            return (Allocation.from_dict(saved, self.structure), saved["score_value"], saved["alloc_seconds"],
                    saved["settings"])
        problem = self.problem(target)
        t0 = time.perf_counter()
        also: list[Allocation] = []  # finalists whatever their search score
        if arm in SEARCHING:
            search = get_allocator(settings["agent"], episodes=EPISODES, warmup_episodes=WARMUP, seed=seed,
                                   action=settings["action"])
            run_dir = WORK / "searches-r2" / (f"{self.model}_t{target:g}_s{seed}"
                                                + ("" if settings["action"] == OLD_ACTION else f"_{settings['action']}"))
            found = search.search(problem, scorer, run_dir, resume=(run_dir / "checkpoints").exists())
            t0 -= found.resumed_seconds  # a resumed search's cost includes its earlier sessions
            alloc = found.allocation
            also = found.heuristics if settings.get("heuristic_finalists") else []
            if arm == "searched-universal":
                also = also + [self.universal(problem)]
        elif arm == "random":  # checkpointed like the search: a ResNet-56 random search outlasts a session
            run_dir = WORK / "searches-r2" / f"{self.model}_t{target:g}_s{seed}_random"
            found = RandomSearch(EPISODES, seed).search(problem, scorer, run_dir,
                                                        resume=(run_dir / "checkpoints").exists())
            t0 -= found.resumed_seconds
            alloc = found.allocation
        elif arm == "universal":
            alloc = self.universal(problem)
        else:
            alloc = get_allocator(arm).allocate(problem, scorer)
        finalists = None
        if arm in SEEDED and settings["finalists"]:  # the search's finalists stage, for both searching arms
            ranked = rerank(problem, scorer, self.scorer_for(settings["finalist_score"]), settings["finalists"],
                            also=also)
            alloc = ranked[0].allocation
            finalists = [{"counts": list(problem.key(f.allocation)), "search": f.search.value, "final": f.final.value}
                         for f in ranked]
        seconds = time.perf_counter() - t0
        value = scorer.value(alloc)
        alloc.save(path, self.structure, score_value=value, alloc_seconds=seconds, arm=arm, seed=seed, target=target,
                   settings=settings, finalists=finalists, precision=self.ws.precision.name)
        return alloc, value, seconds, settings

    def universal(self, problem: PruningProblem) -> Allocation:
        """The universal policy zero-shot, as ``apply`` runs it: its sensitivity features measured with the
        score it was trained on."""
        from autoprune.agents.policy import PolicyAllocator

        policy = PolicyAllocator(UNIVERSAL)
        return policy.allocate(problem, self.scorer_for(policy.score))

    def run_r2(self, recipe_name: str, seed: int, target: float, arm: str, epochs: float) -> dict:
        alloc, score_value, alloc_seconds, settings = self.allocation_r2(target, arm, seed)
        counts = alloc.counts(self.structure)
        macs = self.structure.macs(counts)
        # every arm starts from the plain pruned weights, BN recalibrated (as apply --finetune-epochs does):
        # the refitted weights the default score measures fine-tune worse (refit-start-check.json)
        net = self.problem(target).pruned_model(alloc)
        recalibrate_bn(net, self.calib)
        kd = recipe_name == "lr-rewind-kd"
        recipe = TrainRecipe(epochs=epochs, lr=0.01, schedule="cosine", **(KD if kd else {}))
        t0, c0 = time.perf_counter(), time.process_time()
        result = train(net, self.ws.data, recipe, seed=seed, macs_per_image=macs, progress=False,
                       precision=self.ws.precision, teacher=self.structure.model if kd else None)
        return {"round": 2, "model": self.model, "target": target, "arm": arm, "recipe": recipe_name, "seed": seed,
                "start": "recalibrated", "epochs": recipe.epochs, "score": settings["score"], "score_value": score_value,
                "proxy_acc": None, "settings": settings,
                "test_acc": accuracy(net, *self.test), "val_acc": accuracy(net, *self.ws.data.tensors("val")),
                "macs": macs, "macs_ratio": macs / self.structure.dense_macs, "train_gmacs": result.train_macs / 1e9,
                "seconds": time.perf_counter() - t0, "alloc_seconds": alloc_seconds,
                "cpu_seconds": time.process_time() - c0, "torch_threads": torch.get_num_threads(),
                "precision": self.ws.precision.name, "train_images": len(self.ws.data.train), "cpu": machine()["cpu"],
                "dense_test_acc": json.loads(finetuned_checkpoint(self.model).with_suffix(".json").read_text())["test_acc"]}

    def problem(self, target: float) -> PruningProblem:
        return PruningProblem(self.structure, target, calib_batches=self.calib)

    def allocation(self, target: float, arm: str, seed: int) -> tuple[Allocation, float, float]:
        """(allocation, adaptive-BN score, seconds to find it), computed once and kept in WORK."""
        seed = seed if arm in SEEDED else 0
        path = WORK / "allocations" / f"{self.model}_t{target:g}_{arm}_s{seed}.json"
        if path.exists():
            saved = json.loads(path.read_text())
            return Allocation.from_dict(saved, self.structure), saved["proxy_acc"], saved["alloc_seconds"]
        problem = self.problem(target)
        t0 = time.perf_counter()
        meta: dict = {}
        if arm == "searched":
            search = get_allocator("ddpg", episodes=EPISODES, warmup_episodes=WARMUP, seed=seed, **SEARCH_SETTINGS)
            run_dir = WORK / "searches" / f"{self.model}_t{target:g}_s{seed}"
            resume = (run_dir / "checkpoints").exists()
            alloc = search.search(problem, self.scorer, run_dir, resume=resume).allocation
            meta["search_config"] = asdict(search.config)
        elif arm == "random":
            alloc = get_allocator("random", samples=EPISODES, seed=seed).allocate(problem, self.scorer)
        else:
            alloc = get_allocator(arm).allocate(problem, self.scorer)
        seconds = time.perf_counter() - t0
        proxy = self.scorer.value(alloc)
        alloc.save(path, self.structure, proxy_acc=proxy, alloc_seconds=seconds, arm=arm, seed=seed, target=target,
                   precision=self.ws.precision.name, **meta)
        return alloc, proxy, seconds

    def run(self, recipe_name: str, seed: int, target: float, arm: str, epochs: float) -> dict:
        alloc, proxy, alloc_seconds = self.allocation(target, arm, seed)
        problem = self.problem(target)
        counts = alloc.counts(self.structure)
        macs = self.structure.macs(counts)
        ratio = macs / self.structure.dense_macs
        net = problem.pruned_model(alloc)
        if recipe_name == "scratch-B":
            reinitialise(net, seed)
            recipe = TrainRecipe(epochs=epochs / ratio, lr=0.1, schedule="cosine")
        else:
            recalibrate_bn(net, self.calib)
            recipe = TrainRecipe(epochs=epochs, lr=0.01, schedule="cosine")
        t0, c0 = time.perf_counter(), time.process_time()
        result = train(net, self.ws.data, recipe, seed=seed, macs_per_image=macs, progress=False,
                       precision=self.ws.precision)
        return {"round": 1, "model": self.model, "target": target, "arm": arm, "recipe": recipe_name, "seed": seed,
                "epochs": recipe.epochs, "proxy_acc": None if recipe_name == "scratch-B" else proxy,
                "test_acc": accuracy(net, *self.test), "val_acc": accuracy(net, *self.ws.data.tensors("val")),
                "macs": macs, "macs_ratio": ratio, "train_gmacs": result.train_macs / 1e9,
                "seconds": time.perf_counter() - t0, "alloc_seconds": alloc_seconds,
                # CPU seconds of the training (all threads): unaffected when the run is paused (SIGSTOP) for timings
                "cpu_seconds": time.process_time() - c0, "torch_threads": torch.get_num_threads(),
                "precision": self.ws.precision.name, "train_images": len(self.ws.data.train),
                "cpu": machine()["cpu"],  # the grid spans several runs, and runs land on different machines
                # the dense checkpoint is rebuilt per machine (same recipe, not bit-identical): name it
                "dense_test_acc": json.loads(finetuned_checkpoint(self.model).with_suffix(".json").read_text())["test_acc"]}


# -- the report ------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cpu(rows: list[dict]) -> str:
    """Mean CPU seconds of the rows that recorded them (wall time includes pauses for timing runs)."""
    cpu = [r["cpu_seconds"] for r in rows if "cpu_seconds" in r]
    return f"{statistics.mean(cpu):.0f} ({len(cpu)} of {len(rows)})" if cpu else "-"


def _paired_line(rows: list[dict]) -> str:
    """``searched`` minus every other arm, paired by seed."""
    by = {(r["arm"], r["seed"]): 100 * r["test_acc"] for r in rows}
    parts = [f"{arm} {d}" for arm in sorted({r["arm"] for r in rows} - {"searched"})
             if (d := paired_difference(by, "searched", arm))]
    return ("Searched minus, paired by seed (mean ± std; resolved: the 95% t-interval of the mean excludes 0): "
            + "; ".join(parts) + ".") if parts else "No seed has a searched row yet."


def report(record: dict, models: list[str]) -> str:
    base = json.loads((RESULTS / "base-models.json").read_text())["models"]
    done = {row_key(r) for r in record["rows"]}
    lines = ["# Final quality: accuracy after fine-tuning, by allocation method", "",
             __doc__.split("Protocol (also written at the top of ``final-quality.md``):\n")[1].split("\nRows go")[0],
             "", f"Command: `{record['command']}`. Raw rows: `final-quality.json`.", ""]
    pinned = sum(r.get("torch_threads") == 1 for r in record["rows"])
    if pinned:  # timings of rows run beside another benchmark are not comparable with the others
        lines += [f"Timings: {pinned} rows ran on one torch thread beside another one-thread benchmark "
                  "(`torch_threads` in the JSON); the others on two threads of an idle machine.", ""]
    cpus = Counter(r.get("cpu", "a machine not recorded (rows before the `cpu` field)") for r in record["rows"])
    if len(cpus) > 1:  # seconds compare only between rows of one machine
        lines += ["Machines: " + "; ".join(f"{n} rows on {cpu}" for cpu, n in cpus.most_common()) + ".", ""]
    for model in models:
        starts = sorted({r.get("dense_test_acc") for r in record["rows"] if r["model"] == model},
                        key=lambda v: -1 if v is None else v)
        # rows that all name one build of the dense checkpoint are measured from it; otherwise from the record
        dense = starts[0] if len(starts) == 1 and starts[0] is not None else base[model]["test_acc"]
        lines += [f"## {model} (dense test accuracy {100 * dense:.2f}%)", ""]
        if len(starts) > 1:  # the cached dense checkpoint is rebuilt per machine (same recipe, not bit-identical)
            lines += ["Rows started from more than one build of the dense checkpoint (same recipe and seed, another "
                      "machine): " + ", ".join("first build (row has no dense_test_acc)" if v is None
                                               else f"{100 * v:.2f}% test" for v in starts)
                      + f"; drops are from {100 * dense:.2f}%.", ""]
        for target in TARGETS:
            for recipe in ("lr-rewind", "scratch-B"):
                rows = [r for r in record["rows"] if r["model"] == model and r["target"] == target
                        and r["recipe"] == recipe and r.get("round", 1) == 1]
                if not rows:
                    continue
                arms = sorted({r["arm"] for r in rows},
                              key=lambda a: -statistics.mean(r["test_acc"] for r in rows if r["arm"] == a))
                lines += [f"### {100 * target:g}% of MACs, {recipe}", "",
                          "| rank | arm | test acc % (mean ± std) | drop (points) | adaptive-BN % | seeds | "
                          "epochs | MACs kept % | train GMACs | wall s per run | CPU s per run |",
                          "|---|---|---|---|---|---|---|---|---|---|---|"]
                for rank, arm in enumerate(arms, 1):
                    sel = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["seed"])
                    m, s = _mean_std([100 * r["test_acc"] for r in sel])
                    proxy = [100 * r["proxy_acc"] for r in sel if r["proxy_acc"] is not None]
                    proxy_text = f"{statistics.mean(proxy):.2f}" if proxy else "-"
                    lines.append(f"| {rank} | {arm} | {m:.2f} ± {s:.2f} | {100 * dense - m:.2f} | {proxy_text} | "
                                 f"{','.join(str(r['seed']) for r in sel)} | {sel[0]['epochs']:.3g} | "
                                 f"{100 * sel[0]['macs_ratio']:.1f} | {statistics.mean(r['train_gmacs'] for r in sel):,.0f} | "
                                 f"{statistics.mean(r['seconds'] for r in sel):.0f} | {_cpu(sel)} |")
                lines += ["", _paired_line(rows), ""]
    missing = [k for k in (_key(*p) for p in planned_rows(models)) if k not in done]
    lines += ["## Rows still missing (round 1)", ""]
    lines += ([f"{len(missing)} of {len(planned_rows(models))} planned rows (model|recipe|seed|target|arm): "
               + ", ".join(missing)] if missing else ["None: the protocol is complete for " + ", ".join(models) + "."])
    lines += ["", *report_r2(record, models)]
    return "\n".join(lines) + "\n"


def paired_interval(rows: list[dict], arm: str, other: str, recipe: str = "lr-rewind",
                    other_recipe: str | None = None) -> tuple[float, float, float, int] | None:
    """``arm`` minus ``other`` (test points), paired by seed: (mean, 95% t-interval low, high, n)."""
    a = {r["seed"]: 100 * r["test_acc"] for r in rows if r["arm"] == arm and r["recipe"] == recipe}
    b = {r["seed"]: 100 * r["test_acc"] for r in rows if r["arm"] == other and r["recipe"] == (other_recipe or recipe)}
    diffs = [a[k] - b[k] for k in sorted(set(a) & set(b))]
    if not diffs:
        return None
    m = statistics.mean(diffs)
    half = T95.get(len(diffs) - 1, 2.0) * statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    return m, m - half, m + half, len(diffs)


def _paired_text(name: str, d: tuple[float, float, float, int]) -> str:
    return f"{name} {d[0]:+.2f} " + (f"[{d[1]:+.2f}, {d[2]:+.2f}] (n={d[3]})" if d[3] > 1 else "(n=1: no interval)")


def report_r2(record: dict, models: list[str]) -> list[str]:
    plain_rows = [r for r in record["rows"] if r.get("round") == 2 and r.get("start", "recalibrated") == "recalibrated"]
    current = {_key_r2(*p) for p in planned_rows_r2(models)}
    rows2 = [r for r in plain_rows if row_key(r) in current]
    earlier = [r for r in plain_rows if row_key(r) not in current]  # a searching arm under an earlier default
    lines = ["# Round 2: the default pipeline against what a user would pick instead", "",
             "Every arm fine-tuned from its plain pruned weights, BN recalibrated.", "",
             "Settings of the searched and random arms: " + json.dumps(round2_settings()) + ".", ""]
    for model in models:
        for target in TARGETS:
            rows = [r for r in rows2 if r["model"] == model and r["target"] == target]
            if not rows:
                continue
            lines += [f"## {model}, {100 * target:g}% of MACs (round 2)", "",
                      "| arm | recipe | test acc % (mean ± std) | seeds | score | search s (mean) |",
                      "|---|---|---|---|---|---|"]
            keys = sorted({(r["arm"], r["recipe"]) for r in rows},
                          key=lambda k: -statistics.mean(100 * r["test_acc"] for r in rows if (r["arm"], r["recipe"]) == k))
            for arm, recipe in keys:
                sel = sorted((r for r in rows if r["arm"] == arm and r["recipe"] == recipe), key=lambda r: r["seed"])
                m, sd = _mean_std([100 * r["test_acc"] for r in sel])
                lines.append(f"| {arm} | {recipe} | {m:.2f} ± {sd:.2f} | {','.join(str(r['seed']) for r in sel)} | "
                             f"{statistics.mean(r['score_value'] for r in sel):.4f} | "
                             f"{statistics.mean(r['alloc_seconds'] for r in sel):.0f} |")
            lines += ["", "Search s: what finding the allocation cost, sensitivity sweeps included. Since the finalists "
                      "default, the searching arms score with their own cache, so the searched arm and the sensitivity "
                      "arm each measure the sweep (as a user running either would); earlier rows shared one sweep per "
                      "process, so sensitivity's read ~0 when the search ran first. universal's include its own sweep "
                      "(with its policy's score)."]
            diffs = []
            for other in ROUND2_ARMS[1:]:
                d = paired_interval(rows, "searched", other)
                if d:
                    diffs.append(_paired_text(other, d))
            lines += ["", "Searched minus each arm (lr-rewind, paired by seed, 95% t-interval): "
                      + ("; ".join(diffs) if diffs else "no pair yet") + "."]
            gains = []
            for arm in ROUND2_KD_ARMS:
                d = paired_interval(rows, arm, arm, "lr-rewind-kd", "lr-rewind")
                if d:
                    gains.append(_paired_text(arm, d))
            kd = [_paired_text(other, d) for other in ROUND2_KD_ARMS[1:]
                  if (d := paired_interval(rows, "searched", other, "lr-rewind-kd"))]
            lines += ["Distillation gain (lr-rewind-kd minus lr-rewind): " + ("; ".join(gains) if gains else "none yet")
                      + ".", "Searched minus each arm, both distilled (lr-rewind-kd): "
                      + ("; ".join(kd) if kd else "no pair yet") + ".", ""]
    if earlier:
        lines += ["## Searching arms under an earlier default (kept; not in the tables above)", "",
                  "| model | target | arm | recipe | seed | finalists | action | test acc % |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {100 * r['target']:g}% | {r['arm']} | {r['recipe']} | {r['seed']} | "
                  f"{stage(r['arm'], {**r['settings'], 'action': OLD_ACTION}) or 'none'} | "
                  f"{r['settings'].get('action', OLD_ACTION) if r['arm'] == 'searched' else '-'} | "
                  f"{100 * r['test_acc']:.2f} |" for r in earlier]
        lines.append("")
    refitted = [r for r in record["rows"] if r.get("round") == 2 and r.get("start") == "refitted"]
    if refitted:
        plain = {row_key(r): r for r in plain_rows}
        lines += ["## Where to start fine-tuning: refitted weights against the plain recalibrated ones", "",
                  "The same allocation, recipe and seed; the refitted start is the default score's prepared model.", "",
                  "| model | target | arm | seed | refitted start % | recalibrated start % | difference |",
                  "|---|---|---|---|---|---|---|"]
        for r in refitted:
            p = plain.get(_key(r["model"], r["recipe"], r["seed"], r["target"], r["arm"], 2,
                               stage=stage(r["arm"], r["settings"])))
            lines.append(f"| {r['model']} | {100 * r['target']:g}% | {r['arm']} | {r['seed']} | "
                         f"{100 * r['test_acc']:.2f} | " + (f"{100 * p['test_acc']:.2f} | "
                         f"{100 * (p['test_acc'] - r['test_acc']):+.2f} |" if p else "not run yet | |"))
        lines.append("")
    done = {row_key(r) for r in rows2}
    missing = [_key_r2(*p) for p in planned_rows_r2(models) if _key_r2(*p) not in done]
    lines += ["## Rows still missing (round 2)", "",
              f"{len(missing)} of {len(planned_rows_r2(models))} planned rows" + (": " + ", ".join(missing) if missing
                                                                                  else ".")]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"], choices=sorted(EPOCHS))
    p.add_argument("--precision", default="auto")
    p.add_argument("--round", type=int, default=1, choices=(1, 2), help="which round's rows to run")
    p.add_argument("--report", action="store_true", help="only rewrite final-quality.md from the JSON")
    p.add_argument("--max-rows", type=int, default=None, help="stop after this many new rows")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="only these seeds' rows")
    p.add_argument("--recipes", nargs="+", default=None, choices=("lr-rewind", "scratch-B", "lr-rewind-kd"),
                   help="only these recipes")
    p.add_argument("--targets", nargs="+", type=float, default=None, choices=TARGETS,
                   help="only these MAC targets' rows")
    p.add_argument("--arms", nargs="+", default=None, choices=sorted(set(ARMS) | set(ROUND2_ARMS)),
                   help="only these arms' rows (a second process on the same seed and target: give each its arms)")
    args = p.parse_args(argv)
    if args.seeds is not None and (unknown := set(args.seeds) - {s for m in args.models for s in SEEDS[m]}):
        p.error(f"--seeds {sorted(unknown)} are not in the protocol ({', '.join(f'{m}: {SEEDS[m]}' for m in args.models)})")
    record = load()
    if not args.report:  # the command that ran the rows, not the one that rewrote the report
        record["command"] = "python -m bench.final_quality " + shlex.join(argv if argv is not None else sys.argv[1:])
    report_models = ["resnet20", "resnet56"]
    if not args.report:
        done = {row_key(r) for r in record["rows"]}
        benches: dict[str, ModelBench] = {}
        new = 0
        todo = rows_to_run(args.models, done, args.seeds, args.recipes, args.targets, args.arms, args.round)
        for model, recipe, seed, target, arm in todo:
            if args.max_rows is not None and new >= args.max_rows:
                break
            bench = benches.get(model) or benches.setdefault(model, ModelBench(model, args.precision))
            run = bench.run if args.round == 1 else bench.run_r2
            row = run(recipe, seed, target, arm, EPOCHS[model])
            record["rows"].append(row)
            save(record)
            new += 1
            (RESULTS / "final-quality.md").write_text(report(record, report_models))
            print(f"round {args.round} {model} {recipe} seed {seed} @{target:g} {arm}: test {100 * row['test_acc']:.2f}% "
                  + (f"(adaptive-BN {100 * row['proxy_acc']:.2f}%) " if row["proxy_acc"] is not None else "")
                  + f"in {row['seconds']:.0f} s", flush=True)
    (RESULTS / "final-quality.md").write_text(report(record, report_models))
    return 0


if __name__ == "__main__":
    sys.exit(main())
