"""Per-group sensitivity: each group pruned alone (the others dense) at a few keep ratios, scored.

One sweep answers two questions: how much each group hurts (the RL observation's ``sens_*``
features, relative to the dense score) and which allocation accepts the smallest drop (sensitivity
analysis, Li et al. 2016; Distiller). It costs one score per (group, ratio) plus the dense model,
so it is measured once per model and score (``Scorer.score_many``: on the Ray workers when there
are some) and cached in a run folder's ``sensitivity.json``, keyed by score, model, criterion,
ratios and the group layout; ``search`` and ``compare`` (its ``sensitivity`` allocator and its RL
agents) read the same table instead of sweeping twice.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from autoprune.core.allocation import Allocation
from autoprune.core.counts import bisect, count_steps, fill_to_budget, snap_count
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer
from autoprune.errors import AutopruneError
from autoprune.runs import write_json_atomic

FEATURE_RATIOS = (0.25, 0.5, 0.75)  # the observation reads the relative score at these keep ratios
TABLE_FORMAT = "autoprune.sensitivity/1"
FILE = "sensitivity.json"


def relative_score(value: float, dense: float) -> float:
    """A pruned score relative to the dense one, in [0, 1]: value / dense for a positive score (top-1);
    exp(value - dense) for a score that is minus a loss (``:loss``, ``:kd``): the ratio of likelihoods."""
    rel = value / dense if dense > 0 else math.exp(min(0.0, value - dense))
    return float(np.clip(rel, 0.0, 1.0))


def sweep_ratios(problem: PruningProblem, ratios: Sequence[float] = FEATURE_RATIOS) -> tuple[float, ...]:
    """The keep ratios measured: ``ratios`` within the problem's bounds, plus its ``min_keep`` (the
    allocation needs the curve down to the lowest width it may choose)."""
    return tuple(sorted({float(r) for r in ratios if r >= problem.min_keep} | {float(problem.min_keep)}, reverse=True))


@dataclass
class SensitivityTable:
    """The measured curves: one row per (group, keep count) with its score and drop from ``dense``."""

    key: dict[str, Any]  # score, model, criterion, ratios, groups: what the table is valid for
    dense: float
    rows: list[dict] = field(default_factory=list)
    evaluations: int = 0  # scores the sweep cost (dense included)
    seconds: float = 0.0

    # -- what it is for ------------------------------------------------------------------------
    def curves(self, problem: PruningProblem) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per group: ascending keep counts (ending at the full width) and their monotone drops
        (fewer channels never hurt less)."""
        self.check(problem)
        out = []
        for g in problem.structure.groups:
            pts = sorted({(r["keep"], r["drop"]) for r in self.rows if r["group"] == g.name} | {(g.channels, 0.0)})
            ks = np.array([p[0] for p in pts], dtype=np.float64)
            drops = np.maximum.accumulate(np.array([p[1] for p in pts])[::-1])[::-1]
            out.append((ks, drops))
        return out

    def features(self, problem: PruningProblem, ratios: Sequence[float] = FEATURE_RATIOS) -> np.ndarray:
        """(groups x ratios) relative scores when one group keeps each ratio (interpolated on its curve)."""
        feats = [[relative_score(self.dense - float(np.interp(r * g.channels, ks, drops)), self.dense)
                  for r in ratios] for g, (ks, drops) in zip(problem.structure.groups, self.curves(problem))]
        return np.asarray(feats, dtype=np.float32)

    def allocation(self, problem: PruningProblem) -> Allocation:
        """Sensitivity analysis' allocation: every group at its smallest width whose drop is at most ``d``,
        with ``d`` the smallest accepted drop that fits the budget (bisection); the rounding gap goes
        to the most sensitive groups first."""
        lo, hi, step = problem.min_counts(), problem.max_counts(), count_steps(problem)
        options = []
        for i, (ks, drops) in enumerate(self.curves(problem)):
            cand = np.arange(lo[i], hi[i] + 1, step[i])
            options.append((cand, np.interp(cand, ks, drops)))

        def counts_at(drop: float) -> np.ndarray:
            return np.array([cand[np.argmax(d <= drop + 1e-12)] if (d <= drop + 1e-12).any() else cand[-1]
                             for cand, d in options], dtype=np.int64)

        lowest, highest = min(0.0, min(float(d.min()) for _, d in options)), max(float(d.max()) for _, d in options)
        _, drop = bisect(lambda x: problem.cost(counts_at(x)) > problem.budget, lowest, highest, iters=60)
        worst = [float(d[0]) for _, d in options]
        counts = fill_to_budget(problem, counts_at(drop), order=list(np.argsort(worst)[::-1]))
        return Allocation.from_counts(problem.structure, counts)

    # -- validity and files --------------------------------------------------------------------
    def check(self, problem: PruningProblem, score: str | None = None) -> None:
        """One line when the table was measured on another model layout, criterion or score."""
        groups = [[g.name, g.channels] for g in problem.structure.groups]
        if self.key.get("groups") != groups or self.key.get("criterion") != problem.criterion:
            raise AutopruneError(f"the sensitivity table of {self.key.get('model')} ({len(self.key.get('groups') or [])} "
                                 f"groups, criterion {self.key.get('criterion')}) does not fit this model "
                                 f"({len(groups)} groups, criterion {problem.criterion}): measure it on this one")
        if score is not None and self.key.get("score") != score:
            raise AutopruneError(f"the sensitivity table was measured with --score {self.key.get('score')}, this run "
                                 f"scores by {score}: use a table of the same score (or let it be measured)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SensitivityTable":
        return cls(d["key"], float(d["dense"]), list(d["rows"]), int(d.get("evaluations", 0)),
                   float(d.get("seconds", 0.0)))


def table_key(problem: PruningProblem, score: str, model: str | None = None,
              ratios: Sequence[float] = FEATURE_RATIOS) -> dict[str, Any]:
    """What a table is valid for (``model`` defaults to the model's class name)."""
    return {"score": score, "model": model or type(problem.structure.model).__name__, "criterion": problem.criterion,
            "ratios": list(sweep_ratios(problem, ratios)), "round_to": problem.round_to,
            "groups": [[g.name, g.channels] for g in problem.structure.groups]}


def sweep(problem: PruningProblem, ratios: Sequence[float] = FEATURE_RATIOS) -> list[tuple[int, int, Allocation]]:
    """The sweep's candidates: (group index or -1 for dense, keep count, allocation), dense first."""
    s = problem.structure
    dense = s.channels.copy()
    trials = [(-1, int(dense[0]), Allocation.from_counts(s, dense))]
    lo = problem.min_counts()
    for i, g in enumerate(s.groups):
        counts = sorted({max(int(lo[i]), snap_count(g, r * g.channels, problem.round_to))
                         for r in sweep_ratios(problem, ratios)} - {g.channels})
        for k in counts:
            keep = dense.copy()
            keep[i] = k
            trials.append((i, k, Allocation.from_counts(s, keep)))
    return trials


def measure_sensitivity(problem: PruningProblem, scorer: Scorer, model: str | None = None,
                        ratios: Sequence[float] = FEATURE_RATIOS) -> SensitivityTable:
    """Score the sweep (all at once: in parallel on the scorer's pool) into a table."""
    s = problem.structure
    trials = sweep(problem, ratios)
    t0 = time.perf_counter()
    with scorer.outside_search():  # the dense score must not become the best an early stop compares with
        scores = [sc.value for sc in scorer.score_many([a for _, _, a in trials])]
    base = scores[0]
    rows = [{"group": s.groups[i].name, "channels": s.groups[i].channels, "keep": k,
             "keep_ratio": k / s.groups[i].channels, "accuracy": acc, "drop": base - acc}
            for (i, k, _), acc in zip(trials[1:], scores[1:])]
    return SensitivityTable(table_key(problem, scorer.evaluator.kind, model, ratios), base, rows, len(trials),
                            time.perf_counter() - t0)


def load_tables(path: str | Path) -> list[SensitivityTable]:
    """The tables a ``sensitivity.json`` holds (one line if it is not one)."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != TABLE_FORMAT:
            raise ValueError(doc.get("format"))
        return [SensitivityTable.from_dict(t) for t in doc["tables"]]
    except FileNotFoundError:
        raise AutopruneError(f"sensitivity table '{path}' not found: pass the sensitivity.json of a search or "
                             "compare run") from None
    except Exception as exc:
        raise AutopruneError(f"'{path}' is not a sensitivity table written by autoprune ({type(exc).__name__}): "
                             "pass the sensitivity.json of a search or compare run") from None


def find_table(tables: Sequence[SensitivityTable], key: dict[str, Any],
               ignore: Sequence[str] = ()) -> SensitivityTable | None:
    """The first table whose key equals ``key`` on every field but ``ignore``."""
    def strip(k: dict) -> dict:
        return {f: v for f, v in k.items() if f not in ignore}

    return next((t for t in tables if strip(t.key) == strip(key)), None)


def cached_sensitivity(folder: str | Path | None, problem: PruningProblem, scorer: Scorer, model: str | None = None,
                       ratios: Sequence[float] = FEATURE_RATIOS, reuse: str | Path | None = None) -> SensitivityTable:
    """The table for this problem, model and score from ``folder/sensitivity.json`` when it is there,
    else taken from ``reuse`` (another run's ``sensitivity.json``: it must hold this table), else measured;
    a table not yet in the folder's file is added to it: a resumed run, or a second command on the folder,
    sweeps nothing."""
    key = table_key(problem, scorer.evaluator.kind, model, ratios)
    path = Path(folder) / FILE if folder is not None else None
    tables = load_tables(path) if path is not None and path.exists() else []
    table = find_table(tables, key)
    if table is not None:
        return table
    if reuse is not None:
        table = find_table(load_tables(reuse), key)
        if table is None:
            raise AutopruneError(f"sensitivity table '{reuse}' holds no table for model '{model}' with score "
                                 f"'{key['score']}' and these groups: measure it here (drop --sensitivity)")
        table.check(problem, key["score"])
    else:
        table = measure_sensitivity(problem, scorer, model, ratios)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"format": TABLE_FORMAT, "tables": [t.to_dict() for t in tables + [table]]},
                          indent=1)
    return table
