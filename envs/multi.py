"""Several models, one policy: episodes cycle over ``ChannelPruningEnv``s of different models.

The observation layout is scale-free (``FEATURES``), so one actor can read every model's groups;
each model keeps its own structure, evaluator and reward baseline (use ``reward="relative"``:
accuracy minus that model's uniform allocation at that target, so the models' rewards compare).
Episode ``e`` runs model ``e % len(envs)``: the order is fixed, so a resumed search continues it.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from autoprune.envs.channel_pruning import ChannelPruningEnv


class MultiModelEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, envs: list[ChannelPruningEnv], start_episode: int = 0):
        if not envs:
            raise ValueError("no environments")
        self.envs = envs
        self.observation_space = envs[0].observation_space
        self.action_space = envs[0].action_space
        self.episode = start_episode - 1  # the next reset starts episode ``start_episode``

    def index(self, episode: int) -> int:
        return episode % len(self.envs)

    @property
    def current(self) -> ChannelPruningEnv:
        return self.envs[self.index(max(self.episode, 0))]

    def steps_of(self, episode: int) -> int:
        """Steps (groups) of episode ``episode``'s model."""
        return self.envs[self.index(episode)].n

    def steps_before(self, episode: int) -> int:
        return sum(self.steps_of(e) for e in range(episode))

    @property
    def problem(self):
        return self.current.problem

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.episode += 1
        env = self.current
        if seed is not None:
            env.reset(seed=seed)
        return env.reset(options=options)

    def step(self, action):
        return self.current.step(action)
