"""ChannelPruningEnv: API checks, the two-sided budget wall, rollouts without an evaluator."""
import gymnasium as gym
import numpy as np
import pytest
import torch

from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import FunctionEvaluator, Scorer
from autoprune.envs import ENV_ID, ChannelPruningEnv, rollout


def cheap_score(model: torch.nn.Module) -> float:
    """Deterministic stand-in for adaptive-BN accuracy: favours wide early layers."""
    return float(model.layer1[0].conv1.out_channels + model.layer1[1].conv1.out_channels) / 32.0


@pytest.fixture(scope="module")
def resnet56_structure():
    from autoprune.core.structure import ModelStructure
    from autoprune.models import create_model

    torch.manual_seed(0)
    return ModelStructure(create_model("resnet56", 10).eval(), torch.randn(1, 3, 32, 32))


def test_env_checkers_pass(resnet20_structure):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    problem = PruningProblem(resnet20_structure, 0.5)
    env = ChannelPruningEnv(problem, Scorer(problem, FunctionEvaluator(cheap_score)))
    check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)
    made = gym.make(ENV_ID, problem=PruningProblem(resnet20_structure, 0.5))
    obs, _ = made.reset(seed=0)
    assert made.observation_space.contains(obs)


def _sequences(n: int, rng: np.random.Generator):
    yield np.full(n, -1.0)
    yield np.full(n, 1.0)
    yield np.where(np.arange(n) % 2 == 0, -1.0, 1.0)
    yield np.concatenate([np.full(n // 2, -1.0), np.full(n - n // 2, 1.0)])
    yield np.concatenate([np.full(n // 2, 1.0), np.full(n - n // 2, -1.0)])
    for _ in range(40):
        yield rng.uniform(-1, 1, n)
    for _ in range(10):
        yield rng.choice([-1.0, 1.0], n)


@pytest.mark.parametrize("metric,target", [("macs", 0.5), ("macs", 0.3), ("macs", 0.8), ("params", 0.5)])
def test_every_episode_lands_within_one_percent_below_target(resnet20_structure, resnet56_structure, metric, target):
    rng = np.random.default_rng(1)
    for structure in (resnet20_structure, resnet56_structure):
        problem = PruningProblem(structure, target, metric=metric)
        for env in (ChannelPruningEnv(problem), ChannelPruningEnv(problem, action="relative")):
            for seq in _sequences(env.n, rng):
                it = iter(seq)
                info = rollout(env, lambda obs: np.array([next(it)], dtype=np.float32))
                cost = problem.cost(info["counts"])
                assert problem.budget * 0.99 <= cost <= problem.budget, (env.action_kind, metric, target, seq)
                assert problem.feasible(info["allocation"])
                ratios = info["allocation"].ratios(structure)
                assert ratios.min() >= problem.min_keep - 1 / structure.channels.min() and ratios.max() <= 1.0


def test_state_holds_applied_action_and_wall_caps_early_groups(resnet20_structure):
    problem = PruningProblem(resnet20_structure, 0.3)
    env = ChannelPruningEnv(problem)
    env.reset()
    _, _, _, _, info = env.step(np.array([1.0], dtype=np.float32))
    obs, *_ = env.step(np.array([1.0], dtype=np.float32))
    # the wall lets an early group stay dense only if the rest can still meet 30%; the obs reports what was applied
    keep = info["keep"] / resnet20_structure.groups[0].channels
    assert env.to_action(keep) == pytest.approx(info["applied_action"])
    assert obs[-1] == pytest.approx(env.counts[1] / resnet20_structure.groups[1].channels)
    # all +1: later groups are forced down, so some group must end below max
    info = rollout(env, lambda o: np.array([1.0], dtype=np.float32))
    assert info["allocation"].ratios(resnet20_structure).min() < 0.5


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_relative_action_zero_is_the_uniform_allocation_at_any_target(resnet56_structure, target):
    from autoprune.agents.uniform import UniformAllocator

    problem = PruningProblem(resnet56_structure, target)
    env = ChannelPruningEnv(problem, action="relative")
    info = rollout(env, lambda o: np.zeros(1, dtype=np.float32))
    uniform = UniformAllocator().allocate(problem).counts(resnet56_structure)
    assert np.abs(info["counts"] - uniform).max() <= 1
    # +1 doubles the even ratio of the first group (within the bounds and the wall); the applied action says so
    env.reset()
    even = env.even_keep(0)
    _, _, _, _, step = env.step(np.ones(1, dtype=np.float32))
    kept = step["keep"] / resnet56_structure.groups[0].channels
    assert kept == pytest.approx(min(2 * even, problem.max_keep), abs=1 / resnet56_structure.groups[0].channels)
    assert step["applied_action"] == pytest.approx(np.clip(np.log2(kept / even), -1, 1))


def test_relative_span_scales_the_reach_of_an_action(resnet56_structure):
    """Span 2: -0.5 halves the even ratio (2**(2 x -0.5)) and -1 quarters it (span 1: halves); the applied action
    is the log2 ratio over the span; 0 everywhere stays the uniform allocation."""
    from autoprune.errors import AutopruneError

    problem = PruningProblem(resnet56_structure, 0.7)
    channels = resnet56_structure.groups[0].channels
    for span, action, factor in ((2.0, -0.5, 0.5), (2.0, -1.0, 0.25), (1.0, -1.0, 0.5)):
        env = ChannelPruningEnv(problem, action="relative", relative_span=span)
        env.reset()
        even = env.even_keep(0)
        _, _, _, _, step = env.step(np.full(1, action, dtype=np.float32))
        kept = step["keep"] / channels
        assert kept == pytest.approx(max(factor * even, problem.min_keep), abs=1 / channels), (span, action)
        assert step["applied_action"] == pytest.approx(np.clip(np.log2(kept / even) / span, -1, 1))
    wide = rollout(ChannelPruningEnv(problem, action="relative", relative_span=2.0), lambda o: np.zeros(1, np.float32))
    narrow = rollout(ChannelPruningEnv(problem, action="relative"), lambda o: np.zeros(1, np.float32))
    assert np.array_equal(wide["counts"], narrow["counts"])
    with pytest.raises(AutopruneError, match="--relative-span 0: give a positive"):
        ChannelPruningEnv(problem, action="relative", relative_span=0)


def test_unknown_action_mode_is_a_clear_error(resnet20_structure):
    from autoprune.errors import AutopruneError

    with pytest.raises(AutopruneError, match="unknown action mode 'sideways'"):
        ChannelPruningEnv(PruningProblem(resnet20_structure, 0.5), action="sideways")


def test_runs_without_evaluator_and_rewards_with_one(resnet20_structure):
    env = ChannelPruningEnv(PruningProblem(resnet20_structure, 0.5))
    obs, _ = env.reset()
    for _ in range(env.n - 1):
        obs, r, term, trunc, _ = env.step(np.zeros(1, dtype=np.float32))
        assert r == 0.0 and not term
    _, r, term, _, info = env.step(np.zeros(1, dtype=np.float32))
    assert term and r == 0.0 and info["accuracy"] is None
    problem = PruningProblem(resnet20_structure, 0.5)
    scored = ChannelPruningEnv(problem, Scorer(problem, FunctionEvaluator(cheap_score)))
    info = rollout(scored, lambda o: np.zeros(1, dtype=np.float32))
    assert info["accuracy"] == pytest.approx(cheap_score(scored.problem.pruned_model(info["allocation"])))
    rel = ChannelPruningEnv(problem, Scorer(problem, FunctionEvaluator(cheap_score)), reward="relative",
                            reference=0.25)
    rel.reset()
    for _ in range(rel.n):
        _, r, *_ , info = rel.step(np.zeros(1, dtype=np.float32))
    assert r == pytest.approx(info["accuracy"] - 0.25)


def test_observation_is_scale_free(resnet20_structure, resnet56_structure):
    """Same layout and range on models of different depth; relative depth ends at 1."""
    for structure in (resnet20_structure, resnet56_structure):
        env = ChannelPruningEnv(PruningProblem(structure, 0.5))
        obs, _ = env.reset()
        seen = [obs]
        for _ in range(env.n - 1):
            obs, *_ = env.step(np.zeros(1, dtype=np.float32))
            seen.append(obs)
        seen = np.array(seen)
        assert seen.shape[1] == env.observation_space.shape[0]
        assert seen[0, 0] == 0.0 and seen[-1, 0] == pytest.approx(1.0)
        assert (seen >= 0).all() and (seen <= 1).all()
        assert np.all(np.diff(seen[:, 10]) >= -1e-6)  # MACs removed so far never decreases


@pytest.mark.parametrize("target", [0.3, 0.7])
def test_wall_actions_have_no_flat_region(target):
    """Every step: 9 evenly spaced actions give 9 increasing widths wherever the wall leaves room for them,
    and the stored (applied) action maps back to the width it produced."""
    import numpy as np

    from autoprune.core.problem import PruningProblem
    from autoprune.core.structure import ModelStructure
    from autoprune.envs import ChannelPruningEnv
    from autoprune.models import create_model

    s = ModelStructure(create_model("resnet56", 10), torch.randn(1, 3, 32, 32))
    env = ChannelPruningEnv(PruningProblem(s, target), evaluate=False, action="wall")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = np.linspace(-1, 1, 9)
    checked = 0
    for i in range(env.n):
        lower, upper = env.wall(i)
        state = (env.counts.copy(), env.t, env.prev_keep)
        widths, applied = [], []
        for a in actions:
            env.counts, env.t, env.prev_keep = state[0].copy(), state[1], state[2]
            _, _, _, _, info = env.step([a])
            widths.append(info["keep"])
            applied.append(info["applied_action"])
        assert widths == sorted(widths) and widths[0] == lower and widths[-1] == upper
        centre = float(np.clip(env.even_keep(i) * s.groups[i].channels, lower, upper))
        legal = env.legal[i]
        for half in (widths[:5], widths[4:]):  # each side of the even count: as many widths as it can hold
            room = int(((legal >= min(half)) & (legal <= max(half))).sum())
            assert len(set(half)) == min(5, room), (i, lower, centre, upper, widths)
        checked += upper > lower
        for w, b in zip(widths, applied):  # the replay buffer learns the action that was applied
            assert ChannelPruningEnv.wall_width(b, lower, centre, upper) == pytest.approx(w, abs=1e-6)
        env.counts, env.t, env.prev_keep = state[0].copy(), state[1], state[2]
        env.step([rng.uniform(-1, 1)])
    assert checked >= 5
