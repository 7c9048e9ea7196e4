"""Two-stage selection (``--finalists K --finalist-score SCORE``): screen with the search's cheap
score, then re-rank the K best distinct feasible allocations with a costlier score that predicts
the fine-tuned model better, and pick by that.

A cheap score is good at discarding bad allocations and weak at ordering good ones (its rank
correlation with fine-tuned accuracy is moderate); spending a costlier score on the few candidates
that survive the screen buys most of its ranking for a fraction of its cost.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Score, Scorer
from autoprune.errors import AutopruneError


@dataclass(frozen=True)
class Finalist:
    """One re-ranked candidate: its allocation, its search score and its finalist score."""

    allocation: Allocation
    search: Score
    final: Score


def check_finalists(k: int, finalist_score: str) -> None:
    """One-line errors before any data is read."""
    from autoprune.train.scores import parse_score

    if k < 0:
        raise AutopruneError(f"--finalists {k} must be 0 (no re-ranking) or a positive number of candidates")
    parse_score(finalist_score)


def top_candidates(problem: PruningProblem, scorer: Scorer, k: int,
                   keys: Sequence[tuple[int, ...]] | None = None) -> list[tuple[tuple[int, ...], Score]]:
    """The ``k`` best distinct feasible allocations among ``keys`` (default: every one ``scorer`` scored),
    by full search score; partial (early-stopped) scores never qualify. Ties keep the order scored."""
    cache = scorer.cache_state()
    order = list(dict.fromkeys(keys)) if keys is not None else list(cache)
    structure = problem.structure
    scored = [(key, cache[key]) for key in order if key in cache and not cache[key].partial
              and problem.feasible(Allocation.from_counts(structure, key))]
    return sorted(scored, key=lambda item: -item[1].value)[:k]


def rerank(problem: PruningProblem, scorer: Scorer, finalist_scorer: Scorer, k: int,
           keys: Sequence[tuple[int, ...]] | None = None, also: Sequence[Allocation] = ()) -> list[Finalist]:
    """The top ``k`` by ``scorer`` re-scored by ``finalist_scorer``, best finalist score first.

    ``also``: feasible allocations that reach the final stage whatever their search score (a search's
    heuristic starting points, sensitivity's and uniform's): the cheap score can rank an allocation
    below the search's finds that the costlier one, like the fine-tuned model, puts above them, and
    the pick is then never below a free heuristic by the finalist score."""
    top = top_candidates(problem, scorer, k, keys)
    structure = problem.structure
    seen = {key for key, _ in top}
    for alloc in also:
        key = problem.key(alloc)
        if key not in seen and problem.feasible(alloc):
            seen.add(key)
            top.append((key, scorer.score(alloc)))
    if not top:
        raise AutopruneError("no fully scored feasible candidate to re-rank: run more episodes")
    finals = []
    for key, search_score in top:
        alloc = Allocation.from_counts(structure, key)
        finals.append(Finalist(alloc, search_score, finalist_scorer.score(alloc)))
    return sorted(finals, key=lambda f: -f.final.value)  # stable: ties keep the search's order
