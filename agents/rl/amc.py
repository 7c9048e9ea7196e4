"""AMC's flavour of SB3's off-policy agents (He et al. 2018), as proper subclasses.

* separate actor / critic learning rates (constructor arguments), truncated-normal exploration;
* the applied (walled) action is what goes into the replay buffer;
* ``credit="episode"``: each transition's target is the episode's final reward, normalised over
  the replay window (AMC's moving-average baseline, made consistent) and never bootstrapped. The
  critic then regresses Q(s, a) on outcomes directly, instead of chaining one sparse reward back
  through every step with gamma = 1;
* ``noise_free``: run the actor without exploration noise (the search's evaluation episodes);
* ``imitation``: self-imitation (after Oh et al. 2018, as plain regression) -- after each update the
  actor also regresses onto the applied actions of the ``imitation_top`` best episodes in the replay
  window, so it cannot drift away from the best allocations it has found towards a corner the critic
  over-values;
* ``fit_actor``: plain regression of the actor onto given states and actions (the search uses it
  to make the kept policy play the best allocation it found).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.utils import update_learning_rate

from autoprune.agents.rl.policy_io import one_thread


class TruncatedNormalNoise(ActionNoise):
    """AMC's exploration: sample around the policy's action from N(a, sigma) truncated to [-1, 1]."""

    def __init__(self, sigma: float, seed: int = 0):
        super().__init__()
        self.sigma = float(sigma)
        self.rng = np.random.default_rng(seed)

    def around(self, action: np.ndarray) -> np.ndarray:
        out = np.asarray(action, dtype=np.float64).copy()
        todo = np.ones(out.shape, dtype=bool)
        sample = out.copy()
        for _ in range(100):  # rejection sampling; acceptance >= ~1/2 with the mean inside the box
            draw = out + self.sigma * self.rng.standard_normal(out.shape)
            ok = todo & (np.abs(draw) <= 1.0)
            sample[ok] = draw[ok]
            todo &= ~ok
            if not todo.any():
                break
        return np.clip(sample, -1.0, 1.0).astype(np.float32)

    def __call__(self) -> np.ndarray:  # plain additive use (SB3 clips)
        return (self.sigma * self.rng.standard_normal(1)).astype(np.float32)

    def state(self) -> dict:
        return {"sigma": self.sigma, "rng": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        self.sigma = state["sigma"]
        self.rng.bit_generator.state = state["rng"]


class AMCAgent:
    """The AMC behaviour, mixed in front of an SB3 algorithm (``AMCDDPG``, ``AMCTD3``, ``AMCSAC``)."""

    def __init__(self, *args: Any, actor_lr: float | None = None, critic_lr: float | None = None,
                 credit: str = "episode", imitation: float = 0.0, imitation_top: int = 5, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.imitation, self.imitation_top = float(imitation), int(imitation_top)
        lr = kwargs.get("learning_rate", 1e-3)
        self.actor_lr = float(actor_lr if actor_lr is not None else lr)
        self.critic_lr = float(critic_lr if critic_lr is not None else lr)
        self.credit = credit
        self.noise_free = False

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        with one_thread():
            super().train(gradient_steps, batch_size)
            if self.imitation > 0:
                self._imitate_best(gradient_steps, batch_size)

    def _imitate_best(self, gradient_steps: int, batch_size: int) -> None:
        """Actor steps on ``imitation`` x MSE(actor(s), a) over the transitions of the best episodes."""
        buffer = self.replay_buffer
        outcome = getattr(buffer, "outcome", None)  # episode outcomes per transition (episode credit)
        if outcome is None:
            return
        filled = buffer.buffer_size if buffer.full else buffer.pos
        known = np.flatnonzero(~np.isnan(outcome[:filled]))
        if known.size == 0:
            return
        outcomes = np.unique(outcome[known])
        elite = known[outcome[known] >= outcomes[-min(self.imitation_top, outcomes.size)]]
        rng = np.random.default_rng(self.num_timesteps)
        for _ in range(gradient_steps):
            idx = rng.choice(elite, size=min(batch_size, elite.size), replace=False)
            obs = torch.as_tensor(buffer.observations[idx, 0], device=self.device)
            target = torch.as_tensor(buffer.actions[idx, 0], device=self.device)
            loss = self.imitation * F.mse_loss(self.policy(obs, deterministic=True), target)
            self.actor.optimizer.zero_grad()
            loss.backward()
            self.actor.optimizer.step()

    def fit_actor(self, obs: np.ndarray, actions: np.ndarray, steps: int, lr: float = 1e-3) -> float:
        """``steps`` full-batch Adam steps of MSE(actor(obs), actions) with a fresh optimiser (the
        actor's own, and its learning-rate schedule, are left alone); the last loss."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        target = torch.as_tensor(actions, dtype=torch.float32, device=self.device).reshape(len(obs_t), -1)
        opt = torch.optim.Adam(self.actor.parameters(), lr=lr)
        loss = torch.zeros(())
        with one_thread():
            for _ in range(steps):
                loss = F.mse_loss(self.policy(obs_t, deterministic=True), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
        return float(loss.detach())

    def _update_learning_rate(self, optimizers) -> None:
        for opt in optimizers if isinstance(optimizers, list) else [optimizers]:
            update_learning_rate(opt, self.critic_lr if opt is self.critic.optimizer else self.actor_lr)

    def _sample_action(self, learning_starts, action_noise=None, n_envs=1):
        if self.noise_free and self.num_timesteps >= learning_starts:
            with one_thread():
                action, _ = self.predict(self._last_obs, deterministic=True)
            return action, self.policy.scale_action(action)
        if not isinstance(action_noise, TruncatedNormalNoise) or self.num_timesteps < learning_starts:
            with one_thread():
                return super()._sample_action(learning_starts, action_noise, n_envs)
        with one_thread():
            action, _ = self.predict(self._last_obs, deterministic=False)
        scaled = action_noise.around(self.policy.scale_action(action))
        return self.policy.unscale_action(scaled), scaled

    def _store_transition(self, replay_buffer, buffer_action, new_obs, reward, dones, infos):
        # the wall may change the action: learn the value of what was applied (it is also in the next state)
        applied = [info.get("applied_action") for info in infos]
        if all(a is not None for a in applied):
            buffer_action = np.asarray(applied, dtype=np.float32).reshape(buffer_action.shape)
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)
        if self.credit == "episode":
            credit_episode(replay_buffer, float(np.asarray(reward).reshape(-1)[0]),
                           bool(np.asarray(dones).reshape(-1)[0]))


def credit_episode(buffer, reward: float, done: bool) -> None:
    """Give every step of a finished episode its final reward, normalised over the replay window.

    Raw outcomes are kept on the buffer (``outcome``, pickled with it, so resuming is exact); each
    stored reward is re-derived from them whenever an episode ends, so old and new transitions
    always share one baseline and one scale.
    """
    size = buffer.buffer_size
    if getattr(buffer, "outcome", None) is None:
        buffer.outcome = np.full(size, np.nan)
        buffer.episode_start = 0
    last = (buffer.pos - 1) % size
    if not done:
        buffer.outcome[last] = np.nan
        return
    steps = (last - buffer.episode_start) % size + 1
    buffer.outcome[(buffer.episode_start + np.arange(steps)) % size] = reward
    buffer.episode_start = buffer.pos % size
    _normalise_outcomes(buffer)


def _normalise_outcomes(buffer) -> None:
    filled = buffer.buffer_size if buffer.full else buffer.pos
    known = ~np.isnan(buffer.outcome[:filled])
    values = buffer.outcome[:filled][known]
    scale = values.std() if values.size > 1 else 1.0
    normed = (buffer.outcome[:filled] - values.mean()) / max(scale, 1e-6)
    buffer.rewards[:filled, 0] = np.where(known, normed, 0.0)
    buffer.dones[:filled, 0] = 1.0  # a Monte Carlo target: never bootstrap


def set_episode_reward(buffer, first: int, steps: int, reward: float, credit: str) -> None:
    """Give an episode stored unscored at ``first`` (``steps`` transitions) its reward, once it is known
    (parallel rounds score their episodes after collecting them)."""
    idx = (first + np.arange(steps)) % buffer.buffer_size
    if credit == "episode":
        buffer.outcome[idx] = reward
        _normalise_outcomes(buffer)
    else:  # td: the sparse reward sits on the last transition
        buffer.rewards[idx[-1], 0] = reward


class AMCDDPG(AMCAgent, DDPG):
    pass


class AMCTD3(AMCAgent, TD3):
    pass


class AMCSAC(AMCAgent, SAC):
    pass


AGENT_CLASSES = {"ddpg": AMCDDPG, "td3": AMCTD3, "sac": AMCSAC}
