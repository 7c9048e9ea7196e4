"""``sensitivity``: prune each group alone at several keep ratios, then allocate by an accepted drop.

Every group is pruned on its own (the others dense) to each ratio in ``rates`` and the problem's
``min_keep``, and scored with the adaptive-BN evaluator. With each curve made monotone, an
accepted accuracy drop ``d`` gives every group its smallest keep ratio whose (interpolated)
drop is at most ``d``; bisection on ``d`` finds the smallest drop whose allocation fits the
budget (Li et al. 2016; Distiller's sensitivity analysis).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from autoprune.core.allocation import Allocation
from autoprune.core.counts import bisect, count_steps, fill_to_budget, snap_count
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer, require_scorer


class SensitivityAllocator:
    name = "sensitivity"
    seeded = False

    def __init__(self, rates: Sequence[float] = (0.8, 0.6, 0.4), output_dir: str | Path | None = None):
        self.rates = tuple(float(r) for r in rates)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.rows: list[dict] = []  # the measured curves, kept for reports

    def measure(self, problem: PruningProblem, scorer: Scorer) -> list[dict]:
        """One row per (group, keep ratio): keep count, adaptive-BN accuracy, drop from the unpruned score."""
        s = problem.structure
        dense = s.channels.copy()
        trials: list[tuple[int, int, Allocation]] = [(-1, int(dense[0]), Allocation.from_counts(s, dense))]
        lo = problem.min_counts()
        for i, g in enumerate(s.groups):
            counts = sorted({max(int(lo[i]), snap_count(g, r * g.channels, problem.round_to))
                             for r in (*self.rates, problem.min_keep) if r >= problem.min_keep} - {g.channels})
            for k in counts:
                keep = dense.copy()
                keep[i] = k
                trials.append((i, k, Allocation.from_counts(s, keep)))
        scores = [sc.value for sc in scorer.score_many([a for _, _, a in trials])]  # in parallel with a pool
        base = scores[0]
        return [{"group": s.groups[i].name, "channels": s.groups[i].channels, "keep": k,
                 "keep_ratio": k / s.groups[i].channels, "accuracy": acc, "drop": base - acc}
                for (i, k, _), acc in zip(trials[1:], scores[1:])]

    def allocate(self, problem: PruningProblem, scorer: Scorer | None = None) -> Allocation:
        s = problem.structure
        self.rows = self.measure(problem, require_scorer(scorer, self.name))
        if self.output_dir is not None:
            self.save(self.output_dir)
        lo, hi, step = problem.min_counts(), problem.max_counts(), count_steps(problem)
        # per group: candidate counts (ascending) and their monotone interpolated drops
        options = []
        for i, g in enumerate(s.groups):
            pts = sorted([(r["keep"], r["drop"]) for r in self.rows if r["group"] == g.name] + [(g.channels, 0.0)])
            ks = np.array([p[0] for p in pts], dtype=np.float64)
            drops = np.maximum.accumulate(np.array([p[1] for p in pts])[::-1])[::-1]  # fewer channels never hurt less
            cand = np.arange(lo[i], hi[i] + 1, step[i])
            options.append((cand, np.interp(cand, ks, drops)))

        def counts_at(drop: float) -> np.ndarray:
            return np.array([cand[np.argmax(d <= drop + 1e-12)] if (d <= drop + 1e-12).any() else cand[-1]
                             for cand, d in options], dtype=np.int64)

        lowest, highest = min(0.0, min(float(d.min()) for _, d in options)), max(float(d.max()) for _, d in options)
        _, drop = bisect(lambda x: problem.cost(counts_at(x)) > problem.budget, lowest, highest, iters=60)
        counts = counts_at(drop)
        self.accepted_drop = drop
        # give rounding leftovers to the most sensitive groups first
        worst = [float(d[0]) for _, d in options]
        counts = fill_to_budget(problem, counts, order=list(np.argsort(worst)[::-1]))
        return Allocation.from_counts(s, counts)

    def save(self, folder: str | Path) -> None:
        """``sensitivity.csv`` (drop vs keep ratio per group; ``compare`` also draws sensitivity.png)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "sensitivity.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(self.rows[0]))
            w.writeheader()
            w.writerows(self.rows)
