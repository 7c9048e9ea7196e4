"""The committed universal policy (bench/results/policies/universal.zip) applies to any supported model and target."""
from pathlib import Path

import pytest
import torch

from autoprune.agents.policy import PolicyAllocator
from autoprune.core.problem import PruningProblem
from autoprune.core.structure import ModelStructure
from autoprune.models import create_model

POLICY = Path(__file__).resolve().parents[1] / "bench" / "results" / "policies" / "universal.zip"


def _current() -> bool:
    from autoprune.agents.rl.policy_io import policy_meta
    from autoprune.envs import OBS_VERSION

    return POLICY.exists() and policy_meta(POLICY).get("obs_version") == OBS_VERSION


pytestmark = [pytest.mark.skipif(not _current(), reason="universal policy not committed on this observation layout "
                                 "(retrain it: python -m bench.universal_policy)"),
              pytest.mark.usefixtures("one_thread")]


@pytest.mark.parametrize("model,size", [("resnet32", 32), ("resnet110", 32), ("tv:mobilenet_v2", 64)])
def test_universal_policy_meets_any_target_on_any_model(model, size):
    torch.manual_seed(0)
    structure = ModelStructure(create_model(model, 10).eval(), torch.randn(1, 3, size, size), num_classes=10)
    policy = PolicyAllocator(POLICY)
    for target in (0.3, 0.7):
        problem = PruningProblem(structure, target)
        alloc = policy.allocate(problem)
        assert problem.feasible(alloc), (model, target, problem.cost(alloc.counts(structure)) / problem.dense_cost)
