"""``run_search(config)``: the search pipeline behind ``autoprune search``, callable from Python.

Load the model and data, build the problem and its scorer, let the agent (RL or random) search,
then score the best allocation and the uniform one in full, fit the latency when asked, save the
pruned model as it was scored, and write the run folder: config.yaml, episodes.csv, TensorBoard
events, checkpoints/, best_allocation.json, best_model.pt, policy files (RL), summary.json and
plots. Every agent keeps one resume and log contract (``autoprune.agents.search_log``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from autoprune.agents.rl.config import HELP as RL_HELP
from autoprune.agents.rl.config import RLConfig
from autoprune.agents.search_log import SearchResult, annotate_episodes, write_best_allocation
from autoprune.config import nested, save_config
from autoprune.core.allocation import Allocation
from autoprune.core.finalists import check_finalists, rerank
from autoprune.core.problem import PruningProblem, uniform_allocation
from autoprune.core.scoring import Scorer
from autoprune.core.sensitivity import FILE as SENSITIVITY_FILE
from autoprune.core.sensitivity import cached_sensitivity, find_table, load_tables, table_key
from autoprune.errors import AutopruneError
from autoprune.experiments.targets import HELP as TARGET_HELP
from autoprune.experiments.targets import TargetOptions
from autoprune.runs import check_run_dir
from autoprune.train.scores import DEFAULT_SCORE
from autoprune.workspace import INPUT_HELP, PARALLEL_HELP, ParallelOptions, Workspace, WorkspaceOptions

AGENTS = ("ddpg", "td3", "sac", "random")


@dataclass
class SearchConfig:
    output: str
    ws: WorkspaceOptions = nested(WorkspaceOptions, exclude=("train_subset", "image_size"), val_size=2000,
                                  calib_size=1024)  # --model, --checkpoint, --data, ...
    target: TargetOptions = nested(TargetOptions)  # --macs | --params | --latency, --latency-batch, ...
    parallel: ParallelOptions = nested(ParallelOptions)  # --workers, --ray-address
    agent: str = "ddpg"
    more_models: list[str] = field(default_factory=list)  # NAME or NAME=CHECKPOINT: one policy for all of them
    rl: RLConfig = nested(RLConfig, exclude=("algo", "seed"))  # episodes, noise, learning rates, reward, action, ...
    early_stop: bool = False
    finalists: int = 3  # re-rank the best K candidates with --finalist-score (0: pick by --score alone)
    finalist_score: str = "finetune:50"  # the stage that gained on every proxy-validity pool per added minute
    candidates: list[str] = field(default_factory=list)  # allocations found without search that join the finalists
    sensitivity: str | None = None  # a sensitivity.json measured before with the same score: its sweep is reused
    score: str = DEFAULT_SCORE  # autoprune.train.scores: adaptive-bn[:loss|:kd], reconstruct, finetune[-kd]:STEPS
    criterion: str = "l1"
    min_keep: float = 0.2
    max_keep: float = 1.0
    round_to: int = 1
    calib_batch_size: int = 128
    resume: bool = False
    progress: bool = True


HELP = {
    **RL_HELP,
    **PARALLEL_HELP,
    "output": "run directory (refused if it holds another run, unless --resume)",
    "input_size": INPUT_HELP["input_size"],
    **TARGET_HELP,
    "agent": f"one of {', '.join(AGENTS)}",
    "val_size": "held-out training images scoring each episode",
    "early_stop": "multi-fidelity scoring: stop scoring a candidate once it surely (99%) cannot beat the best so far; "
                  "its partial estimate is flagged in episodes.csv (images, partial) and never reported as a full score",
    "calib_size": "training images recalibrating BatchNorm for each episode",
    "score": "what each candidate is scored by (higher is better): adaptive-bn (EagleEye: BN recalibrated, then held-out "
             "top-1), reconstruct (layers after a cut refitted by least squares to the dense outputs, then adaptive "
             "BN: the refitted weights are what best_model.pt holds), finetune:STEPS / finetune-kd:STEPS (adaptive BN, "
             "then STEPS SGD steps of LR rewinding, plain or distilled from the dense model); any of them followed by "
             ":loss (held-out cross-entropy) or :kd (KL to the dense model's outputs: needs no labels). The RL "
             "--reward is computed from this score; bench/results/proxy-validity.md has each one's cost and ranking",
    "finalists": "two-stage selection: re-score the K best distinct feasible candidates (by --score), and the "
                 "sensitivity and uniform allocations the RL search played first, with --finalist-score and keep the "
                 "best of those; best_allocation.json and best_model.pt are that pick "
                 "(scored and saved by the finalist score), episodes.csv gets a finalist_score column. 0: off",
    "finalist_score": "the costlier score that re-ranks the finalists (any --score value)",
    "candidates": "allocators whose allocations join the finalists whatever their search score, e.g. "
                  "policy:bench/results/policies/universal.zip (rolled out as `apply` does: its sensitivity features "
                  "measured by the score it was trained on), allocation:PATH, tp-global; the pick is then never "
                  "below them by --finalist-score (needs --finalists > 0 and one target)",
    "resume": "continue the interrupted run in --output. Its checkpoints are pickles (they can run code when "
              "read): trust a run folder like code, resume only your own; one written by another autoprune "
              "version is refused before anything in it is unpickled",
    "sensitivity": "reuse the sensitivity sweep in this sensitivity.json (another search's or compare's run folder, "
                   "same model and score) instead of measuring it; copied into this run folder",
    "more_models": "train the same policy on these models too (NAME or NAME=CHECKPOINT, same data and target): "
                   "episodes alternate between the models, reward 'relative', one log per model (0-<groups>g/, ...)",
}


@dataclass
class SearchRun:
    """What ``run_search`` found and saved (every figure is also in ``summary.json``)."""

    run_dir: Path
    allocation: Allocation  # saved as best_allocation.json and best_model.pt
    score: float  # the allocation's full score (``score_label`` names it)
    score_label: str
    uniform_score: float
    saved_model_accuracy: float  # best_model.pt as loaded from disk: plain accuracy, same held-out images
    dense_accuracy: float
    search: SearchResult
    summary: dict[str, Any]


def check_search_config(cfg: SearchConfig) -> SearchConfig:
    """Every one-line error a config can raise before any data is read; returns the config the run uses
    (several models or a target range train on reward 'relative')."""
    from autoprune.envs import REWARDS
    from autoprune.train.scores import parse_score

    _, target, target_hi = cfg.target.resolve_range()
    if cfg.agent not in AGENTS:
        raise AutopruneError(f"unknown agent '{cfg.agent}': use one of {', '.join(AGENTS)}")
    if cfg.sensitivity is not None:
        load_tables(cfg.sensitivity)  # a missing or foreign file is a one-line error before any data is read
    if cfg.more_models and cfg.agent == "random":
        raise AutopruneError("--more-models trains one policy on several models: use an RL --agent, not random")
    if target_hi > target and cfg.agent == "random":
        raise AutopruneError("a target range trains a budget-conditioned policy: use an RL --agent, not random")
    spec = parse_score(cfg.score)
    if cfg.early_stop and spec.metric != "top1":
        raise AutopruneError(f"--early-stop stops top-1 scores only, and --score {cfg.score} is not one: add --score "
                             f"{spec.preparation} (its top-1), or drop --early-stop")
    check_finalists(cfg.finalists, cfg.finalist_score)
    if cfg.candidates:
        if not cfg.finalists:
            raise AutopruneError("--candidates join the finalists stage: pass --finalists K (K > 0) with them")
        if target_hi > target:
            raise AutopruneError("--candidates are allocations at one target: drop them, or search one --macs")
        from autoprune.agents import get_allocator
        for spec in cfg.candidates:
            get_allocator(spec)  # an unknown name or a missing / corrupt file is a one-line error here
    if cfg.rl.episodes < 1:
        raise AutopruneError(f"--episodes {cfg.rl.episodes} must be at least 1")
    if cfg.rl.reward not in REWARDS:
        raise AutopruneError(f"unknown reward '{cfg.rl.reward}': use one of {', '.join(REWARDS)}")
    if (cfg.more_models or target_hi > target) and cfg.rl.reward == "accuracy":
        # models, or episodes at different budgets, must compare: accuracy minus each one's uniform allocation's
        why = "several models" if cfg.more_models else f"target range {target:g}:{target_hi:g}"
        print(f"{why}: reward 'relative' (score minus the uniform allocation's, per model and target)")
        cfg = replace(cfg, rl=replace(cfg.rl, reward="relative"))
    return cfg


def run_search(cfg: SearchConfig) -> SearchRun:
    """Run (or, with ``cfg.resume``, continue) a search and write its run folder."""
    from autoprune.agents.random_search import RandomSearch
    from autoprune.agents.rl import RLSearch

    cfg = check_search_config(cfg)
    out = Path(cfg.output)
    check_run_dir(out, cfg.resume)
    t_start = time.perf_counter()
    ws = cfg.ws.open()
    problem = _problem(cfg, ws)
    scorer = ws.scorer(problem, cfg.score, calib_batch_size=cfg.calib_batch_size, seed=cfg.ws.seed,
                       early_stop=cfg.early_stop, parallel=cfg.parallel)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    try:
        if cfg.agent == "random":
            result = RandomSearch(cfg.rl.episodes, cfg.ws.seed).search(problem, scorer, out, cfg.resume, cfg.progress)
        else:
            problems, scorers, names = [problem], [scorer], [cfg.ws.model]
            for spec in cfg.more_models:  # NAME or NAME=CHECKPOINT
                name, _, checkpoint = spec.partition("=")
                other_ws = replace(cfg.ws, model=name, checkpoint=checkpoint or None).open()
                problems.append(_problem(cfg, other_ws))
                scorers.append(other_ws.scorer(problems[-1], cfg.score, calib_batch_size=cfg.calib_batch_size,
                                               seed=cfg.ws.seed, early_stop=cfg.early_stop))
                names.append(name)
            # once per model and score, on the workers when there are some; a resumed run reads it back
            tables = [cached_sensitivity(out, p, sc, model=n, reuse=cfg.sensitivity)
                      for p, sc, n in zip(problems, scorers, names)]
            result = RLSearch(cfg.rl, algo=cfg.agent, seed=cfg.ws.seed).search(
                problems if len(problems) > 1 else problem, scorers if len(scorers) > 1 else scorer, out,
                resume=cfg.resume, progress=cfg.progress, sensitivity=tables if len(tables) > 1 else tables[0])
    finally:
        if scorer.pool is not None:
            scorer.pool.close()
    scorer.full_scores()  # every figure reported from here on is a full score
    candidates = _candidates(cfg, ws, problem, out)
    return _finish(cfg, ws, problem, scorer, result, out, time.perf_counter() - t_start, candidates)


def _candidates(cfg: SearchConfig, ws: Workspace, problem: PruningProblem, out: Path) -> dict[str, Allocation]:
    """``--candidates``: each allocator's allocation, no search. One that reads sensitivity gets it measured
    by its own score (a policy's: what it was trained on, as ``apply`` does; otherwise the search's, whose
    sweep the run folder already holds), cached in the run folder's sensitivity.json."""
    from autoprune.agents import UsesSensitivity, get_allocator

    found = {}
    for spec in cfg.candidates:
        allocator = get_allocator(spec)
        scorer = None
        if isinstance(allocator, UsesSensitivity) and allocator.sensitivity is None \
                and getattr(allocator, "table_path", None) is None:  # sensitivity@table=PATH brings its own
            scorer = ws.scorer(problem, getattr(allocator, "score", cfg.score), calib_batch_size=cfg.calib_batch_size,
                               seed=cfg.ws.seed)
            allocator.sensitivity = cached_sensitivity(out, problem, scorer, model=cfg.ws.model,
                                                       ratios=tuple(sorted(allocator.rates)))
        found[spec] = allocator.allocate(problem, scorer)
    return found


def _problem(cfg: SearchConfig, ws: Workspace) -> PruningProblem:
    metric, target, target_hi = cfg.target.resolve_range()
    return ws.problem(target, metric, criterion=cfg.criterion, min_keep=cfg.min_keep, max_keep=cfg.max_keep,
                      round_to=cfg.round_to, latency=cfg.target.table(ws.structure(), cfg.round_to),
                      target_range=(target, target_hi) if target_hi > target else None,
                      calib_batch_size=cfg.calib_batch_size)


def _finish(cfg: SearchConfig, ws: Workspace, problem: PruningProblem, scorer: Scorer, result: SearchResult,
            out: Path, search_seconds: float, candidates: dict[str, Allocation] | None = None) -> SearchRun:
    """Full scores of the best and the uniform allocation, the saved model, best_allocation.json, plots,
    summary.json."""
    from autoprune.experiments.plots import plot_curve, plot_per_group
    from autoprune.train.artifacts import save_calibrated
    from autoprune.train.evaluator import accuracy

    structure, target_range = problem.structure, problem.target_range
    best_alloc, best_score = result.allocation, result.best.info.get("accuracy")
    policy_at = None
    if target_range is not None:  # the best episode's own budget, and the kept policy at the range's ends and middle
        policy_at = _policy_at_targets(out / "policy.zip", problem, scorer)
        problem = problem.with_target(float(result.best.info.get("target") or problem.target))
    problem = replace(problem, target_range=None)
    uniform = uniform_allocation(problem)
    best_score = scorer.value(best_alloc) if best_score is None else best_score
    kind, final_scorer, finalists = cfg.score, scorer, None
    if cfg.finalists:  # two-stage selection: the finalist score picks among the search's best K
        kind = cfg.finalist_score
        final_scorer = ws.scorer(problem, kind, calib_batch_size=cfg.calib_batch_size, seed=cfg.ws.seed)
        candidates = candidates or {}
        ranked = rerank(problem, scorer, final_scorer, cfg.finalists,
                        also=result.heuristics + list(candidates.values()))
        played_first = {problem.key(a) for a in result.heuristics}
        named = {problem.key(a): spec for spec, a in candidates.items()}
        finalists = {"score": kind, "k": cfg.finalists,
                     "search_pick": {"counts": [int(c) for c in best_alloc.counts(structure)], "score_value": best_score},
                     "candidates": [{"counts": list(problem.key(f.allocation)), "search_score_value": f.search.value,
                                     "finalist_score_value": f.final.value, "seconds": f.final.seconds,
                                     "heuristic": problem.key(f.allocation) in played_first,
                                     "candidate": named.get(problem.key(f.allocation))}
                                    for f in ranked]}
        if (out / "episodes.csv").exists():
            annotate_episodes(out / "episodes.csv", structure,
                              {problem.key(f.allocation): f.final.value for f in ranked}, "finalist_score")
        best_alloc, best_score = ranked[0].allocation, ranked[0].final.value
    uniform_score = final_scorer.value(uniform)
    searched = {"score_value": best_score, "counts": [int(c) for c in best_alloc.counts(structure)]}
    best_alloc, latency_fit = cfg.target.fit(problem, best_alloc)
    if [int(c) for c in best_alloc.counts(structure)] != searched["counts"]:
        best_score = final_scorer.value(best_alloc)  # the re-scaled allocation is what is saved: score it
    vx, vy = ws.data.tensors("val", ws.device)
    dense_acc = accuracy(ws.model, vx, vy)
    evaluator = final_scorer.evaluator
    saved_acc, saved = save_calibrated(problem.pruned_model(best_alloc), cfg.ws.model, ws.data.num_classes,
                                       out / "best_model.pt", evaluator.calib_batches, vx, vy,
                                       prepare=None if kind == "adaptive-bn" else evaluator.prepare,
                                       criterion=cfg.criterion, score_value=best_score, score=kind)
    write_best_allocation(out / "best_allocation.json", best_alloc, structure, score=kind,
                          score_value=best_score, episode=result.best.episode, reward=result.best.info.get("reward"),
                          metric=problem.metric, target=problem.target, uniform_score_value=uniform_score)
    marks = {"uniform": uniform_score} if cfg.rl.reward == "accuracy" else None
    plot_curve(result.rewards, out / "reward.png", title=f"{cfg.ws.model}, {problem.metric} x{problem.target:g}, "
               f"{cfg.agent}", ylabel=cfg.rl.reward, marks=marks,
               highlight={"policy without noise": result.noise_free} if result.noise_free else None)
    plot_per_group([g.name for g in structure.groups],
                   {"best": best_alloc.ratios(structure), "uniform": uniform.ratios(structure)},
                   out / "allocation.png", title=f"channels kept per group ({problem.metric} x{problem.target:g})")
    sensitivity = None
    if (out / SENSITIVITY_FILE).exists():  # the RL agents' sweep: its cost, and its allocation by the search's score
        table = find_table(load_tables(out), table_key(problem, scorer.evaluator.kind, cfg.ws.model))
        if table is not None:
            sensitivity = {"evaluations": table.evaluations, "seconds": table.seconds,
                           "search_score_value": scorer.value(table.allocation(problem))}
    policy = None
    if result.policy_episode >= 0:
        policy = {"noise_free_reward": result.policy_score, "episode": result.policy_episode,
                  "distilled": result.policy_distilled}
    summary = {
        "model": cfg.ws.model, "agent": cfg.agent, "precision": ws.precision.name, "metric": problem.metric,
        "target": problem.target, "score": kind, "search_score": cfg.score, "reward": cfg.rl.reward,
        "episodes": result.episodes, "finalists": finalists,
        "input_size": list(ws.input_size), "dense_macs": structure.dense_macs,
        "best": {"score_value": best_score, "macs": best_alloc.macs(structure), "params": best_alloc.params(structure),
                 "saved_model_val_accuracy": saved_acc,
                 "cost_ratio": problem.cost(best_alloc.counts(structure)) / problem.dense_cost},
        "uniform": {"score_value": uniform_score, "search_score_value": scorer.value(uniform),
                    "macs": uniform.macs(structure),
                    "cost_ratio": problem.cost(uniform.counts(structure)) / problem.dense_cost},
        "policy": policy,
        "sensitivity": sensitivity,
        "target_range": list(target_range) if target_range else None,
        "policy_at_targets": policy_at,
        "latency": (cfg.target.measured(saved, structure.model, problem.latency, best_alloc.counts(structure))
                    if problem.latency is not None else None),
        "latency_fit": {"searched": searched, "measurements": latency_fit} if latency_fit else None,
        "dense_val_accuracy": dense_acc,
        "seconds_per_episode": result.seconds / max(1, result.episodes),
        "evaluator_share": result.eval_seconds / result.seconds if result.seconds > 0 and result.eval_seconds > 0
        else None,  # None: scored on workers
        "workers": cfg.parallel.workers,
        "wall_seconds_this_process": search_seconds,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return SearchRun(out, best_alloc, best_score, final_scorer.label, uniform_score, saved_acc, dense_acc, result,
                     summary)


def _policy_at_targets(policy_path: Path, problem: PruningProblem, scorer: Scorer) -> list[dict]:
    """The kept policy rolled out (no noise, no search) at the range's ends and middle, against uniform."""
    from autoprune.agents.policy import PolicyAllocator

    allocator, rows = PolicyAllocator(policy_path), []
    lo, hi = problem.target_range
    for t in (lo, round((lo + hi) / 2, 2), hi):
        at = replace(problem, target=t, target_range=None)
        alloc = allocator.allocate(at, scorer)  # the sensitivity sweep is in the scorer's cache
        rows.append({"target": t, "policy_score": scorer.value(alloc),
                     "uniform_score": scorer.value(uniform_allocation(at)),
                     "cost_ratio": at.cost(alloc.counts(at.structure)) / at.dense_cost})
    return rows
