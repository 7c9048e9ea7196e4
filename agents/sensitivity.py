"""``sensitivity``: prune each group alone at several keep ratios, then allocate by an accepted drop.

Every group is pruned on its own (the others dense) to each ratio in ``rates`` and the problem's
``min_keep``, and scored with the problem's score. With each curve made monotone, an accepted drop
``d`` gives every group its smallest keep ratio whose (interpolated) drop is at most ``d``;
bisection on ``d`` finds the smallest drop whose allocation fits the budget (Li et al. 2016;
Distiller's sensitivity analysis). The sweep is an ``autoprune.core.sensitivity`` table: measured
here, or handed over (``table=PATH``, e.g. a search's ``sensitivity.json``; ``compare`` shares one
table between this allocator and its RL agents), so it is paid once per model and score.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer, require_scorer
from autoprune.core.sensitivity import FEATURE_RATIOS, SensitivityTable, find_table, load_tables, table_key
from autoprune.errors import AutopruneError


class SensitivityAllocator:
    name = "sensitivity"
    seeded = False

    def __init__(self, rates: Sequence[float] = tuple(reversed(FEATURE_RATIOS)), output_dir: str | Path | None = None,
                 table: str | Path | None = None):
        self.rates = tuple(float(r) for r in rates)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.table_path = table
        self.sensitivity: SensitivityTable | None = None  # a measured table to use (``UsesSensitivity``)
        self.rows: list[dict] = []  # the measured curves, kept for reports

    def table(self, problem: PruningProblem, scorer: Scorer | None) -> SensitivityTable:
        """The given table (checked against the problem and score), else one measured with ``scorer``."""
        from autoprune.core.sensitivity import measure_sensitivity

        score = scorer.evaluator.kind if scorer is not None else None
        if self.sensitivity is None and self.table_path is not None:  # a file: any model name, same layout
            ignore = ("model",) if score is not None else ("model", "score")
            self.sensitivity = find_table(load_tables(self.table_path), table_key(problem, score or "", None, self.rates),
                                          ignore)
            if self.sensitivity is None:
                raise AutopruneError(f"sensitivity table '{self.table_path}' holds no table for this model, score "
                                     f"and rates {list(self.rates)}: measure it here (drop table=)")
        if self.sensitivity is not None:
            self.sensitivity.check(problem, score)
            return self.sensitivity
        return measure_sensitivity(problem, require_scorer(scorer, self.name), ratios=self.rates)

    def measure(self, problem: PruningProblem, scorer: Scorer) -> list[dict]:
        """One row per (group, keep ratio): keep count, score ("accuracy"), drop from the unpruned score."""
        return self.table(problem, scorer).rows

    def allocate(self, problem: PruningProblem, scorer: Scorer | None = None) -> Allocation:
        table = self.table(problem, scorer)
        self.rows = table.rows
        if self.output_dir is not None:
            self.save(self.output_dir)
        return table.allocation(problem)

    def save(self, folder: str | Path) -> None:
        """``sensitivity.csv`` (drop vs keep ratio per group; ``compare`` also draws sensitivity.png)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "sensitivity.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(self.rows[0]))
            w.writeheader()
            w.writerows(self.rows)
