"""``policy:PATH``: a policy learned by ``autoprune search``, rolled out deterministically on any problem."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from autoprune.agents.rl.policy_io import load_policy, one_thread
from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem
from autoprune.envs import ChannelPruningEnv, rollout
from autoprune.errors import AutopruneError


class PolicyAllocator:
    """Roll a saved policy out on ``problem`` (the env's wall keeps it within budget)."""

    name = "policy"
    seeded = False

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.policy, self.meta = load_policy(self.path)

    def allocate(self, problem: PruningProblem) -> Allocation:
        env = ChannelPruningEnv(problem, evaluate=False, action=self.meta.get("action", "absolute"))
        if env.observation_space.shape != self.policy.observation_space.shape:
            raise AutopruneError(f"policy '{self.path}' expects observations of shape "
                                 f"{self.policy.observation_space.shape}, this env gives {env.observation_space.shape}")

        def act(obs: np.ndarray) -> np.ndarray:
            with one_thread():
                return self.policy.predict(obs, deterministic=True)[0]

        return rollout(env, act)["allocation"]
