"""Learned allocators: SB3 DDPG (AMC's settings), TD3 or SAC searching over ``ChannelPruningEnv``.

One ``learn`` call per episode (``train_freq`` = 1 episode), so after every episode the replay
buffer, the networks and the bookkeeping agree and a checkpoint taken there is exact:
``search(..., resume=True)`` restores policy + optimisers, replay buffer, exploration noise,
every RNG and the score cache, and continues at the next episode.
"""
from __future__ import annotations

import io
import pickle
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.utils import update_learning_rate

from autoprune.agents.policy import POLICY_FORMAT
from autoprune.agents.search_log import Best, EpisodeLog
from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem
from autoprune.envs import ENV_ID, FEATURES, OBS_VERSION, ChannelPruningEnv
from autoprune.errors import AutopruneError
from autoprune.runs import write_json_atomic


@dataclass
class RLConfig:
    """AMC's DDPG settings (He et al. 2018), expressed in SB3's [-1, 1] action space.

    Two defaults depart from AMC because they measured better here (bench/results/search-*.json):
    ``credit="episode"`` (Monte Carlo targets instead of bootstrapping one sparse reward) and
    ``action="relative"`` (actions scale the even share of the remaining budget).
    """

    algo: str = "ddpg"  # ddpg | td3 | sac
    episodes: int = 300
    warmup_episodes: int = 100  # random actions before learning starts
    noise_sigma: float = 1.0  # truncated normal in [-1, 1] (AMC: 0.5 on [0, 1])
    noise_decay: float = 0.95  # per episode after warm-up
    gamma: float = 1.0
    tau: float = 0.01
    batch_size: int = 64
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    replay_episodes: int = 100
    hidden: list[int] = field(default_factory=lambda: [300, 300])
    updates_per_step: float = 1.0  # gradient steps per env step, done at the end of each episode
    credit: str = "episode"  # episode: every step learns the episode's normalised outcome | td: sparse reward, bootstrapped
    eval_every: int = 5  # every Nth learning episode runs the actor without noise; the best such actor is kept
    reward: str = "accuracy"
    action: str = "relative"  # absolute: keep ratio in the bounds (AMC) | relative: factor on the even keep ratio
    checkpoint_every: int = 10  # episodes
    seed: int = 0


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


@contextmanager
def _one_thread():
    """Tiny MLP updates run ~5-30x faster on one thread than on two busy ones (measured here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _AMCMixin:
    """AMC's DDPG details on top of SB3.

    * separate actor / critic learning rates, truncated-normal exploration;
    * the applied (walled) action is what goes into the replay buffer;
    * ``credit="episode"``: each transition's target is the episode's final reward, normalised
      over the replay window (AMC's moving-average baseline, made consistent) and never
      bootstrapped. The critic then regresses Q(s, a) on outcomes directly, instead of chaining
      one sparse reward back through every step with gamma = 1;
    * ``greedy``: run the actor without noise (evaluation episodes).
    """

    actor_lr: float
    critic_lr: float
    credit: str = "episode"
    greedy: bool = False

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        with _one_thread():
            super().train(gradient_steps, batch_size)

    def _update_learning_rate(self, optimizers) -> None:
        for opt in optimizers if isinstance(optimizers, list) else [optimizers]:
            update_learning_rate(opt, self.critic_lr if opt is self.critic.optimizer else self.actor_lr)

    def _sample_action(self, learning_starts, action_noise=None, n_envs=1):
        if self.greedy and self.num_timesteps >= learning_starts:
            with _one_thread():
                action, _ = self.predict(self._last_obs, deterministic=True)
            scaled = self.policy.scale_action(action)
            return action, scaled
        if not isinstance(action_noise, TruncatedNormalNoise) or self.num_timesteps < learning_starts:
            with _one_thread():
                return super()._sample_action(learning_starts, action_noise, n_envs)
        with _one_thread():
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
            _credit_episode(replay_buffer, float(np.asarray(reward).reshape(-1)[0]), bool(np.asarray(dones).reshape(-1)[0]))


def _credit_episode(buffer, reward: float, done: bool) -> None:
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
    idx = (buffer.episode_start + np.arange(steps)) % size
    buffer.outcome[idx] = reward
    buffer.episode_start = buffer.pos % size
    filled = size if buffer.full else buffer.pos
    known = ~np.isnan(buffer.outcome[:filled])
    values = buffer.outcome[:filled][known]
    scale = values.std() if values.size > 1 else 1.0
    normed = (buffer.outcome[:filled] - values.mean()) / max(scale, 1e-6)
    buffer.rewards[:filled, 0] = np.where(known, normed, 0.0)
    buffer.dones[:filled, 0] = 1.0  # a Monte Carlo target: never bootstrap


class AMCDDPG(_AMCMixin, DDPG):
    pass


class AMCTD3(_AMCMixin, TD3):
    pass


class AMCSAC(_AMCMixin, SAC):
    pass


ALGOS = {"ddpg": AMCDDPG, "td3": AMCTD3, "sac": AMCSAC}


class _EpisodeEnd(BaseCallback):
    """Collects the final info of each episode; decays the exploration noise after warm-up."""

    def __init__(self, noise: TruncatedNormalNoise | None, decay: float, learning_starts: int):
        super().__init__()
        self.noise, self.decay, self.learning_starts = noise, decay, learning_starts
        self.finished: list[tuple[float, dict]] = []

    def _on_step(self) -> bool:
        for done, reward, info in zip(self.locals["dones"], self.locals["rewards"], self.locals["infos"]):
            if done:
                self.finished.append((float(reward), info))
        return True

    def _on_rollout_end(self) -> None:
        if self.noise is not None and self.num_timesteps > self.learning_starts:
            self.noise.sigma *= self.decay


@dataclass
class SearchResult:
    best: Best
    episodes: int
    seconds: float
    eval_seconds: float
    policy_path: Path | None = None
    policy_score: float = -float("inf")  # the kept policy's noise-free episode reward
    policy_episode: int = -1

    @property
    def allocation(self) -> Allocation:
        assert self.best.allocation is not None
        return self.best.allocation


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])


class RLSearch:
    """Allocator that learns a policy by RL and returns the best allocation it evaluated."""

    def __init__(self, config: RLConfig | None = None, **overrides: Any):
        self.config = RLConfig(**{**asdict(config or RLConfig()), **overrides})
        if self.config.algo not in ALGOS:
            raise AutopruneError(f"unknown RL agent '{self.config.algo}': use one of {', '.join(ALGOS)}")
        if self.config.credit not in ("episode", "td"):
            raise AutopruneError(f"unknown credit '{self.config.credit}': use episode or td")
        if self.config.episodes < 1 or self.config.warmup_episodes < 0:
            raise AutopruneError("episodes must be >= 1 and warm-up episodes >= 0")
        self.name = self.config.algo
        self.model = None

    @property
    def seed(self) -> int:
        """The search's seed (``compare --seeds`` sets it per seed, like random search's)."""
        return self.config.seed

    @seed.setter
    def seed(self, value: int) -> None:
        self.config = RLConfig(**{**asdict(self.config), "seed": int(value)})

    def allocate(self, problem: PruningProblem) -> Allocation:
        return self.search(problem).allocation

    # -- building ----------------------------------------------------------------------------
    def _build(self, env: ChannelPruningEnv):
        c, n = self.config, env.n
        kwargs: dict[str, Any] = dict(
            learning_rate=c.actor_lr, buffer_size=max(1, c.replay_episodes * n), learning_starts=c.warmup_episodes * n,
            batch_size=c.batch_size, tau=c.tau, gamma=c.gamma, train_freq=(1, "episode"),
            gradient_steps=max(1, int(round(c.updates_per_step * n))), policy_kwargs={"net_arch": list(c.hidden)},
            seed=c.seed, device="cpu", verbose=0)
        if c.algo != "sac":
            kwargs["action_noise"] = TruncatedNormalNoise(c.noise_sigma, c.seed)
        model = ALGOS[c.algo]("MlpPolicy", env, **kwargs)
        model.actor_lr, model.critic_lr = c.actor_lr, c.critic_lr
        p = env.problem
        model.autoprune_meta = {"format": POLICY_FORMAT, "env": ENV_ID, "obs_version": OBS_VERSION,
                                "features": list(FEATURES), "algo": c.algo, "min_keep": p.min_keep,
                                "max_keep": p.max_keep, "reward": c.reward, "action": c.action, "metric": p.metric, "target": p.target,
                                "groups": len(p.structure.groups)}
        return model

    # -- checkpoints -------------------------------------------------------------------------
    @staticmethod
    def _ckpt_root(run_dir: Path) -> Path:
        return run_dir / "checkpoints"

    def _save_checkpoint(self, run_dir: Path, episode: int, log: EpisodeLog, problem: PruningProblem,
                         elapsed: float, eval_total: float) -> None:
        root = self._ckpt_root(run_dir)
        d = root / f"ep-{episode:06d}"
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        self.model.save(d / "model.zip")
        self.model.save_replay_buffer(d / "replay.pkl")
        noise = self.model.action_noise
        state = {"episode": episode, "rng": _rng_state(), "noise": noise.state() if noise is not None else None,
                 "action_space": self.model.action_space.np_random.bit_generator.state,
                 "best": log.best.to_state(), "cache": problem.cache_state(), "elapsed": elapsed,
                 "eval_elapsed": eval_total,
                 "best_policy": self.best_policy}
        with (d / "state.pkl").open("wb") as f:
            pickle.dump(state, f)
        write_json_atomic(root / "latest.json", {"episode": episode, "dir": d.name})  # the commit point
        for old in root.glob("ep-*"):
            if old != d:
                shutil.rmtree(old, ignore_errors=True)

    def _load_checkpoint(self, run_dir: Path, env: ChannelPruningEnv) -> dict | None:
        import json

        latest = self._ckpt_root(run_dir) / "latest.json"
        if not latest.exists():
            return None
        d = self._ckpt_root(run_dir) / json.loads(latest.read_text())["dir"]
        try:
            with (d / "state.pkl").open("rb") as f:
                state = pickle.load(f)
            model = ALGOS[self.config.algo].load(d / "model.zip", env=env, device="cpu")
            model.load_replay_buffer(d / "replay.pkl")
        except Exception as exc:
            raise AutopruneError(f"checkpoint '{d}' cannot be read ({type(exc).__name__}): delete it to start over") from None
        model.actor_lr, model.critic_lr = self.config.actor_lr, self.config.critic_lr
        model.set_logger(configure(None, []))
        model._last_obs = None  # reset the env at the next learn()
        if state["noise"] is not None:
            model.action_noise.load_state(state["noise"])
        model.action_space.np_random.bit_generator.state = state["action_space"]
        _set_rng_state(state["rng"])
        self.model = model
        return state

    # -- the loop ----------------------------------------------------------------------------
    def _is_greedy(self, episode: int) -> bool:
        """Every ``eval_every``-th episode after warm-up runs the actor without noise."""
        c = self.config
        learned = episode - c.warmup_episodes
        return c.eval_every > 0 and learned >= 0 and (learned + 1) % c.eval_every == 0

    def _policy_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.model.save(buf)
        return buf.getvalue()

    def search(self, problem: PruningProblem, run_dir: str | Path | None = None, resume: bool = False,
               progress: bool = False, on_episode: Callable[[int, float, dict], None] | None = None) -> SearchResult:
        """Run (or continue) the search.

        With ``run_dir``: episodes.csv, TensorBoard, checkpoints, ``policy.zip`` (the actor whose
        noise-free episode scored best) and ``final_policy.zip`` (the actor after the last episode).
        """
        c = self.config
        run_dir = Path(run_dir) if run_dir is not None else None
        env = ChannelPruningEnv(problem, reward=c.reward, action=c.action)
        state = self._load_checkpoint(run_dir, env) if (resume and run_dir is not None) else None
        start = state["episode"] if state else 0
        elapsed = state["elapsed"] if state else 0.0
        if state is None:
            torch.manual_seed(c.seed)
            self.model = self._build(env)
            self.model.set_logger(configure(None, []))
        else:
            problem.restore_cache(state["cache"])
        self.model.credit = c.credit
        self.best_policy = (state or {}).get("best_policy") or {"score": -float("inf"), "episode": -1, "zip": None}
        log = EpisodeLog(run_dir, problem.structure, start_episode=start)
        if state is not None:
            log.best = Best.from_state(state["best"])
        n = env.n
        callback = _EpisodeEnd(self.model.action_noise, c.noise_decay, self.model.learning_starts)
        timing = getattr(problem.evaluator, "timing", None)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=c.episodes, initial=start, desc=f"search ({c.algo})", unit="ep", dynamic_ncols=True)
        eval_total = state.get("eval_elapsed", 0.0) if state else 0.0  # both totals span resumes
        try:
            for episode in range(start, c.episodes):
                t0 = time.perf_counter()
                e0 = (timing.calibrate + timing.evaluate) if timing is not None else 0.0
                greedy = self._is_greedy(episode)
                self.model.greedy = greedy
                acting = self._policy_bytes() if greedy else None  # learn() updates the actor after the episode
                sigma = self.model.action_noise.sigma if self.model.action_noise is not None else None
                explore = None if self.model.num_timesteps < self.model.learning_starts else (0.0 if greedy else sigma)
                self.model.learn(total_timesteps=n, reset_num_timesteps=False, callback=callback, log_interval=None)
                if greedy and self.model.action_noise is not None:  # evaluation episodes do not decay exploration
                    self.model.action_noise.sigma = sigma
                reward, info = callback.finished.pop()
                callback.finished.clear()
                seconds = time.perf_counter() - t0
                eval_s = ((timing.calibrate + timing.evaluate) if timing is not None else 0.0) - e0
                eval_total += eval_s
                elapsed += seconds
                log.record(episode, reward, info, noise=explore, seconds=seconds, eval_seconds=eval_s)
                if greedy and reward > self.best_policy["score"]:
                    self.best_policy = {"score": float(reward), "episode": episode, "zip": acting}
                if on_episode is not None:
                    on_episode(episode, reward, info)
                if bar is not None:
                    bar.update(1)
                    if log.best.info.get("accuracy") is not None:
                        bar.set_postfix(best=f"{100 * log.best.info['accuracy']:.2f}%", refresh=False)
                done = episode + 1
                if run_dir is not None and (done % max(1, c.checkpoint_every) == 0 or done == c.episodes):
                    self._save_checkpoint(run_dir, done, log, problem, elapsed, eval_total)
        finally:
            if bar is not None:
                bar.close()
            log.close()
        policy_path = None
        if run_dir is not None:
            policy_path = run_dir / "policy.zip"
            self.model.save(run_dir / "final_policy.zip")
            if self.best_policy["zip"] is not None:
                (run_dir / "policy.zip").write_bytes(self.best_policy["zip"])
            else:  # no noise-free episode ran (episodes <= warm-up + eval_every - 1): the final actor
                self.model.save(policy_path)
        return SearchResult(log.best, c.episodes, elapsed, eval_total, policy_path, self.best_policy["score"],
                            self.best_policy["episode"])


class DDPGSearch(RLSearch):
    def __init__(self, config: RLConfig | None = None, **overrides: Any):
        super().__init__(config, **{**overrides, "algo": "ddpg"})


class TD3Search(RLSearch):
    def __init__(self, config: RLConfig | None = None, **overrides: Any):
        super().__init__(config, **{**overrides, "algo": "td3"})


class SACSearch(RLSearch):
    def __init__(self, config: RLConfig | None = None, **overrides: Any):
        super().__init__(config, **{**overrides, "algo": "sac"})
