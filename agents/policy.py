"""``policy:PATH``: a policy learned by ``autoprune search``, rolled out deterministically on any problem.

The file is read without unpickling anything (``policy_io``), so a policy from anyone can be applied."""
from __future__ import annotations

from pathlib import Path

from autoprune.agents.rl.policy_io import load_policy
from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer
from autoprune.envs import ChannelPruningEnv, rollout
from autoprune.errors import AutopruneError


class PolicyAllocator:
    """Roll a saved policy out on ``problem`` (the env's wall keeps it within budget)."""

    name = "policy"
    seeded = False

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.policy, self.meta = load_policy(self.path)

    def allocate(self, problem: PruningProblem, scorer: Scorer | None = None) -> Allocation:
        env = ChannelPruningEnv(problem, evaluate=False, action=self.meta["action"])
        if env.observation_space.shape != self.policy.observation_shape:
            raise AutopruneError(f"policy '{self.path}' expects observations of shape "
                                 f"{self.policy.observation_shape}, this env gives {env.observation_space.shape}")
        return rollout(env, self.policy.act)["allocation"]
