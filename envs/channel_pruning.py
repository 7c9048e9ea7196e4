"""``ChannelPruningEnv``: AMC's MDP over a ``PruningProblem``, one step per prunable group.

Each step decides how many channels one group keeps (groups in forward order). The action in
[-1, 1] maps linearly to a keep ratio in [``min_keep``, ``max_keep``]; a two-sided budget wall
then clamps it so the episode's final allocation lands within the budget and within 1% below it:

* upper wall (AMC): assume every undecided group goes down to its minimum; keep at most what
  still lets the budget be met;
* lower wall: assume every undecided group stays at its maximum; keep at least what still lets
  the budget be reached (otherwise an aggressive start would finish far below the target).

With ``action="relative"`` the action instead scales the *even* keep ratio -- the one that, given
to this group and every later one, spends exactly the remaining budget -- by 2**(span x action)
(``relative_span`` 1: x0.5 to x2; 2: x0.25 to x4). Action 0 everywhere is then the uniform allocation
at any target, so a policy learned at one budget means the same thing at another (absolute actions
tie a policy to its training budget).
At tight budgets its lower half is often clipped by ``min_keep`` or the wall: a flat region where
different actions give the same width and the actor gets no gradient.

With ``action="wall"`` the action is a log-ratio around the even keep count, squashed into the
range the budget wall allows for this group: -1 is the wall's lower bound, 0 the even count, +1
the upper bound (log-interpolated on each side). No action value is wasted outside what the wall
allows, so distinct actions give distinct widths wherever the wall leaves a choice.

With ``action="sensitivity"`` the action is the same squashed log-ratio, around the width sensitivity
analysis gives this group (``autoprune.core.sensitivity``) instead of the even count: action 0
everywhere plays the sensitivity allocation, so the agent learns corrections to the heuristic. Its
lower wall asks only for 99% of the budget (the tolerance every allocation is held to), so that
allocation sits inside the wall. Without a table (no held-out data) its centre is the even count,
as with ``wall``.

``play(allocations)`` queues allocations to be played as is by the next episodes, whatever the
actions (the search's warm start from the heuristics); each step still reports the action that
gives its width, which is what the replay buffer learns.

The observation is scale-free (relative depth, log sizes, fractions of the model's cost, and the
group's sensitivity: the score with only this group pruned to keep 25/50/75%, relative to the
dense score), so a policy learned on one model can be rolled out on another. Without a sensitivity
table (no held-out data to measure it) those three features read 1: nothing measured. The reward is 0 until the last step,
then the scorer's (cached) score of the allocation.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from autoprune.core.allocation import Allocation
from autoprune.core.counts import bisect, fill_to_budget, snap_count
from autoprune.core.problem import PruningProblem, uniform_allocation
from autoprune.core.scoring import Score, Scorer
from autoprune.core.sensitivity import FEATURE_RATIOS, SensitivityTable
from autoprune.errors import AutopruneError

OBS_VERSION = 2  # 2: the sensitivity features
FEATURES = (
    "depth", "is_conv", "is_dwconv", "is_linear", "log_in_channels", "log_channels", "log_kernel_area",
    "log_stride", "log_weights", "group_cost_share", *(f"sensitivity_{round(100 * r)}" for r in FEATURE_RATIOS),
    "cost_removed", "cost_share_left", "cost_to_remove", "target", "prev_keep",
)
REWARDS = ("accuracy", "error_log_cost", "relative")
ACTIONS = ("absolute", "relative", "wall", "sensitivity")
TOLERANCE = 0.01  # an allocation may land this far below its budget


def _log_scaled(value: float, top: float) -> float:
    """log2(value) / log2(top), clipped to [0, 1]."""
    return float(np.clip(math.log2(max(value, 1.0)) / math.log2(top), 0.0, 1.0))


class ChannelPruningEnv(gym.Env):
    """One episode = one allocation for ``problem``.

    Args:
        problem: model structure, budget and bounds (with ``target_range``, each episode's target
            is sampled from it and ``problem`` is that episode's ``with_target`` copy).
        scorer: scores the final allocation; without it (or with ``evaluate`` off) the reward is 0,
            which is enough to roll a policy out.
        reward: ``accuracy`` (the score), ``error_log_cost`` (AMC's -error * log(cost))
            or ``relative`` (score minus ``reference``, default: the uniform allocation's).
        reference: the ``relative`` reward's baseline accuracy.
        action: ``absolute`` (keep ratio within the bounds, AMC), ``relative`` (a factor on the
            even keep ratio of the remaining budget), ``wall`` (around the even keep count,
            within the budget wall's range for this group) or ``sensitivity`` (the same, around the
            sensitivity allocation's count; the even count without ``sensitivity``).
        sensitivity: the model's sensitivity table (the observation's ``sensitivity_*`` features).
    """

    metadata = {"render_modes": []}

    def __init__(self, problem: PruningProblem, scorer: Scorer | None = None, reward: str = "accuracy",
                 evaluate: bool = True, reference: float | None = None, action: str = "absolute",
                 sensitivity: SensitivityTable | None = None, relative_span: float = 1.0):
        if reward not in REWARDS:
            raise AutopruneError(f"unknown reward '{reward}': use one of {', '.join(REWARDS)}")
        if action not in ACTIONS:
            raise AutopruneError(f"unknown action mode '{action}': use one of {', '.join(ACTIONS)}")
        if not relative_span > 0:
            raise AutopruneError(f"--relative-span {relative_span}: give a positive log2 reach (1: x0.5-x2)")
        self.action_kind = action
        self.relative_span = float(relative_span)
        self.problem = self.base = problem
        self.scorer = scorer
        self.reward_kind = reward
        self.evaluate = evaluate and scorer is not None
        self.reference = reference
        self._references: dict[float, float] = {}  # relative reward: uniform's score per target
        s = problem.structure
        self.n = len(s.groups)
        self.lo, self.hi = problem.min_counts(), problem.max_counts()
        self.legal = [np.unique([snap_count(g, k, problem.round_to) for k in range(lo, hi + 1)])
                      for g, lo, hi in zip(s.groups, self.lo, self.hi)]
        dense = float(problem.dense_cost)
        share = []
        for i in range(self.n):  # cost that disappears with the whole group: scale-free importance
            keep = s.channels.copy()
            keep[i] = 0
            share.append((dense - problem.cost(keep)) / dense)
        self.share = np.clip(np.array(share), 0.0, 1.0)
        self.sensitivity = sensitivity
        sens = (sensitivity.features(problem) if sensitivity is not None
                else np.ones((self.n, len(FEATURE_RATIOS)), dtype=np.float32))
        self._static = np.concatenate([np.array([self._static_features(i) for i in range(self.n)], dtype=np.float32),
                                       sens], axis=1)
        self._sensitivity_counts: dict[float, np.ndarray] = {}  # the sensitivity allocation per target
        self._queue: list[Callable[[PruningProblem], Allocation]] = []  # what the next episodes play as is
        self._playing: np.ndarray | None = None
        self.observation_space = spaces.Box(0.0, 1.0, shape=(len(FEATURES),), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.counts = self.hi.copy()
        self.t = 0
        self.prev_keep = 1.0

    # -- features ----------------------------------------------------------------------------
    def _static_features(self, i: int) -> list[float]:
        g = self.problem.structure.groups[i]
        return [i / max(1, self.n - 1), float(g.kind == "conv"), float(g.kind == "dwconv"), float(g.kind == "linear"),
                _log_scaled(g.in_channels, 4096), _log_scaled(g.channels, 4096),
                _log_scaled(g.kernel[0] * g.kernel[1], 64), _log_scaled(max(g.stride), 4),
                _log_scaled(g.weight_count, 1e9), float(self.share[i])]

    def _observation(self) -> np.ndarray:
        p = self.problem
        dense = float(p.dense_cost)
        i = min(self.t, self.n - 1)
        at_max = self.counts.copy()
        at_max[self.t:] = self.hi[self.t:]
        removed = (dense - p.cost(np.where(np.arange(self.n) < self.t, self.counts, p.structure.channels))) / dense
        left = self.share[self.t:].sum() / max(self.share.sum(), 1e-12)
        to_remove = max(0.0, p.cost(at_max) - p.budget) / dense
        dynamic = [removed, left, to_remove, p.target, self.prev_keep]
        obs = np.concatenate([self._static[i], np.asarray(dynamic, dtype=np.float32)])  # static: shape, cost, sensitivity
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    # -- budget wall -------------------------------------------------------------------------
    def wall(self, i: int) -> tuple[int, int]:
        """(lowest, highest) legal keep count of group ``i`` that keeps the budget reachable (with
        ``sensitivity`` actions, the lower wall only asks for the budget within ``TOLERANCE``)."""
        p, legal = self.problem, self.legal[i]
        floor = p.budget * (1 - TOLERANCE) if self.action_kind == "sensitivity" else p.budget
        below, above = self.counts.copy(), self.counts.copy()
        below[i + 1:], above[i + 1:] = self.lo[i + 1:], self.hi[i + 1:]

        def cost(base: np.ndarray, k: int) -> int:
            base[i] = k
            return p.cost(base)

        # highest k with cost(decided, k, rest at min) <= budget (legal[0] always qualifies by induction)
        a, b = 0, len(legal) - 1
        while a < b:
            m = (a + b + 1) // 2
            a, b = (m, b) if cost(below, int(legal[m])) <= p.budget else (a, m - 1)
        upper = a
        # lowest k with cost(decided, k, rest at max) >= budget
        a, b = 0, len(legal) - 1
        while a < b:
            m = (a + b) // 2
            a, b = (a, m) if cost(above, int(legal[m])) >= floor else (m + 1, b)
        lower = min(a, upper)
        return int(legal[lower]), int(legal[upper])

    def even_keep(self, i: int) -> float:
        """Keep ratio that, given to group ``i`` and every later group, spends the remaining budget exactly."""
        p, ch = self.problem, self.problem.structure.channels
        counts = self.counts.copy()

        def cost(ratio: float) -> int:
            counts[i:] = np.maximum(1, np.round(ch[i:] * ratio))
            return p.cost(counts)

        if cost(1.0) <= p.budget:
            return 1.0
        return bisect(lambda ratio: cost(ratio) <= p.budget, iters=30)[0]

    def sensitivity_counts(self) -> np.ndarray:
        """The sensitivity allocation's keep counts at this episode's target (``sensitivity`` actions' centre)."""
        t = self.problem.target
        if t not in self._sensitivity_counts:
            alloc = self.sensitivity.allocation(self.problem)
            self._sensitivity_counts[t] = alloc.counts(self.problem.structure)
        return self._sensitivity_counts[t]

    def play(self, makers: list[Callable[[PruningProblem], Allocation]]) -> None:
        """The next episodes play ``maker(problem)`` as is (one maker per episode, called with the episode's
        problem, so at its target), whatever the actions; their steps report the action giving each width."""
        self._queue.extend(makers)

    def play_nothing(self) -> None:
        """Drop the queued allocations: the next episodes follow the actions."""
        self._queue.clear()

    def _next_played(self) -> np.ndarray | None:
        if not self._queue:
            return None
        alloc = self._queue.pop(0)(self.problem)
        if not self.problem.feasible(alloc, TOLERANCE):
            raise AutopruneError("an allocation played by the env must meet the budget within 1% below it")
        return alloc.counts(self.problem.structure)

    def keep_ratio(self, action: float) -> float:
        p = self.problem
        return p.min_keep + (float(np.clip(action, -1.0, 1.0)) + 1.0) / 2.0 * (p.max_keep - p.min_keep)

    def to_action(self, ratio: float) -> float:
        p = self.problem
        span = p.max_keep - p.min_keep
        return float(np.clip(2.0 * (ratio - p.min_keep) / span - 1.0, -1.0, 1.0)) if span > 0 else 0.0

    @staticmethod
    def wall_width(action: float, lower: float, centre: float, upper: float) -> float:
        """``wall`` actions: -1 -> lower, 0 -> centre, +1 -> upper, log-interpolated on each side."""
        end = upper if action >= 0 else lower
        return centre * (end / centre) ** abs(action)

    @staticmethod
    def wall_action(width: float, lower: float, centre: float, upper: float) -> float:
        """Inverse of ``wall_width``: the action that gives ``width`` (stored in the replay buffer)."""
        end = upper if width >= centre else lower
        if end == centre:
            return 0.0
        return float(np.clip(math.copysign(math.log(width / centre) / math.log(end / centre), width - centre),
                             -1.0, 1.0))

    # -- gymnasium API -----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        rng = self.base.target_range
        if rng is not None:  # budget-conditioned: this episode's target (on a 0.01 grid, so references repeat)
            self.problem = self.base.with_target(round(float(self.np_random.uniform(*rng)), 2))
        self.counts = self.hi.copy()
        self.t = 0
        self.prev_keep = 1.0
        self._playing = self._next_played()
        return self._observation(), {}

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.t >= self.n:
            raise RuntimeError("episode is over: call reset()")
        i, g = self.t, self.problem.structure.groups[self.t]
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        p = self.problem
        lower, upper = self.wall(i)
        if self.action_kind == "relative":
            even = max(self.even_keep(i), 1e-6)
            want = float(np.clip(even * 2.0 ** (self.relative_span * a), p.min_keep, p.max_keep)) * g.channels
        elif self.action_kind in ("wall", "sensitivity"):
            mid = (self.sensitivity_counts()[i] if self.action_kind == "sensitivity" and self.sensitivity is not None
                   else self.even_keep(i) * g.channels)
            centre = float(np.clip(mid, lower, upper))
            want = self.wall_width(a, lower, centre, upper)
        else:
            want = self.keep_ratio(a) * g.channels
        legal = self.legal[i]
        if self._playing is not None:  # a queued allocation: its width, whatever the action
            k = int(self._playing[i])
        else:
            k = int(legal[np.argmin(np.abs(legal - want))])
            k = min(max(k, lower), upper)
        self.counts[i] = k
        self.prev_keep = k / g.channels
        if self.action_kind == "relative":
            applied = float(np.clip(math.log2(max(self.prev_keep, 1e-9) / even) / self.relative_span, -1.0, 1.0))
        elif self.action_kind in ("wall", "sensitivity"):
            applied = self.wall_action(k, lower, centre, upper)
        else:
            applied = self.to_action(self.prev_keep)
        info: dict[str, Any] = {"keep": k, "applied_action": applied}
        self.t += 1
        if self.t < self.n:
            return self._observation(), 0.0, False, False, info
        if self._playing is None:  # a queued allocation is played exactly
            self.counts = fill_to_budget(self.problem, self.counts)
        allocation = Allocation({gr.name: int(c) for gr, c in zip(self.problem.structure.groups, self.counts)})
        reward, score = self.reward_of(allocation)
        s = self.problem.structure
        info.update(allocation=allocation, counts=self.counts.copy(), macs=s.macs(self.counts),
                    params=s.params(self.counts), cost_ratio=self.problem.cost(self.counts) / self.problem.dense_cost,
                    accuracy=None if score is None else score.value, score=score, target=self.problem.target)
        return self._observation(), reward, True, False, info

    def reward_of(self, allocation: Allocation, problem: PruningProblem | None = None) -> tuple[float, Score | None]:
        """(reward, score) of a final allocation at ``problem``'s target (default: this episode's);
        (0, None) unscored."""
        if not self.evaluate:
            return 0.0, None
        problem = problem or self.problem
        reference = self._reference(problem) if self.reward_kind == "relative" else 0.0
        score = self.scorer.score(allocation)
        acc = score.value
        if self.reward_kind == "accuracy":
            return float(acc), score
        if self.reward_kind == "error_log_cost":
            return float(-(1.0 - acc) * math.log(problem.cost(allocation.counts(problem.structure)))), score
        return float(acc - reference), score

    def _reference(self, problem: PruningProblem) -> float:
        """The relative reward's baseline: the given one, else uniform's score at ``problem``'s target."""
        if self.reference is not None:
            return self.reference
        t = problem.target
        if t not in self._references:
            self._references[t] = self.scorer.score(uniform_allocation(problem)).value
        return self._references[t]


def rollout(env: ChannelPruningEnv, act) -> dict:
    """Run one episode with ``act(obs) -> action``; the final step's info (allocation, cost, accuracy)."""
    obs, _ = env.reset()
    while True:
        obs, _, terminated, truncated, info = env.step(act(obs))
        if terminated or truncated:
            return info
