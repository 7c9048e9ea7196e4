"""Search: determinism, SIGKILL + resume, random search, learned-policy transfer, CLI errors."""
import csv
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from autoprune.agents import get_allocator
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import FunctionEvaluator, Scorer
from autoprune.errors import AutopruneError

ROOT = Path(__file__).resolve().parents[1]

# a deterministic, cheap stand-in for adaptive-BN accuracy that prefers some groups over others
SCORE = "lambda m: float(sum(p.detach().abs().sum() for n, p in m.named_parameters() if 'layer1' in n or 'layer3.2' in n)) / 1e3"


def cheap_problem(structure, target=0.5):
    return PruningProblem(structure, target)


def cheap_scorer(problem, fn=None):
    return Scorer(problem, FunctionEvaluator(fn or eval(SCORE)))


def _search(structure, seed, episodes=8, **kw):
    from autoprune.agents.rl import RLSearch

    problem = cheap_problem(structure)
    return RLSearch(episodes=episodes, warmup_episodes=3, seed=seed, **kw).search(problem, cheap_scorer(problem))


def test_same_seed_same_best_allocation(resnet20_structure):
    a = _search(resnet20_structure, seed=3)
    b = _search(resnet20_structure, seed=3)
    assert a.allocation == b.allocation and a.best.score == b.best.score
    c = _search(resnet20_structure, seed=4)
    assert c.rewards[2:] != a.rewards[2:]  # the seed does matter (after the two heuristic episodes)


def test_td3_and_sac_run_and_stay_feasible(resnet20_structure):
    for algo in ("td3", "sac"):  # the best here is episode 0, the sensitivity allocation: with `sensitivity`
        # actions that is 0 everywhere, which an actor can always be fitted onto (a `relative` ratio may clip)
        result = _search(resnet20_structure, seed=0, episodes=5, algo=algo, eval_every=2, action="sensitivity")
        assert cheap_problem(resnet20_structure).feasible(result.allocation)
        assert result.policy_distilled and result.policy_episode == result.best.episode


def test_learned_agent_improves_on_its_warmup(resnet20_structure):
    """On a smooth toy score the agent's post-warm-up episodes beat its random warm-up on average."""
    from autoprune.agents.rl import RLSearch

    problem = cheap_problem(resnet20_structure)
    rewards = []
    RLSearch(episodes=45, warmup_episodes=15, seed=0, noise_decay=0.9).search(
        problem, cheap_scorer(problem), on_episode=lambda e, r, info: rewards.append(r))
    assert np.mean(rewards[-10:]) > np.mean(rewards[:15])


def test_episode_credit_gives_every_step_the_normalised_outcome():
    """Each transition's target is its episode's final reward, normalised over what the buffer holds
    (including after the buffer wraps), and is never bootstrapped."""
    from gymnasium import spaces

    from autoprune.agents.rl.amc import EpisodeCreditBuffer

    buffer = EpisodeCreditBuffer(7, spaces.Box(0, 1, (2,)), spaces.Box(-1, 1, (1,)), device="cpu")
    outcomes = [0.2, 0.5, 0.9, 0.4]  # 4 episodes of 3 steps through a 7-slot buffer
    owner = []
    for outcome in outcomes:
        for step in range(3):
            done = step == 2
            buffer.add(np.zeros(2), np.zeros(2), np.zeros(1), np.array([outcome if done else 0.0]),
                       np.array([done]), [{}])
            owner = (owner + [outcome])[-7:]
        live = np.array(owner)
        # slot i holds the (len(owner) - 7 + i)-th step written, modulo the wrap
        held = np.roll(live, buffer.pos) if buffer.full else live
        want = (held - held.mean()) / max(held.std(), 1e-6)  # one outcome so far: all zero
        np.testing.assert_allclose(buffer.rewards[: len(held), 0], want, rtol=1e-5)
        assert (buffer.dones[: len(held), 0] == 1).all()


def test_self_imitation_pulls_the_actor_onto_its_best_episode(resnet20_structure):
    """Two stored episodes with opposite actions: imitating the top one moves the actor onto its actions."""
    from autoprune.agents.rl import RLSearch
    from autoprune.envs import ChannelPruningEnv

    problem = cheap_problem(resnet20_structure)
    env = ChannelPruningEnv(problem, cheap_scorer(problem), action="relative")
    model = RLSearch(imitation=1.0, imitation_top=1, seed=0)._build(env)
    obs = np.random.default_rng(0).random((2, env.n, env.observation_space.shape[0])).astype(np.float32)
    for episode, (action, outcome) in enumerate(((0.6, 0.9), (-0.6, 0.1))):  # the first one scored best
        for step in range(env.n):
            done = step == env.n - 1
            model.replay_buffer.add(obs[episode, step], obs[episode, step], np.array([action]),
                                    np.array([outcome if done else 0.0]), np.array([done]), [{}])
    best = torch.as_tensor(obs[0])
    with torch.no_grad():
        before = model.policy(best, deterministic=True)
    model._imitate_best(gradient_steps=300, batch_size=8)
    with torch.no_grad():
        after = model.policy(best, deterministic=True)
    assert (after - 0.6).abs().max() < 0.05 < (before - 0.6).abs().max()
    with pytest.raises(AutopruneError, match="use --credit episode, or --imitation 0 with --credit td"):
        RLSearch(credit="td")  # imitation is on by default
    RLSearch(credit="td", imitation=0.0)


def test_kept_policy_is_the_best_noise_free_actor(tmp_path, resnet20_structure):
    from autoprune.agents.policy import PolicyAllocator
    from autoprune.agents.rl import RLSearch

    problem = cheap_problem(resnet20_structure)
    seen = {}
    result = RLSearch(episodes=12, warmup_episodes=3, eval_every=3, seed=0, distil_best=False).search(
        problem, cheap_scorer(problem), tmp_path, on_episode=lambda e, r, info: seen.setdefault(e, (r, info["allocation"])))
    rows = _rows(tmp_path / "episodes.csv")
    greedy = [int(r["episode"]) for r in rows if r["noise"] != "" and float(r["noise"]) == 0.0]
    assert greedy == [5, 8, 11]  # every 3rd episode after the 3 warm-up ones
    best = max(greedy, key=lambda e: seen[e][0])
    assert result.policy_episode == best and result.policy_score == seen[best][0]
    # policy.zip is the actor as it was when it played that episode, not the one after it learned
    assert PolicyAllocator(tmp_path / "policy.zip").allocate(problem, cheap_scorer(problem)) == seen[best][1]
    assert (tmp_path / "final_policy.zip").exists()
    assert not result.policy_distilled and not (tmp_path / "noise_free_policy.zip").exists()


def test_distilled_policy_plays_the_best_allocation(tmp_path, resnet20_structure):
    """By default the kept policy is fitted onto the best episode: rolled out from disk on a fresh problem
    it plays the best allocation; the search's best noise-free actor is kept beside it."""
    from autoprune.agents.policy import PolicyAllocator
    from autoprune.agents.rl import RLSearch

    seen = {}  # without self-imitation the best episode of this seed is a noisy one
    problem = cheap_problem(resnet20_structure)
    result = RLSearch(episodes=12, warmup_episodes=3, eval_every=3, seed=2, imitation=0.0, noise_decay=0.95,
                      heuristic_warmup=False, action="relative").search(
        problem, cheap_scorer(problem), tmp_path,
        on_episode=lambda e, r, info: seen.setdefault(e, (r, info["allocation"])))
    greedy_best = max((5, 8, 11), key=lambda e: seen[e][0])
    assert result.best.episode not in (5, 8, 11)  # a noisy episode: the actor had to be moved onto it
    assert result.policy_distilled and result.policy_episode == result.best.episode
    assert result.policy_score == seen[result.best.episode][0]
    fresh = cheap_problem(resnet20_structure)
    scorer = cheap_scorer(fresh)  # measures the sensitivity the policy reads (cached: one sweep for both)
    assert PolicyAllocator(tmp_path / "policy.zip").allocate(fresh, scorer) == result.allocation
    assert PolicyAllocator(tmp_path / "noise_free_policy.zip").allocate(fresh, scorer) == seen[greedy_best][1]


SCRIPT = textwrap.dedent(f"""
    import os, signal, sys, torch
    from autoprune.agents.rl import RLSearch
    from autoprune.models import create_model
    from autoprune.core.problem import PruningProblem
    from autoprune.core.scoring import FunctionEvaluator, Scorer
    from autoprune.core.structure import ModelStructure
    torch.manual_seed(0)
    structure = ModelStructure(create_model("resnet20", 10).eval(), torch.randn(1, 3, 32, 32))
    score = {SCORE}
    calls = [0]
    def dying(m):  # SIGKILLs its own process at the given call: an interruption at a known point
        calls[0] += 1
        if calls[0] == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
        return score(m)
    problem = PruningProblem(structure, 0.5)
    RLSearch(episodes=int(sys.argv[2]), warmup_episodes=4, checkpoint_every=3, seed=1).search(
        problem, Scorer(problem, FunctionEvaluator(dying)), sys.argv[1], resume=len(sys.argv) > 4)
""")


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


SWEEP_20, SWEEP_32 = 1 + 9 * 4, 1 + 15 * 4  # the sensitivity sweep's scores: dense + 4 ratios per group


def _run(args, **kw):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *map(str, args)], cwd=ROOT, **kw)


@pytest.mark.slow
def test_sigkill_then_resume_loses_and_repeats_nothing(tmp_path):
    episodes = 14
    reference = tmp_path / "uninterrupted"
    assert _run([reference, episodes, 0]).wait(timeout=120) == 0
    run = tmp_path / "killed"
    assert _run([run, episodes, SWEEP_20 + 9]).wait(timeout=120) == -signal.SIGKILL  # dies scoring episode 8
    latest = run / "checkpoints" / "latest.json"
    import json

    ckpt = json.loads(latest.read_text())["episode"]
    assert ckpt == 6  # checkpoints every 3 episodes: the last one before the kill
    before = _rows(run / "episodes.csv")[:ckpt]
    assert [int(r["episode"]) for r in before] == list(range(ckpt))
    assert _run([run, episodes, 0, "resume"]).wait(timeout=120) == 0
    after = _rows(run / "episodes.csv")
    assert [int(r["episode"]) for r in after] == list(range(episodes))  # continues, no repeats, no gaps
    assert after[:ckpt] == before  # nothing before the checkpoint lost or rewritten
    ref = _rows(reference / "episodes.csv")
    keys = [k for k in ref[0] if k.startswith("keep:") or k in ("reward", "macs")]
    # RNGs, noise, replay buffer and networks are restored: the resumed run matches an uninterrupted one
    assert [[r[k] for k in keys] for r in after] == [[r[k] for k in keys] for r in ref]
    assert (run / "policy.zip").exists() and (run / "best_allocation.json").exists()


def test_random_search_keeps_best_of_feasible_samples(resnet20_structure):
    problem = cheap_problem(resnet20_structure, 0.4)
    searcher = get_allocator("random", samples=12, seed=5)
    scorer = cheap_scorer(problem)
    best = searcher.allocate(problem, scorer)
    scores = [s for _, s in searcher.history]
    assert len(scores) == 12 and scorer.value(best) == max(scores)
    assert all(problem.feasible(a) for a, _ in searcher.history)
    assert len({tuple(a.counts(resnet20_structure)) for a, _ in searcher.history}) == 12
    again = get_allocator("random", samples=12, seed=5).allocate(problem, scorer)
    assert again == best


@pytest.mark.parametrize("search", ["ddpg", "random"])
def test_a_resumed_search_reports_the_seconds_of_its_earlier_sessions(tmp_path, resnet20_structure, search):
    """What a benchmark adds to its own wall clock so that a resumed search costs as much as an unbroken one."""
    from autoprune.agents.random_search import RandomSearch
    from autoprune.agents.rl import RLSearch

    def make(n):
        return (RLSearch(episodes=n, warmup_episodes=2, checkpoint_every=1) if search == "ddpg"
                else RandomSearch(samples=n, seed=0))

    problem = cheap_problem(resnet20_structure)
    first = make(3).search(problem, cheap_scorer(problem), tmp_path)
    assert first.resumed_seconds == 0.0 and first.seconds > 0
    resumed = make(5).search(problem, cheap_scorer(problem), tmp_path, resume=True)
    assert resumed.resumed_seconds == pytest.approx(first.seconds, abs=1e-2)  # episodes.csv rounds to ms
    assert resumed.seconds > resumed.resumed_seconds


def test_policy_transfers_to_deeper_model_and_torchvision(tmp_path, resnet20_structure):
    from autoprune.agents.rl import RLSearch
    from autoprune.core.structure import ModelStructure
    from autoprune.models import create_model

    problem = cheap_problem(resnet20_structure)
    RLSearch(episodes=5, warmup_episodes=2, seed=0).search(problem, cheap_scorer(problem), tmp_path)
    allocator = get_allocator(f"policy:{tmp_path / 'policy.zip'}")
    torch.manual_seed(0)
    for name in ("resnet56", "tv:resnet18"):
        structure = ModelStructure(create_model(name, 10).eval(), torch.randn(1, 3, 32, 32), num_classes=10)
        for target in (0.3, 0.5):
            problem = PruningProblem(structure, target)  # no evaluator: a rollout needs no data
            alloc = allocator.allocate(problem)
            assert problem.feasible(alloc), (name, target)
            assert allocator.allocate(problem) == alloc  # deterministic


def test_relative_action_policy_rolls_out_in_its_own_action_mode(tmp_path, resnet20_structure):
    from autoprune.agents.policy import PolicyAllocator
    from autoprune.agents.rl import RLSearch

    problem = cheap_problem(resnet20_structure)
    seen = {}
    result = RLSearch(episodes=6, warmup_episodes=2, eval_every=2, seed=0, action="relative").search(
        problem, cheap_scorer(problem), tmp_path, on_episode=lambda e, r, info: seen.setdefault(e, info["allocation"]))
    allocator = PolicyAllocator(tmp_path / "policy.zip")
    assert allocator.meta["action"] == "relative"
    # same actions, same mode, same sensitivity features: same allocation
    assert allocator.allocate(problem, cheap_scorer(problem)) == seen[result.policy_episode]
    for target in (0.3, 0.7):  # the same policy, other budgets
        other = cheap_problem(resnet20_structure, target)
        assert other.feasible(allocator.allocate(other))


def test_corrupt_or_foreign_policy_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(AutopruneError, match="cannot be read"):
        get_allocator(f"policy:{bad}")
    from stable_baselines3 import TD3

    from autoprune.agents.rl.legacy import convert_policy

    foreign = tmp_path / "foreign.zip"

    TD3("MlpPolicy", gym.make("Pendulum-v1"), device="cpu").save(foreign)
    with pytest.raises(AutopruneError, match="old format.*autoprune convert-policy"):
        get_allocator(f"policy:{foreign}")  # refused by its entry names, before anything in it is read
    converted = tmp_path / "converted.zip"
    with pytest.raises(AutopruneError, match="not written by autoprune search"):
        convert_policy(foreign, converted)  # the converter still wants autoprune's metadata
    assert not converted.exists()
    with pytest.raises(AutopruneError, match="not found"):
        get_allocator(f"policy:{tmp_path / 'missing.zip'}")


def test_env_is_registered_with_gymnasium(resnet20_structure):
    from autoprune.envs import ENV_ID, ChannelPruningEnv

    env = gym.make(ENV_ID, problem=PruningProblem(resnet20_structure, 0.5), evaluate=False)
    assert isinstance(env.unwrapped, ChannelPruningEnv) and env.unwrapped.n == len(resnet20_structure.groups)


def test_tensorboard_shows_actor_and_critic_losses(tmp_path, resnet20_structure):
    """SB3's own logger is on: the losses it records while learning reach tb/ next to the episode scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from autoprune.agents.rl import RLSearch

    problem = cheap_problem(resnet20_structure)
    RLSearch(episodes=4, warmup_episodes=2, seed=0).search(problem, cheap_scorer(problem), tmp_path)
    tags = set()
    for events in (tmp_path / "tb").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/actor_loss", "train/critic_loss", "episode/accuracy"} <= tags



def test_init_policy_continues_from_a_saved_policy(tmp_path, resnet20_structure):
    """--init-policy: the new search's actor (and actor target) start from the saved actor; the critic is fresh."""
    from autoprune.agents.rl import RLSearch
    from autoprune.agents.rl.policy_io import load_policy
    from autoprune.envs import ChannelPruningEnv
    from autoprune.errors import AutopruneError

    problem = cheap_problem(resnet20_structure)
    first = RLSearch(episodes=4, warmup_episodes=2, eval_every=1, seed=0)
    first.search(problem, cheap_scorer(problem), tmp_path / "a")
    saved, _ = load_policy(tmp_path / "a" / "policy.zip")
    warm = RLSearch(episodes=1, warmup_episodes=0, seed=7, init_policy=str(tmp_path / "a" / "policy.zip"))
    env = ChannelPruningEnv(problem, cheap_scorer(problem), action=warm.config.action)
    model = warm._build(env)
    cold = RLSearch(episodes=1, warmup_episodes=0, seed=7)._build(env)
    for actor in (model.policy.actor, model.policy.actor_target):
        got = [t for n, t in actor.state_dict().items()]
        assert len(got) == len(saved.state_dict()) and all(
            torch.equal(a, b) for a, b in zip(got, saved.state_dict().values()))
    for name, tensor in model.policy.critic.state_dict().items():  # same seed, no warm start: the same critic
        assert torch.equal(tensor, cold.policy.critic.state_dict()[name]), name
    obs = np.random.default_rng(0).uniform(0, 1, (20, env.observation_space.shape[0])).astype(np.float32)
    assert all(np.array_equal(model.predict(o, deterministic=True)[0], saved.act(o)) for o in obs)
    with pytest.raises(AutopruneError, match="td3 policy|ddpg policy"):
        RLSearch(episodes=1, algo="td3", init_policy=str(tmp_path / "a" / "policy.zip"))._build(env)
    with pytest.raises(AutopruneError, match="relative actions; this search is ddpg with wall actions: "
                                             "pass --algo ddpg --action relative"):
        RLSearch(episodes=1, action="wall", init_policy=str(tmp_path / "a" / "policy.zip"))._build(env)
    with pytest.raises(AutopruneError, match="does not fit this search's networks"):
        RLSearch(episodes=1, hidden=[64, 64], init_policy=str(tmp_path / "a" / "policy.zip"))._build(env)
    with pytest.raises(AutopruneError, match="span 1.0; this search's is 2.0: pass --relative-span 1.0"):
        RLSearch(episodes=1, relative_span=2.0, init_policy=str(tmp_path / "a" / "policy.zip"))._build(env)


MULTI_SCRIPT = textwrap.dedent(f"""
    import os, signal, sys, torch
    from autoprune.agents.rl import RLSearch
    from autoprune.models import create_model
    from autoprune.core.problem import PruningProblem
    from autoprune.core.scoring import FunctionEvaluator, Scorer
    from autoprune.core.structure import ModelStructure
    torch.manual_seed(0)
    score = {SCORE}
    calls = [0]
    def dying(m):
        calls[0] += 1
        if calls[0] == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
        return score(m)
    problems = [PruningProblem(ModelStructure(create_model(name, 10).eval(), torch.randn(1, 3, 32, 32)), 0.5)
                for name in ("resnet20", "resnet32")]
    scorers = [Scorer(p, FunctionEvaluator(dying)) for p in problems]
    RLSearch(episodes=int(sys.argv[2]), warmup_episodes=3, checkpoint_every=2, seed=1, reward="relative").search(
        problems, scorers, sys.argv[1], resume=len(sys.argv) > 4)
""")


@pytest.mark.slow
def test_multi_model_search_alternates_models_and_resumes_after_sigkill(tmp_path):
    """One policy over ResNet-20 (9 groups) and ResNet-32 (15): episodes alternate, each model has its own
    log, and a SIGKILL'ed run resumes to the same rows as an uninterrupted one."""
    def run(args):
        return subprocess.Popen([sys.executable, "-c", MULTI_SCRIPT, *map(str, args)], cwd=ROOT)

    episodes = 8
    reference = tmp_path / "straight"
    assert run([reference, episodes, 0]).wait(timeout=180) == 0
    logs = sorted(p.name for p in reference.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert logs == ["0-9g", "1-15g"]
    for name, groups in (("0-9g", 9), ("1-15g", 15)):
        rows = _rows(reference / name / "episodes.csv")
        assert [int(r["episode"]) for r in rows] == list(range(0 if name == "0-9g" else 1, episodes, 2))
        assert sum(k.startswith("keep:") for k in rows[0]) == groups
    killed = tmp_path / "killed"
    # scoring calls: one per episode plus one uniform reference per model (relative reward); die in episode 6
    assert run([killed, episodes, SWEEP_20 + SWEEP_32 + 8, 0]).wait(timeout=180) == -signal.SIGKILL
    assert run([killed, episodes, 0, "resume"]).wait(timeout=180) == 0
    for name in logs:
        ref, got = _rows(reference / name / "episodes.csv"), _rows(killed / name / "episodes.csv")
        keys = [k for k in ref[0] if k.startswith("keep:") or k in ("episode", "reward", "macs")]
        assert [[r[k] for k in keys] for r in got] == [[r[k] for k in keys] for r in ref]


def test_the_kept_policy_is_fitted_onto_a_long_trajectory():
    """Distillation reaches a 27-step ResNet-56 episode of random actions: it takes more than the 30 fitting
    rounds once allowed, when most ResNet-56 searches kept a policy that missed their best."""
    from types import SimpleNamespace

    from autoprune.agents.rl import RLSearch
    from autoprune.core.structure import ModelStructure
    from autoprune.envs import ChannelPruningEnv
    from autoprune.envs.channel_pruning import rollout
    from autoprune.models import create_model

    torch.manual_seed(0)
    structure = ModelStructure(create_model("resnet56", 10).eval(), torch.randn(1, 3, 32, 32))
    env = ChannelPruningEnv(PruningProblem(structure, 0.3), evaluate=False, action="relative")
    rng = np.random.default_rng(0)
    obs, actions, (o, _), done = [], [], env.reset(), False
    while not done:
        obs.append(o)
        o, _, done, _, info = env.step(rng.uniform(-1, 1, size=1).astype(np.float32))
        actions.append([info["applied_action"]])
    search = RLSearch(episodes=2, seed=0, action="relative")
    search.model = search._build(env)
    search.best_trajectory = {"obs": obs, "actions": actions}
    assert search._distil(env, SimpleNamespace(allocation=info["allocation"])) is not None
    played = rollout(env, lambda x: search.model.predict(x, deterministic=True)[0])["allocation"]
    assert played.keep == info["allocation"].keep


def test_a_best_out_of_the_actions_reach_is_not_fitted(resnet20_structure, monkeypatch):
    """The sensitivity allocation played first is this search's best, and ``relative`` actions cannot give it
    (widths below half the even one are clipped to -1; an acting episode fills the budget a played one leaves):
    its recorded actions, replayed, miss it, so distillation is not tried (it used to spend its 200 x 100 Adam
    steps failing, most of this test file's time)."""
    from autoprune.agents.rl import RLSearch
    from autoprune.agents.rl.amc import AMCAgent
    from autoprune.envs import ChannelPruningEnv
    from autoprune.envs.channel_pruning import rollout

    fits, fit = [], AMCAgent.fit_actor
    monkeypatch.setattr(AMCAgent, "fit_actor", lambda self, *a, **k: fits.append(1) or fit(self, *a, **k))
    problem = cheap_problem(resnet20_structure)
    search = RLSearch(episodes=8, warmup_episodes=3, seed=3, action="relative")
    result = search.search(problem, cheap_scorer(problem))
    assert result.best.episode == 0 and result.allocation == result.heuristics[0]  # the played sensitivity won
    assert not result.policy_distilled and not fits
    env = ChannelPruningEnv(cheap_problem(resnet20_structure), evaluate=False, action="relative")
    replay = iter(search.best_trajectory["actions"])
    assert min(a[0] for a in search.best_trajectory["actions"]) == -1.0  # clipped: the reason it is out of reach
    assert rollout(env, lambda x: next(replay))["allocation"] != result.allocation
    # twice the reach (x0.25-x4): no width of it is clipped any more, and its replay comes within the channels
    # an acting episode adds at its end to spend the budget the played one left
    wide = ChannelPruningEnv(cheap_problem(resnet20_structure), evaluate=False, action="relative", relative_span=2.0)
    recorded = [info["applied_action"] for info in _steps(wide, result.allocation)]
    assert max(abs(a) for a in recorded) < 1.0
    replay = iter(recorded)
    got = rollout(wide, lambda x: np.asarray([next(replay)], np.float32))["allocation"]
    assert sum(abs(got.keep[k] - v) for k, v in result.allocation.keep.items()) <= 2


def _steps(env, allocation) -> list[dict]:
    """The step infos of ``env`` playing ``allocation`` as is."""
    env.play([lambda p: allocation])
    env.reset()
    infos, done = [], False
    while not done:
        _, _, done, _, info = env.step(np.zeros(1, np.float32))
        infos.append(info)
    return infos


def test_a_relative_policy_keeps_its_span_from_search_to_apply(tmp_path, resnet20_structure):
    """``relative_span`` 2: the search plays and distils in x0.25-x4 actions, the policy file says so, and the
    policy read back from disk rolls out with it (with span 1 it would play another allocation)."""
    from autoprune.agents.policy import PolicyAllocator
    from autoprune.agents.rl import RLSearch
    from autoprune.agents.rl.policy_io import load_policy

    problem = cheap_problem(resnet20_structure)
    result = RLSearch(episodes=12, warmup_episodes=3, eval_every=3, seed=2, imitation=0.0, noise_decay=0.95,
                      heuristic_warmup=False, action="relative", relative_span=2.0).search(
        problem, cheap_scorer(problem), tmp_path)  # as the span-1 test above: its best is a noisy episode
    assert result.policy_distilled and load_policy(tmp_path / "policy.zip")[1]["relative_span"] == 2.0
    fresh = cheap_problem(resnet20_structure)
    assert PolicyAllocator(tmp_path / "policy.zip").allocate(fresh, cheap_scorer(fresh)) == result.allocation
    narrow = PolicyAllocator(tmp_path / "policy.zip")
    narrow.meta["relative_span"] = 1.0  # read as an older file would be: the check above can fail
    assert narrow.allocate(fresh, cheap_scorer(fresh)) != result.allocation
