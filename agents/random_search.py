"""``random``: EagleEye's search -- score N random feasible allocations, keep the best.

A sample draws a keep ratio per group uniformly in [min_keep, max_keep], scales the whole
vector so the cost meets the budget (bisection), then fills the rounding gap in a random group
order: every sample lands within 1% below the budget, and no group order is favoured.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from autoprune.agents.search_log import Best, EpisodeLog, SearchResult, progress_bar
from autoprune.core.allocation import Allocation
from autoprune.core.counts import bisect, fill_to_budget, snap_count
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Score, Scorer, brief, require_scorer
from autoprune.errors import AutopruneError
from autoprune.runs import write_json_atomic


def random_feasible_counts(problem: PruningProblem, rng: np.random.Generator) -> np.ndarray:
    """One random allocation (keep counts) at the problem's budget."""
    s = problem.structure
    lo, hi = problem.min_counts(), problem.max_counts()
    ratios = rng.uniform(problem.min_keep, problem.max_keep, size=len(s.groups))

    def counts_at(scale: float) -> np.ndarray:
        raw = [snap_count(g, scale * r * g.channels, problem.round_to) for g, r in zip(s.groups, ratios)]
        return np.clip(np.array(raw, dtype=np.int64), lo, hi)

    scale, _ = bisect(lambda x: problem.cost(counts_at(x)) <= problem.budget, 0.0, 1.0 / max(ratios.min(), 1e-6))
    return fill_to_budget(problem, counts_at(scale), order=list(rng.permutation(len(s.groups))))


class RandomSearch:
    """Best of ``samples`` random feasible allocations by ``scorer``.

    Candidates are drawn one after another from the seed, then scored ``batch`` at a time
    (default: one per worker of the scorer's pool) and compared in draw order, so the candidates
    and the best allocation are the same whatever the number of workers. ``start`` skips the
    callback for candidates a resumed run has already logged (their scores come from the cache).
    """

    name = "random"
    seeded = True  # a seed draws the candidates

    def __init__(self, samples: int = 60, seed: int = 0,
                 on_sample: Callable[[int, Allocation, Score], None] | None = None, batch: int | None = None):
        if samples < 1:
            raise AutopruneError(f"random search needs at least one sample, got {samples}")
        self.samples, self.seed, self.on_sample, self.batch = samples, seed, on_sample, batch
        self.history: list[tuple[Allocation, float]] = []

    def candidates(self, problem: PruningProblem) -> list[Allocation]:
        rng = np.random.default_rng(self.seed)
        groups = problem.structure.groups
        return [Allocation({g.name: int(k) for g, k in zip(groups, random_feasible_counts(problem, rng))})
                for _ in range(self.samples)]

    def allocate(self, problem: PruningProblem, scorer: Scorer | None = None, start: int = 0) -> Allocation:
        scorer = require_scorer(scorer, self.name)
        candidates = self.candidates(problem)
        batch = self.batch or scorer.workers
        best: tuple[float, Allocation] | None = None
        self.history = []
        for first in range(0, self.samples, batch):
            chunk = candidates[first:first + batch]
            for i, (alloc, score) in enumerate(zip(chunk, scorer.score_many(chunk)), start=first):
                self.history.append((alloc, score.value))
                if self.on_sample is not None and i >= start:
                    self.on_sample(i, alloc, score)
                if best is None or score.value > best[0]:
                    best = (score.value, alloc)
        assert best is not None
        return best[1]

    def search(self, problem: PruningProblem, scorer: Scorer, run_dir: str | Path | None = None,
               resume: bool = False, progress: bool = False) -> SearchResult:
        """Random search logged like an RL run (``episodes.csv``, TensorBoard, ``best_allocation.json``);
        ``checkpoints/random.json`` (scores so far and the best) is rewritten after every candidate, so a
        resumed run continues with nothing scored twice."""
        run_dir = Path(run_dir) if run_dir is not None else None
        state_path = run_dir / "checkpoints" / "random.json" if run_dir is not None else None
        state = json.loads(state_path.read_text()) if resume and state_path and state_path.exists() else None
        start = state["done"] if state else 0
        if state:
            scorer.restore_cache({tuple(k): Score(v, n, bool(p), kind) for k, v, n, p, kind in state["cache"]})
        log = EpisodeLog(run_dir, problem.structure, start_episode=start, score_kind=scorer.evaluator.kind)
        if state:
            log.best = Best.from_state(state["best"])
        clock = {"t": time.perf_counter(), "e": scorer.seconds}
        with progress_bar(self.samples, start, "search (random)", progress) as bar:
            def on_sample(i: int, alloc: Allocation, score: Score) -> None:
                counts = alloc.counts(problem.structure)
                now = time.perf_counter()
                info = {"allocation": alloc, "macs": problem.structure.macs(counts),
                        "params": problem.structure.params(counts), "target": None,
                        "cost_ratio": problem.cost(counts) / problem.dense_cost, "accuracy": score.value, "score": score}
                # with workers, a batch's wall time is shared by its candidates; scoring time is spent in the workers
                log.record(i, score.value, info, seconds=now - clock["t"], eval_seconds=scorer.seconds - clock["e"])
                clock.update(t=now, e=scorer.seconds)
                if state_path is not None:
                    cache = [[list(k), v.value, v.images, int(v.partial), v.kind]
                             for k, v in scorer.cache_state().items()]
                    write_json_atomic(state_path, {"done": i + 1, "cache": cache, "best": log.best.to_state()},
                                      indent=None)
                bar.update(1)
                bar.set_postfix(best=brief(log.best.score, scorer.evaluator.kind), refresh=False)

            if state_path is not None:
                state_path.parent.mkdir(parents=True, exist_ok=True)
            self.on_sample = on_sample
            try:
                self.allocate(problem, scorer, start=start)
            finally:
                self.on_sample = None
                log.close()
        return SearchResult(log.best, self.samples, log.seconds, log.eval_seconds, log.rewards, [],
                            resumed_seconds=log.resumed_seconds)
