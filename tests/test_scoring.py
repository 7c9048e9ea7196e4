"""The problem is a value; the scorer is the session: cache, early stop, records."""
import dataclasses

import numpy as np
import pytest

from autoprune.agents.random_search import random_feasible_counts
from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem, uniform_allocation
from autoprune.core.scoring import FunctionEvaluator, Scorer, require_scorer
from autoprune.errors import AutopruneError


@pytest.fixture
def structure(resnet20_structure):
    return resnet20_structure


def test_problem_is_frozen_and_with_target_copies(structure):
    problem = PruningProblem(structure, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        problem.target = 0.3
    other = problem.with_target(0.3)
    assert (problem.target, other.target) == (0.5, 0.3) and other.structure is problem.structure
    with pytest.raises(AutopruneError, match="outside"):
        problem.with_target(1.5)  # validated like a new problem


def test_scorer_scores_each_allocation_once_at_any_target(structure):
    calls = []
    scorer = Scorer(PruningProblem(structure, 0.5), FunctionEvaluator(lambda m: calls.append(1) or 0.25, kind="toy"))
    half = uniform_allocation(PruningProblem(structure, 0.5))
    third = uniform_allocation(PruningProblem(structure, 0.3))
    first = scorer.score(half)
    assert (first.value, first.kind, first.partial) == (0.25, "toy", False) and first.seconds >= 0
    assert scorer.score(half) is first and len(calls) == 1  # cached by keep counts
    assert [s.value for s in scorer.score_many([half, third, third])] == [0.25, 0.25, 0.25]
    assert len(calls) == 2 and scorer.best_full == 0.25


class _Stopping:
    """Scores 0.9 for every model; stops early (partial, 0.1) whenever it is asked to beat something."""

    label, kind = "stop", "stop"

    def prepare(self, model):
        return model

    def score(self, model, must_beat=None):
        from autoprune.core.scoring import Score

        return Score(0.1, 10, partial=True) if must_beat is not None else Score(0.9, 100)


def test_early_stop_never_reports_a_partial_score_once_full_scores_are_asked_for(structure):
    problem = PruningProblem(structure, 0.5)
    scorer = Scorer(problem, _Stopping(), early_stop=True)
    rng = np.random.default_rng(0)
    a, b = (Allocation.from_counts(structure, random_feasible_counts(problem, rng)) for _ in range(2))
    assert not scorer.score(a).partial  # nothing to beat yet
    assert scorer.score(b).partial and scorer.best_full == 0.9  # a partial score never becomes the best
    full = scorer.full_scores().score(b)
    assert not full.partial and full.value == 0.9


def test_scoring_allocators_refuse_to_run_without_a_scorer(structure):
    with pytest.raises(AutopruneError, match="sensitivity allocator scores candidates"):
        require_scorer(None, "sensitivity")
    from autoprune.agents import get_allocator

    with pytest.raises(AutopruneError, match="random allocator scores candidates"):
        get_allocator("random@samples=2").allocate(PruningProblem(structure, 0.5))


def test_progress_bars_show_a_loss_as_a_loss():
    from autoprune.core.scoring import brief

    assert brief(0.5630, "adaptive-bn") == "56.30%" and brief(0.7, "finetune:25") == "70.00%"
    assert brief(-1.3225, "reconstruct:loss") == "1.3225 loss" and brief(-0.25, "adaptive-bn:kd") == "0.2500 kd"
