"""``episode`` suite: where one RL search episode on ResNet-56 at 50% MACs spends its time, in fp32
and in the default precision (``auto``: bf16 on a CPU with native bf16), side by side.

Parts: prune (copy + physical channel removal), BN recalibration and evaluation (the evaluator's
forward passes plus their bookkeeping), agent update (SB3 gradient steps), other (env steps,
action selection, logging). The floor is the bare forward passes of the same pruned models,
timed separately: everything above it is overhead.

    python -m bench.run episode [--quick]
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer
from autoprune.core.structure import ModelStructure
from autoprune.models import IMAGENET_MEAN, IMAGENET_STD, create_model
from autoprune.train.evaluator import AdaptiveBNEvaluator

from .common import Report, bare_forward_passes, timed


def run_episode_suite(quick: bool) -> Report:
    from autoprune.train.data import make_bundle

    from .base_models import DATA

    rep = Report("episode", quick)
    bundle = make_bundle(DATA, IMAGENET_MEAN, IMAGENET_STD)
    for precision in ("fp32", "auto"):
        _episodes(rep, bundle, precision, quick)
    for name in ("episode_seconds", "floor/bare_forward_passes"):
        fp32, auto = (next(f for f in rep.figures if f["name"] == f"{p}/{name}") for p in ("fp32", "auto"))
        rep.add(f"speedup_auto_vs_fp32/{name}", fp32["median"] / auto["median"], "x", auto=auto["precision"])
    return rep


def _episodes(rep: Report, bundle, precision: str, quick: bool) -> None:
    from autoprune.agents import rl
    from autoprune.agents.rl.amc import AMCAgent

    torch.manual_seed(0)
    model = create_model("resnet56", 10).eval()  # timing does not depend on the weights
    vx, vy = bundle.tensors("val")
    calib = bundle.calibration_batches(128)
    structure = ModelStructure(model, vx[:1])
    evaluator = AdaptiveBNEvaluator(calib, vx, vy, precision=precision)
    p, resolved = f"{precision}/", evaluator.precision.name
    prune_times: list[float] = []

    @dataclass(frozen=True, eq=False)
    class TimedProblem(PruningProblem):
        def pruned_model(self, allocation: Allocation):
            t = time.perf_counter()
            out = super().pruned_model(allocation)
            prune_times.append(time.perf_counter() - t)
            return out

    problem = TimedProblem(structure, 0.5)
    original_pruned_model = PruningProblem(structure, 0.5).pruned_model
    update_times: list[float] = []
    original_train = AMCAgent.train

    def timed_train(self, gradient_steps: int, batch_size: int = 100) -> None:
        t = time.perf_counter()
        original_train(self, gradient_steps, batch_size)
        update_times.append(time.perf_counter() - t)

    warmup, learning = (1, 2) if quick else (3, 8)
    per_episode: list[dict] = []
    marks = {"prune": 0, "update": 0, "cal": 0, "eval": 0}
    last = [time.perf_counter()]

    def on_episode(episode: int, reward: float, info: dict) -> None:
        h = evaluator.timing.history
        now = time.perf_counter()
        per_episode.append({
            "episode": episode, "learning": episode >= warmup, "seconds": now - last[0],
            "prune": sum(prune_times[marks["prune"]:]), "update": sum(update_times[marks["update"]:]),
            "calibrate": sum(c for c, _ in h[marks["cal"]:]), "evaluate": sum(e for _, e in h[marks["eval"]:]),
            "allocation": info["allocation"],
        })
        marks.update(prune=len(prune_times), update=len(update_times), cal=len(h), eval=len(h))
        last[0] = time.perf_counter()

    AMCAgent.train = timed_train  # type: ignore[method-assign]
    try:
        search = rl.RLSearch(episodes=warmup + learning, warmup_episodes=warmup, seed=0)
        t0 = last[0] = time.perf_counter()
        search.search(problem, Scorer(problem, evaluator), on_episode=on_episode)
        total = time.perf_counter() - t0
    finally:
        AMCAgent.train = original_train  # type: ignore[method-assign]
    seconds = [row["seconds"] for row in per_episode]
    floors = []
    for row in per_episode:  # pruning stays outside the timed region: the floor is forward passes only
        pruned = original_pruned_model(row["allocation"])
        floors.append(timed(lambda: bare_forward_passes(pruned, calib, vx, precision), 1, warmup=0)[0])
    learn = [r for r in per_episode if r["learning"]]
    rep.add(p + "episode_seconds", seconds, "s", episodes=len(seconds), warmup=warmup, precision=resolved)
    for part in ("prune", "calibrate", "evaluate", "update"):
        rep.add(f"{p}part/{part}", [r[part] for r in learn], "s")
    other = [s - r["prune"] - r["calibrate"] - r["evaluate"] - r["update"]
             for s, r in zip(seconds[warmup:], learn)]
    rep.add(p + "part/other", other, "s")
    rep.add(p + "floor/bare_forward_passes", floors[warmup:], "s", calib_images=len(bundle.calib),
            val_images=len(vy), precision=resolved)
    rep.add(p + "overhead_share_of_episode", [1 - f / s for f, s in zip(floors[warmup:], seconds[warmup:])],
            "fraction")
    rep.add(p + "episodes_per_minute", 60 * len(seconds) / total, "1/min")
    rep.notes[p + "per_episode"] = [{k: v for k, v in r.items() if k != "allocation"} for r in per_episode]
    rep.notes["how_to_read"] = ("fp32/ and auto/ (the default precision) prefixes; parts are per learning episode "
                                "(after warm-up); floor = the same pruned models' calibration + evaluation forward "
                                "passes alone, in that precision; overhead share = 1 - floor / episode.")


if __name__ == "__main__":
    run_episode_suite(quick=True).write()
