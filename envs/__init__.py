"""Gymnasium environments over the autoprune core (``autoprune/ChannelPruning-v0``)."""
from gymnasium.envs.registration import register, registry

from autoprune.envs.channel_pruning import ACTIONS, FEATURES, OBS_VERSION, REWARDS, ChannelPruningEnv, rollout

ENV_ID = "autoprune/ChannelPruning-v0"
if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="autoprune.envs.channel_pruning:ChannelPruningEnv")

__all__ = ["ACTIONS", "ChannelPruningEnv", "ENV_ID", "FEATURES", "OBS_VERSION", "REWARDS", "rollout"]
