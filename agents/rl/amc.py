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

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.buffers import ReplayBuffer
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
                 credit: str = "episode", imitation: float = 0.0, imitation_top: int = 5,
                 updates_per_step: float = 1.0, **kwargs: Any):
        if credit == "episode":
            kwargs["replay_buffer_class"] = EpisodeCreditBuffer
        super().__init__(*args, **kwargs)
        self.imitation, self.imitation_top = float(imitation), int(imitation_top)
        lr = kwargs.get("learning_rate", 1e-3)
        self.actor_lr = float(actor_lr if actor_lr is not None else lr)
        self.critic_lr = float(critic_lr if critic_lr is not None else lr)
        self.credit = credit
        self.updates_per_step = float(updates_per_step)
        self.noise_free = False

    @contextmanager
    def acting(self, noise_free: bool) -> Iterator[None]:
        """Episodes run inside act without exploration noise when ``noise_free`` (evaluation episodes)."""
        self.noise_free = noise_free
        try:
            yield
        finally:
            self.noise_free = False

    @contextmanager
    def collecting(self) -> Iterator[None]:
        """``learn`` only collects inside (no gradient steps): parallel rounds learn once the round is scored."""
        steps, self.gradient_steps = self.gradient_steps, 0
        try:
            yield
        finally:
            self.gradient_steps = steps

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """``updates_per_step`` gradient steps per environment step (SB3 passes the steps collected)."""
        gradient_steps = max(1, int(round(self.updates_per_step * gradient_steps)))
        with one_thread():
            super().train(gradient_steps, batch_size)
            if self.imitation > 0:
                self._imitate_best(gradient_steps, batch_size)

    def _imitate_best(self, gradient_steps: int, batch_size: int) -> None:
        """Actor steps on ``imitation`` x MSE(actor(s), a) over the transitions of the best episodes."""
        buffer = self.replay_buffer
        if not isinstance(buffer, EpisodeCreditBuffer):  # ranking episodes needs their outcomes
            return
        outcome = buffer.outcome
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


class EpisodeCreditBuffer(ReplayBuffer):
    """A replay buffer whose every transition learns its episode's final reward (``credit="episode"``).

    Raw outcomes are kept per transition (``outcome``, saved with the buffer, so resuming is exact);
    each stored reward is re-derived from them whenever an episode ends, normalised over the replay
    window, so old and new transitions always share one baseline and one scale. ``dones`` are all 1:
    a Monte Carlo target, never bootstrapped.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.outcome = np.full(self.buffer_size, np.nan)
        self.episode_start = 0

    def add(self, obs, next_obs, action, reward, done, infos) -> None:  # type: ignore[override]
        super().add(obs, next_obs, action, reward, done, infos)
        last = (self.pos - 1) % self.buffer_size
        if not bool(np.asarray(done).reshape(-1)[0]):
            self.outcome[last] = np.nan
            return
        steps = (last - self.episode_start) % self.buffer_size + 1
        self.outcome[(self.episode_start + np.arange(steps)) % self.buffer_size] = float(np.asarray(reward).reshape(-1)[0])
        self.episode_start = self.pos % self.buffer_size
        self.normalise()

    def set_episode_reward(self, first: int, steps: int, reward: float) -> None:
        """Give an episode stored unscored at ``first`` (``steps`` transitions) its reward, once it is known
        (parallel rounds score their episodes after collecting them)."""
        self.outcome[(first + np.arange(steps)) % self.buffer_size] = reward
        self.normalise()

    def normalise(self) -> None:
        filled = self.buffer_size if self.full else self.pos
        known = ~np.isnan(self.outcome[:filled])
        values = self.outcome[:filled][known]
        scale = values.std() if values.size > 1 else 1.0
        normed = (self.outcome[:filled] - values.mean()) / max(scale, 1e-6)
        self.rewards[:filled, 0] = np.where(known, normed, 0.0)
        self.dones[:filled, 0] = 1.0


def set_episode_reward(buffer: ReplayBuffer, first: int, steps: int, reward: float) -> None:
    """An episode's reward, known only after it was stored: every step (episode credit), else the last (td)."""
    if isinstance(buffer, EpisodeCreditBuffer):
        buffer.set_episode_reward(first, steps, reward)
    else:  # td: the sparse reward sits on the last transition
        buffer.rewards[(first + steps - 1) % buffer.buffer_size, 0] = reward


class AMCDDPG(AMCAgent, DDPG):
    pass


class AMCTD3(AMCAgent, TD3):
    pass


class AMCSAC(AMCAgent, SAC):
    pass


AGENT_CLASSES = {"ddpg": AMCDDPG, "td3": AMCTD3, "sac": AMCSAC}
