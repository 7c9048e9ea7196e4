"""``autoprune search``: learn per-group keep ratios for a budget (RL or random search), keep the best.

The run directory holds config.yaml, episodes.csv, TensorBoard events (tb/), checkpoints/,
policy.zip (RL agents: the actor whose noise-free episode scored best; final_policy.zip is the
last one), best_allocation.json, best_model.pt, summary.json and PNG plots.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from autoprune.agents.rl.config import HELP as RL_HELP
from autoprune.agents.rl.config import RLConfig
from autoprune.cli.targets import HELP as TARGET_HELP
from autoprune.cli.targets import TargetOptions
from autoprune.config import add_config_args, nested, resolve_resumable, save_config
from autoprune.errors import AutopruneError
from autoprune.runs import check_run_dir
from autoprune.workspace import PARALLEL_HELP, ParallelOptions, WorkspaceOptions

NAME = "search"
HELP = "Search per-group pruning ratios for a MACs/params target with RL (DDPG/TD3/SAC) or random search."

AGENTS = ("ddpg", "td3", "sac", "random")
_RESUMABLE_CHANGES = {"episodes", "progress", "device", "workers", "ray_address"}


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
    score: str = "adaptive-bn"  # adaptive-bn | finetune:STEPS (autoprune.train.scores)
    criterion: str = "l1"
    min_keep: float = 0.2
    max_keep: float = 1.0
    round_to: int = 1
    calib_batch_size: int = 128
    resume: bool = False
    progress: bool = True


_HELP = {
    **RL_HELP,
    **PARALLEL_HELP,
    "output": "run directory (refused if it holds another run, unless --resume)",
    **TARGET_HELP,
    "agent": f"one of {', '.join(AGENTS)}",
    "val_size": "held-out training images scoring each episode",
    "early_stop": "multi-fidelity scoring: stop scoring a candidate once it surely (99%) cannot beat the best so far; "
                  "its partial estimate is flagged in episodes.csv (images, partial) and never reported as a full score",
    "calib_size": "training images recalibrating BatchNorm for each episode",
    "score": "what each candidate is scored by: adaptive-bn (EagleEye: BN recalibrated, then held-out accuracy) or "
             "finetune:STEPS (BN recalibrated, STEPS SGD steps of LR-rewind fine-tuning, then held-out accuracy: "
             "~20x the cost; ranked allocations more like a 2-epoch fine-tune: bench/results/proxy-validity.json). "
             "The RL --reward is computed from this score",
    "resume": "continue the interrupted run in --output. Its checkpoints are pickles (they can run code when "
              "read): trust a run folder like code, resume only your own; one written by another autoprune "
              "version is refused before anything in it is unpickled",
    "more_models": "train the same policy on these models too (NAME or NAME=CHECKPOINT, same data and target): "
                   "episodes alternate between the models, reward 'relative', one log per model (0-<groups>g/, ...)",
}


def add_arguments(parser) -> None:
    add_config_args(parser, SearchConfig, _HELP)


def run(args) -> None:
    cfg = resolve_resumable(SearchConfig, args, _RESUMABLE_CHANGES)
    metric, target, target_hi = cfg.target.resolve_range()
    target_range = (target, target_hi) if target_hi > target else None
    if cfg.more_models and cfg.agent == "random":
        raise AutopruneError("--more-models trains one policy on several models: use an RL --agent, not random")
    if cfg.more_models and cfg.rl.reward == "accuracy":  # the models' accuracies differ: compare to each one's uniform
        print("several models: reward 'relative' (adaptive-BN accuracy minus each model's uniform allocation's)")
        cfg.rl.reward = "relative"
    if target_range is not None:
        if cfg.agent == "random":
            raise AutopruneError("a target range trains a budget-conditioned policy: use an RL --agent, not random")
        if cfg.rl.reward == "accuracy":  # episodes at different budgets must compare: accuracy minus uniform's
            print(f"target range {target:g}:{target_hi:g}: reward 'relative' (adaptive-BN accuracy minus the uniform "
                  "allocation's at each episode's target)")
            cfg.rl.reward = "relative"
    if cfg.agent not in AGENTS:
        raise AutopruneError(f"unknown agent '{cfg.agent}': use one of {', '.join(AGENTS)}")
    from autoprune.train.scores import finetune_steps

    finetune_steps(cfg.score)  # a bad --score fails before any data is read
    if cfg.rl.episodes < 1:
        raise AutopruneError(f"--episodes {cfg.rl.episodes} must be at least 1")
    from autoprune.envs import REWARDS

    if cfg.rl.reward not in REWARDS:
        raise AutopruneError(f"unknown reward '{cfg.rl.reward}': use one of {', '.join(REWARDS)}")
    out = Path(cfg.output)
    check_run_dir(out, cfg.resume)

    from autoprune.agents.uniform import UniformAllocator
    from autoprune.core.problem import PruningProblem
    from autoprune.experiments.plots import plot_curve, plot_per_group
    from autoprune.train.artifacts import save_calibrated
    from autoprune.train.evaluator import accuracy

    t_start = time.perf_counter()
    ws = cfg.ws.open()
    structure = ws.structure()
    calib = ws.data.calibration_batches(cfg.calib_batch_size, ws.device)
    evaluator = ws.evaluator(cfg.calib_batch_size, cfg.score, cfg.ws.seed)
    problem = PruningProblem(structure, target, metric, evaluator, cfg.criterion, calib, cfg.min_keep, cfg.max_keep,
                             cfg.round_to, early_stop=cfg.early_stop, latency=cfg.target.table(structure, cfg.round_to),
                             target_range=target_range)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")

    policy = None
    pool = cfg.parallel.attach(problem)
    if cfg.agent == "random":
        best_alloc, best_acc = _random_search(cfg, problem, out)
    else:
        from autoprune.agents.rl import RLSearch

        problems = [problem] + [_other_problem(cfg, spec, problem) for spec in cfg.more_models]
        result = RLSearch(cfg.rl, algo=cfg.agent, seed=cfg.ws.seed).search(
            problems if len(problems) > 1 else problem, out, resume=cfg.resume, progress=cfg.progress)
        best_alloc, best_acc = result.allocation, result.best.info.get("accuracy")
        if result.policy_episode >= 0:
            policy = {"noise_free_reward": result.policy_score, "episode": result.policy_episode,
                      "distilled": result.policy_distilled}

    if pool is not None:
        pool.close()
        problem.pool = None
    problem.early_stop = False  # every figure reported from here on is a full score
    if target_range is not None:  # the best episode's own budget, and the kept policy at the range's ends and middle
        problem.target_range = None  # from here on, targets are set, not sampled
        target = problem.target = float(result.best.info.get("target") or target)
        policy_at = _policy_at_targets(out / "policy.zip", problem, target_range)
        problem.target = target
    uniform = UniformAllocator().allocate(problem)
    uniform_acc = problem.score(uniform)
    best_acc = problem.score(best_alloc) if best_acc is None else best_acc
    searched = {"adaptive_bn_accuracy": best_acc, "counts": [int(c) for c in best_alloc.counts(structure)]}
    best_alloc, latency_fit = cfg.target.fit(problem, best_alloc)
    if [int(c) for c in best_alloc.counts(structure)] != searched["counts"]:
        best_acc = problem.score(best_alloc)  # the re-scaled allocation is what is saved: score it
    vx, vy = ws.data.tensors("val", ws.device)
    dense_acc = accuracy(ws.model, vx, vy)
    saved_acc, saved = save_calibrated(problem.pruned_model(best_alloc), cfg.ws.model, ws.data.num_classes,
                                   out / "best_model.pt", evaluator.calib_batches, vx, vy,
                                   prepare=None if cfg.score == "adaptive-bn" else evaluator.prepare,
                                   criterion=cfg.criterion, adaptive_bn_accuracy=best_acc, score=cfg.score)
    best_alloc.save(out / "best_allocation.json", structure, adaptive_bn_accuracy=best_acc,
                    uniform_adaptive_bn_accuracy=uniform_acc, metric=metric, target=target, score=cfg.score)

    from autoprune.agents.search_log import episode_totals, read_episodes

    log_dir = out if not cfg.more_models else out / f"0-{len(structure.groups)}g"  # the main model's log
    rows = read_episodes(log_dir / "episodes.csv")
    episodes, seconds, eval_seconds = episode_totals(rows)
    rewards = [float(r["reward"]) for r in rows]
    noise_free = [i for i, r in enumerate(rows) if r["noise"] not in ("", None) and float(r["noise"]) == 0.0]
    marks = {"uniform": uniform_acc} if cfg.rl.reward == "accuracy" else None
    plot_curve(rewards, out / "reward.png", title=f"{cfg.ws.model}, {metric} x{target:g}, {cfg.agent}",
               ylabel=cfg.rl.reward, marks=marks, highlight={"policy without noise": noise_free} if noise_free else None)
    plot_per_group([g.name for g in structure.groups],
                   {"best": best_alloc.ratios(structure), "uniform": uniform.ratios(structure)},
                   out / "allocation.png", title=f"channels kept per group ({metric} x{target:g})")
    summary = {
        "model": cfg.ws.model, "agent": cfg.agent, "precision": ws.precision.name, "metric": metric, "target": target,
        "score": cfg.score,  # the "adaptive_bn_accuracy" fields hold this score (finetune:STEPS: after the fine-tune)
        "episodes": episodes,
        "best": {"adaptive_bn_accuracy": best_acc, "macs": best_alloc.macs(structure),
                 "params": best_alloc.params(structure), "saved_model_val_accuracy": saved_acc,
                 "cost_ratio": problem.cost(best_alloc.counts(structure)) / problem.dense_cost},
        "uniform": {"adaptive_bn_accuracy": uniform_acc, "macs": uniform.macs(structure),
                    "cost_ratio": problem.cost(uniform.counts(structure)) / problem.dense_cost},
        "policy": policy,
        "target_range": list(target_range) if target_range else None,
        "policy_at_targets": policy_at if target_range else None,
        "latency": (cfg.target.measured(saved, structure.model, problem.latency, best_alloc.counts(structure))
                    if problem.latency is not None else None),
        "latency_fit": {"searched": searched, "measurements": latency_fit} if latency_fit else None,
        "dense_val_accuracy": dense_acc,
        "seconds_per_episode": seconds / max(1, episodes),
        "evaluator_share": eval_seconds / seconds if seconds > 0 and eval_seconds > 0 else None,  # None: workers
        "workers": cfg.parallel.workers,
        "wall_seconds_this_session": time.perf_counter() - t_start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"dense: {100 * dense_acc:.2f}% val accuracy, {structure.dense_macs:,} MACs")
    label = evaluator.label
    print(f"best {cfg.agent} allocation: {100 * best_acc:.2f}% {label} accuracy at "
          f"{summary['best']['macs']:,} MACs ({100 * summary['best']['cost_ratio']:.1f}% of {metric})")
    print(f"best_model.pt as loaded from disk: {100 * saved_acc:.2f}% plain accuracy on the same held-out images")
    print(f"uniform allocation:  {100 * uniform_acc:.2f}% {label} accuracy at "
          f"{summary['uniform']['macs']:,} MACs ({100 * summary['uniform']['cost_ratio']:.1f}% of {metric})")
    if summary["latency"] is not None:
        lat = summary["latency"]
        print(f"best_model.pt latency (batch {lat['batch_size']}, {lat['precision']}): measured "
              f"{1e3 * lat['measured_seconds']:.2f} ms = {100 * lat['measured_ratio']:.1f}% of dense, "
              f"predicted {1e3 * lat['predicted_seconds']:.2f} ms")
    if policy is not None:
        score = (f"{100 * policy['noise_free_reward']:.2f}% {label} accuracy" if cfg.rl.reward == "accuracy"
                 else f"{cfg.rl.reward} {policy['noise_free_reward']:.4f}")
        how = ("fitted onto the best episode, plays it" if policy["distilled"]
               else f"the best noise-free episode, {policy['episode']}")
        print(f"kept policy (policy.zip): {score} when rolled out without noise ({how})")
    share = summary["evaluator_share"]
    where = (f"{100 * share:.0f}% in scoring ({label})" if share is not None
             else f"scored on {cfg.parallel.workers} Ray workers")
    print(f"{episodes} episodes, {summary['seconds_per_episode']:.2f} s/episode ({where}); run saved in {out}")


def _random_search(cfg: SearchConfig, problem, out: Path):
    """EagleEye's random search, logged like an RL run; ``checkpoints/random.json`` (the scores so far and
    the best) is rewritten after every candidate, so ``--resume`` continues with nothing scored twice."""
    from tqdm import tqdm

    from autoprune.agents.random_search import RandomSearch
    from autoprune.agents.search_log import Best, EpisodeLog
    from autoprune.core.problem import Score
    from autoprune.runs import write_json_atomic

    state_path = out / "checkpoints" / "random.json"
    state = json.loads(state_path.read_text()) if cfg.resume and state_path.exists() else None
    start = state["done"] if state else 0
    if state:
        problem.restore_cache({tuple(k): Score(a, n, bool(p)) for k, a, n, p in state["cache"]})
    log = EpisodeLog(out, problem.structure, start_episode=start)
    if state:
        log.best = Best.from_state(state["best"])
    timing = problem.evaluator.timing
    bar = tqdm(total=cfg.rl.episodes, initial=start, desc="search (random)", unit="ep", dynamic_ncols=True,
               disable=not cfg.progress)
    clock = {"t": time.perf_counter(), "e": timing.calibrate + timing.evaluate}
    workers = problem.pool.workers if problem.pool is not None else 1

    def on_sample(i: int, alloc, score: Score) -> None:
        counts = alloc.counts(problem.structure)
        now, ev = time.perf_counter(), timing.calibrate + timing.evaluate
        info = {"allocation": alloc, "macs": problem.structure.macs(counts), "params": problem.structure.params(counts),
                "cost_ratio": problem.cost(counts) / problem.dense_cost, "accuracy": score.accuracy, "score": score}
        # with workers, a batch's wall time is shared by its candidates; evaluator time is spent in the workers
        log.record(i, score.accuracy, info, seconds=now - clock["t"],
                   eval_seconds=(ev - clock["e"]) if workers == 1 else 0.0)
        clock.update(t=now, e=ev)
        cache = [[list(k), v.accuracy, v.images, int(v.partial)] for k, v in problem.cache_state().items()]
        write_json_atomic(state_path, {"done": i + 1, "cache": cache, "best": log.best.to_state()}, indent=None)
        bar.update(1)
        bar.set_postfix(best=f"{100 * log.best.score:.2f}%", refresh=False)

    state_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        best = RandomSearch(cfg.rl.episodes, cfg.ws.seed, on_sample).allocate(problem, start=start)
    finally:
        bar.close()
        log.close()
    return best, problem.score(best)


def _policy_at_targets(policy_path: Path, problem, target_range: tuple[float, float]) -> list[dict]:
    """The kept policy rolled out (no noise, no search) at the range's ends and middle, against uniform."""
    from autoprune.agents.policy import PolicyAllocator
    from autoprune.core.problem import uniform_allocation

    allocator, rows = PolicyAllocator(policy_path), []
    lo, hi = target_range
    for t in (lo, round((lo + hi) / 2, 2), hi):
        problem.target = t
        alloc = allocator.allocate(problem)
        rows.append({"target": t, "policy_adaptive_bn_accuracy": problem.score(alloc),
                     "uniform_adaptive_bn_accuracy": problem.score(uniform_allocation(problem)),
                     "cost_ratio": problem.cost(alloc.counts(problem.structure)) / problem.dense_cost})
        print(f"policy at {100 * t:g}% of {problem.metric}: {100 * rows[-1]['policy_adaptive_bn_accuracy']:.2f}% "
              f"{problem.evaluator.label} accuracy (uniform {100 * rows[-1]['uniform_adaptive_bn_accuracy']:.2f}%)")
    return rows


def _other_problem(cfg: SearchConfig, spec: str, main):
    """The same target, data and bounds on another model (``NAME`` or ``NAME=CHECKPOINT``)."""
    from dataclasses import replace

    from autoprune.core.problem import PruningProblem

    name, _, checkpoint = spec.partition("=")
    ws = replace(cfg.ws, model=name, checkpoint=checkpoint or None).open()
    structure = ws.structure()
    evaluator = ws.evaluator(cfg.calib_batch_size, cfg.score, cfg.ws.seed)
    return PruningProblem(structure, main.target, main.metric, evaluator, cfg.criterion,
                          ws.data.calibration_batches(cfg.calib_batch_size, ws.device), cfg.min_keep, cfg.max_keep,
                          cfg.round_to, early_stop=cfg.early_stop, target_range=main.target_range,
                          latency=cfg.target.table(structure, cfg.round_to))
