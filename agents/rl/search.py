"""The RL search: an AMC agent over ``ChannelPruningEnv``, one ``learn`` call per episode.

After every episode the replay buffer, the networks and the bookkeeping agree, so a checkpoint
taken there is exact: ``search(..., resume=True)`` restores policy + optimisers, replay buffer,
exploration noise, every RNG and the score cache, and continues at the next episode. Every
``eval_every``-th learning episode runs the actor without noise; the best such actor is kept as
``policy.zip``, unless ``distil_best``: then the actor is fitted onto the best episode's states and
applied actions after the search, and kept when its noise-free rollout plays exactly the best
allocation (checked with the env unscored: no evaluation is spent). SB3's own logger writes the
actor and critic losses to TensorBoard (``tb/``).

The agent reads each group's sensitivity (``autoprune.core.sensitivity``): the table is handed in,
or measured with the search's own scorer before the first episode and cached in the run folder's
``sensitivity.json`` (a resumed search reads it back). With ``heuristic_warmup`` the first episodes
(per model) play the sensitivity allocation, then the uniform one, as is: their transitions are in
the replay buffer and their scores in ``episodes.csv``, so the search's best is never below
either heuristic by its own score.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger, configure

from autoprune.agents.rl.amc import AGENT_CLASSES, TruncatedNormalNoise, set_episode_reward
from autoprune.agents.rl.checkpoint import load_checkpoint, save_checkpoint
from autoprune.agents.rl.config import RLConfig
from autoprune.agents.rl.policy_io import PolicyMeta, load_actor_into, load_policy, policy_bytes
from autoprune.agents.search_log import Best, EpisodeLog, SearchResult, progress_bar
from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem, uniform_allocation
from autoprune.core.scoring import Scorer, brief, require_scorer
from autoprune.core.sensitivity import FEATURE_RATIOS, SensitivityTable, cached_sensitivity
from autoprune.envs import ChannelPruningEnv
from autoprune.envs.channel_pruning import rollout
from autoprune.envs.multi import MultiModelEnv
from autoprune.errors import AutopruneError

DISTIL_ROUNDS, DISTIL_STEPS = 200, 100  # fit the actor for up to 200 x 100 steps, checking its rollout after each
# (a ResNet-56 trajectory of 27 steps took 28-97 rounds, ~0.2 s each: with 30 most kept policies missed the best)


class EpisodeEnd(BaseCallback):
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
class Finished:
    """One finished episode: what the log, the kept policy and a parallel round's reward patch need."""

    episode: int
    reward: float
    info: dict
    explore: float | None
    acting: bytes | None  # the actor that ran it, when it ran without noise
    first: int  # replay-buffer position of its first transition
    steps: int
    seconds: float = 0.0
    eval_seconds: float = 0.0


class RLSearch:
    """Allocator that learns a policy by RL and returns the best allocation it evaluated."""

    def __init__(self, config: RLConfig | None = None, **overrides: Any):
        self.config = RLConfig(**{**asdict(config or RLConfig()), **overrides})
        if self.config.algo not in AGENT_CLASSES:
            raise AutopruneError(f"unknown RL agent '{self.config.algo}': use one of {', '.join(AGENT_CLASSES)}")
        if self.config.credit not in ("episode", "td"):
            raise AutopruneError(f"unknown credit '{self.config.credit}': use episode or td")
        if self.config.imitation > 0 and self.config.credit != "episode":
            raise AutopruneError("--imitation ranks episodes by their outcome: use --credit episode, "
                                 "or --imitation 0 with --credit td")
        if self.config.episodes < 1 or self.config.warmup_episodes < 0:
            raise AutopruneError("episodes must be >= 1 and warm-up episodes >= 0")
        self.name = self.config.algo
        self.model = None
        self.rates = FEATURE_RATIOS
        self.sensitivity: SensitivityTable | None = None  # ``UsesSensitivity``: compare hands its table over
        self.tables: list[SensitivityTable] = []  # each problem's table, once a search ran
        self.heuristics: list[Allocation] = []  # what the last search played first (``compare``'s finalists)

    @property
    def seed(self) -> int:
        """The search's seed (``compare --seeds`` sets it per seed, like random search's)."""
        return self.config.seed

    def allocate(self, problem: PruningProblem, scorer: Scorer | None = None) -> Allocation:
        return self.search(problem, require_scorer(scorer, self.name), sensitivity=self.sensitivity).allocation

    def _tables(self, problems: list[PruningProblem], scorers: list[Scorer], run_dir: Path | None,
                given: SensitivityTable | list[SensitivityTable] | None) -> list[SensitivityTable]:
        """Each problem's sensitivity table: the given one (checked), else from ``run_dir/sensitivity.json``,
        else measured with its scorer (and cached there)."""
        if given is not None:
            tables = given if isinstance(given, list) else [given]
            if len(tables) != len(problems):
                raise ValueError(f"{len(problems)} problems but {len(tables)} sensitivity tables")
            for t, p, sc in zip(tables, problems, scorers):
                t.check(p, sc.evaluator.kind)
            return tables
        return [cached_sensitivity(run_dir, p, sc) for p, sc in zip(problems, scorers)]

    def _warm_start_from_heuristics(self, envs: list[ChannelPruningEnv], start: int) -> None:
        """Queue the sensitivity and uniform allocations as each env's first episodes (those not played
        before ``start``: env ``i`` of ``m`` runs episodes ``i``, ``i + m``, ...)."""
        if not self.config.heuristic_warmup:
            return
        for i, env in enumerate(envs):
            played = len(range(i, start, len(envs)))
            env.play([env.sensitivity.allocation, uniform_allocation][played:])

    def _build(self, env: ChannelPruningEnv | MultiModelEnv):
        c = self.config
        multi = isinstance(env, MultiModelEnv)
        envs = env.envs if multi else [env]
        n = env.steps_of(0) if multi else env.n
        warmup_steps = env.steps_before(c.warmup_episodes) if multi else c.warmup_episodes * n
        kwargs: dict[str, Any] = dict(
            learning_rate=c.actor_lr, actor_lr=c.actor_lr, critic_lr=c.critic_lr, credit=c.credit,
            imitation=c.imitation, imitation_top=c.imitation_top,
            buffer_size=max(1, c.replay_episodes * max(e.n for e in envs)), learning_starts=warmup_steps,
            batch_size=c.batch_size, tau=c.tau, gamma=c.gamma, train_freq=(1, "episode"),
            gradient_steps=-1, updates_per_step=c.updates_per_step, policy_kwargs={"net_arch": list(c.hidden)},
            seed=c.seed, device="cpu", verbose=0)
        if c.algo != "sac":
            kwargs["action_noise"] = TruncatedNormalNoise(c.noise_sigma, c.seed)
        model = AGENT_CLASSES[c.algo]("MlpPolicy", env, **kwargs)
        if c.init_policy is not None:
            self._warm_start(model, env, c.init_policy)
        p = envs[0].problem
        model.autoprune_meta = PolicyMeta(algo=c.algo, min_keep=p.min_keep, max_keep=p.max_keep, reward=c.reward,
                                          action=c.action, relative_span=c.relative_span, metric=p.metric,
                                          target=p.target,
                                          groups=len(p.structure.groups),
                                          score=envs[0].sensitivity.key.get("score") if envs[0].sensitivity else None
                                          ).to_dict()
        return model

    def _warm_start(self, model, env: ChannelPruningEnv, path: str) -> None:
        """Continue from a saved policy: its actor (and actor target); the critic and optimisers start fresh."""
        net, meta = load_policy(path)  # one-line errors for a missing, corrupt, foreign or old-format file
        if meta.get("algo") != self.config.algo or meta.get("action") != self.config.action:
            raise AutopruneError(f"--init-policy '{path}' is a {meta.get('algo')} policy with {meta.get('action')} "
                                 f"actions; this search is {self.config.algo} with {self.config.action} actions: "
                                 f"pass --algo {meta.get('algo')} --action {meta.get('action')}")
        span = meta.get("relative_span", 1.0)
        if span != self.config.relative_span:
            raise AutopruneError(f"--init-policy '{path}' has relative actions of span {span}; this search's is"
                                 f" {self.config.relative_span}: pass --relative-span {span}")
        try:
            load_actor_into(model, net)
        except ValueError as exc:
            raise AutopruneError(f"--init-policy '{path}' does not fit this search's networks "
                                 f"({type(exc).__name__}): use the same --hidden sizes") from None

    def _is_noise_free(self, episode: int) -> bool:
        """Every ``eval_every``-th episode after warm-up runs the actor without noise."""
        c = self.config
        learned = episode - c.warmup_episodes
        return c.eval_every > 0 and learned >= 0 and (learned + 1) % c.eval_every == 0

    def _policy_bytes(self) -> bytes:
        return policy_bytes(self.model.policy, self.model.autoprune_meta)

    def _trajectory(self, ep: "Finished") -> dict:
        """The states and applied actions of a finished episode, read back from the replay buffer."""
        buffer = self.model.replay_buffer
        idx = (ep.first + np.arange(ep.steps)) % buffer.buffer_size
        return {"obs": buffer.observations[idx, 0].tolist(), "actions": buffer.actions[idx, 0].tolist()}

    def _distil(self, env: ChannelPruningEnv, best: Best) -> bytes | None:
        """Fit the actor onto the best episode until its noise-free rollout plays the best allocation
        (the env runs unscored: no evaluation); the actor's bytes, or None if it does not get there.

        A played allocation (a heuristic's) may be out of the actions' reach: a width below half the even
        one with ``relative`` actions, or budget left that an acting episode would fill. If its own recorded
        actions, replayed, do not give it, no actor can, and the fit is not tried."""
        traj = self.best_trajectory
        if traj is None or best.allocation is None or env.problem.target_range is not None:
            return None  # budget-conditioned: one episode's budget is not the policy's job
        obs, actions = np.asarray(traj["obs"], np.float32), np.asarray(traj["actions"], np.float32)
        evaluate, env.evaluate = env.evaluate, False
        try:
            replay = iter(actions)
            if rollout(env, lambda o: next(replay))["allocation"].keep != best.allocation.keep:
                return None
            for _ in range(DISTIL_ROUNDS):
                self.model.fit_actor(obs, actions, DISTIL_STEPS)
                info = rollout(env, lambda o: self.model.predict(o, deterministic=True)[0])
                if info["allocation"].keep == best.allocation.keep:
                    return self._policy_bytes()
        finally:
            env.evaluate = evaluate
        return None

    def _collect(self, env, episode: int, callback: EpisodeEnd) -> "Finished":
        """Run one episode with the current actor (noise-free every ``eval_every``-th) and store its transitions."""
        n = env.steps_of(episode) if isinstance(env, MultiModelEnv) else env.n  # models differ in group count
        noise_free = self._is_noise_free(episode)
        acting = self._policy_bytes() if noise_free else None  # learn() may update the actor after the episode
        sigma = self.model.action_noise.sigma if self.model.action_noise is not None else None
        explore = None if self.model.num_timesteps < self.model.learning_starts else (0.0 if noise_free else sigma)
        first = self.model.replay_buffer.pos
        with self.model.acting(noise_free):
            self.model.learn(total_timesteps=n, reset_num_timesteps=False, callback=callback, log_interval=None)
        if noise_free and self.model.action_noise is not None:  # evaluation episodes do not decay exploration
            self.model.action_noise.sigma = sigma
        reward, info = callback.finished.pop()
        callback.finished.clear()
        return Finished(episode, reward, info, explore, acting, first, n)

    def _episode(self, env, episode: int, callback: EpisodeEnd, eval_clock: Callable[[], float]) -> "Finished":
        """AMC's loop: one episode, scored at its last step, then ``updates_per_step`` x steps gradient steps."""
        t0, e0 = time.perf_counter(), eval_clock()
        ep = self._collect(env, episode, callback)
        ep.seconds, ep.eval_seconds = time.perf_counter() - t0, eval_clock() - e0
        return ep

    def _parallel_round(self, env: ChannelPruningEnv, first: int, count: int, callback: EpisodeEnd) -> list["Finished"]:
        """``count`` episodes with the same actor (each with its own noise), scored together on the problem's
        pool, then one update of ``count`` x ``updates_per_step`` x steps gradient steps: the same number of
        updates per transition as the one-episode loop, applied once per round instead of after each episode."""
        t0 = time.perf_counter()
        env.evaluate = False
        try:
            with self.model.collecting():  # learn after the round is scored
                finished = [self._collect(env, e, callback) for e in range(first, first + count)]
        finally:
            env.evaluate = True
        env.scorer.score_many([ep.info["allocation"] for ep in finished])  # on the pool, all at once
        buffer = self.model.replay_buffer
        for ep in finished:
            # budget-conditioned: the reference is uniform's at the episode's own target
            at = env.base.with_target(ep.info["target"]) if env.base.target_range is not None else env.base
            ep.reward, score = env.reward_of(ep.info["allocation"], at)
            ep.info.update(accuracy=score.value, score=score)
            set_episode_reward(buffer, ep.first, ep.steps, ep.reward)
        if self.model.num_timesteps > self.model.learning_starts:
            self.model.train(gradient_steps=env.n * count, batch_size=self.model.batch_size)
        seconds = (time.perf_counter() - t0) / count
        for ep in finished:
            ep.seconds = seconds  # the round's wall time, shared; adaptive-BN time is spent in the workers
        return finished

    def search(self, problem: PruningProblem | list[PruningProblem], scorer: Scorer | list[Scorer],
               run_dir: str | Path | None = None, resume: bool = False, progress: bool = False,
               on_episode: Callable[[int, float, dict], None] | None = None,
               sensitivity: SensitivityTable | list[SensitivityTable] | None = None) -> SearchResult:
        """Run (or continue) the search; a list of problems (several models) trains one policy on all of
        them, episode ``e`` on problem ``e % len``, each logged in its own ``run_dir/<i>-<group count>g/``.

        With ``run_dir``: episodes.csv, TensorBoard, checkpoints, ``policy.zip`` (the kept actor: fitted
        onto the best episode, see ``distil_best``, else the one whose noise-free episode scored best; then
        that one is also ``noise_free_policy.zip``) and ``final_policy.zip`` (the actor after the last episode).
        ``sensitivity``: each problem's table, already measured with the same score (default: measured
        here, cached in ``run_dir/sensitivity.json``).
        """
        c = self.config
        run_dir = Path(run_dir) if run_dir is not None else None
        problems = problem if isinstance(problem, list) else [problem]
        scorers = scorer if isinstance(scorer, list) else [scorer]
        if len(scorers) != len(problems):
            raise ValueError(f"{len(problems)} problems but {len(scorers)} scorers")
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
        tables = self.tables = self._tables(problems, scorers, run_dir, sensitivity)  # per problem, kept for reports
        envs = [ChannelPruningEnv(p, sc, reward=c.reward, action=c.action, sensitivity=t,
                                  relative_span=c.relative_span) for p, sc, t in zip(problems, scorers, tables)]
        state = None
        if resume and run_dir is not None:
            probe = envs[0] if len(envs) == 1 else MultiModelEnv(envs)
            loaded = load_checkpoint(run_dir / "checkpoints", AGENT_CLASSES[c.algo], probe)
            state = loaded[1] if loaded else None
        start = state["episode"] if state else 0
        self._warm_start_from_heuristics(envs, start)
        env = envs[0] if len(envs) == 1 else MultiModelEnv(envs, start_episode=start)
        elapsed = resumed = state["elapsed"] if state else 0.0
        if state is None:
            torch.manual_seed(c.seed)
            self.model = self._build(env)
        else:
            self.model = loaded[0]
            if env is not probe:
                self.model.set_env(env)
            for sc, cache in zip(scorers, state["caches"]):
                sc.restore_cache(cache)
        # SB3's logger: actor / critic losses next to the episode scalars in tb/ (nothing without a run folder)
        # (configure(None, []) would still create a /tmp/SB3-<date> folder: a bare Logger writes nowhere)
        self.model.set_logger(configure(str(run_dir / "tb"), ["tensorboard"]) if run_dir is not None
                              else Logger(None, []))
        self.best_policy = (state or {}).get("best_policy") or {"score": -float("inf"), "episode": -1, "zip": None}
        self.best_trajectory = (state or {}).get("best_trajectory")  # the best episode's states and actions
        log_dirs = ([run_dir] * len(problems) if len(problems) == 1 or run_dir is None
                    else [run_dir / f"{i}-{len(p.structure.groups)}g" for i, p in enumerate(problems)])
        logs = [EpisodeLog(d, p.structure, start_episode=start, score_kind=sc.evaluator.kind)
                for d, p, sc in zip(log_dirs, problems, scorers)]
        if state is not None:
            for lg, best in zip(logs, state["bests"]):
                lg.best = Best.from_state(best)
        callback = EpisodeEnd(self.model.action_noise, c.noise_decay, self.model.learning_starts)

        def eval_clock() -> float:  # seconds spent scoring in this process
            return sum(sc.seconds for sc in scorers)

        eval_total = state["eval_elapsed"] if state else 0.0  # both totals span resumes
        workers = scorers[0].workers
        if workers > 1 and len(problems) > 1:
            raise AutopruneError("--workers with --more-models is not supported yet: run one model per search")
        try:
            with progress_bar(c.episodes, start, f"search ({c.algo})", progress) as bar:
                episode = start
                while episode < c.episodes:
                    count = min(workers, c.episodes - episode)
                    if workers == 1:
                        finished = [self._episode(env, episode, callback, eval_clock)]
                    else:
                        finished = self._parallel_round(env, episode, count, callback)
                    self.model.logger.dump(step=episode + count - 1)
                    for ep in finished:
                        eval_total += ep.eval_seconds
                        elapsed += ep.seconds
                        log = logs[ep.episode % len(logs)]
                        if log.record(ep.episode, ep.reward, ep.info, noise=ep.explore, seconds=ep.seconds,
                                      eval_seconds=ep.eval_seconds) and len(logs) == 1:
                            self.best_trajectory = self._trajectory(ep)
                        if ep.acting is not None and ep.reward > self.best_policy["score"]:
                            self.best_policy = {"score": float(ep.reward), "episode": ep.episode, "zip": ep.acting}
                        if on_episode is not None:
                            on_episode(ep.episode, ep.reward, ep.info)
                        bar.update(1)
                        if log.best.info.get("accuracy") is not None:
                            bar.set_postfix(best=brief(log.best.info["accuracy"], scorers[0].evaluator.kind),
                                            refresh=False)
                    every = max(1, c.checkpoint_every)
                    done = episode + count
                    if run_dir is not None and (done // every > episode // every or done == c.episodes):
                        save_checkpoint(run_dir / "checkpoints", done, self.model,
                                        {"bests": [lg.best.to_state() for lg in logs],
                                         "caches": [sc.cache_state() for sc in scorers], "elapsed": elapsed,
                                         "eval_elapsed": eval_total, "best_policy": self.best_policy,
                                         "best_trajectory": self.best_trajectory})
                    episode = done
        finally:
            for lg in logs:
                lg.close()
            self.model.logger.close()
            for e in envs:
                e.play_nothing()
        final = self._policy_bytes()  # before distillation moves the actor
        distilled = self._distil(envs[0], logs[0].best) if c.distil_best and len(problems) == 1 else None
        kept = self.best_policy
        if distilled is not None:  # it plays the best allocation, so it scores the best episode's reward
            kept = {"score": float(logs[0].best.info["reward"]), "episode": logs[0].best.episode, "zip": distilled}
        policy_path = self._write_policies(run_dir, final, kept, distilled is not None) if run_dir else None
        self.heuristics = self._heuristics(envs[0])
        return SearchResult(logs[0].best, c.episodes, elapsed, eval_total, logs[0].rewards, logs[0].noise_free,
                            policy_path, kept["score"], kept["episode"], [lg.best for lg in logs],
                            policy_distilled=distilled is not None, resumed_seconds=resumed,
                            heuristics=self.heuristics)

    def _heuristics(self, env: ChannelPruningEnv) -> list[Allocation]:
        """The allocations the first episodes played (sensitivity's, uniform's), at the problem's own target:
        the finalists stage re-scores them whatever their search score. None for a budget-conditioned search."""
        if not self.config.heuristic_warmup or env.problem.target_range is not None:
            return []
        return [env.sensitivity.allocation(env.problem), uniform_allocation(env.problem)]

    def _write_policies(self, run_dir: Path, final: bytes, kept: dict, distilled: bool) -> Path:
        """``final_policy.zip`` (the last actor), ``policy.zip`` (the kept one; the last actor when no
        noise-free episode ran) and, when the kept one was distilled, ``noise_free_policy.zip`` (the best
        actor of the search's own noise-free episodes)."""
        (run_dir / "final_policy.zip").write_bytes(final)
        if distilled and self.best_policy["zip"] is not None:
            (run_dir / "noise_free_policy.zip").write_bytes(self.best_policy["zip"])
        (run_dir / "policy.zip").write_bytes(kept["zip"] if kept["zip"] is not None else final)
        return run_dir / "policy.zip"
