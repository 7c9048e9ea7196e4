"""RL search settings: the one source of their defaults (``autoprune search`` nests this config)."""
from __future__ import annotations

from dataclasses import dataclass, field

ALGOS = ("ddpg", "td3", "sac")


@dataclass
class RLConfig:
    """AMC's DDPG settings (He et al. 2018), expressed in SB3's [-1, 1] action space, CPU-sized.

    AMC ran 300-800 episodes with 100 of warm-up; 200 / 50 keep the quickstart within minutes on
    2 CPU cores. Defaults that depart from AMC: ``credit="episode"`` (Monte Carlo targets instead of
    bootstrapping one sparse reward), ``action="relative"`` (x0.5-x2 on the keep ratio that spreads the
    remaining budget evenly: on the agent grid it beat ``sensitivity`` and ``wall`` on every ResNet-20 cell
    and on ResNet-56 at 30%, bench/results/agent-vs-sensitivity.md), the sensitivity and uniform
    allocations played first (``heuristic_warmup``), the group's sensitivity in the observation, self-imitation of the 3 best episodes with slower noise decay (0.98), and
    ``distil_best``: without the last two the actor settles on one corner allocation and stops
    improving on random search.
    """

    algo: str = "ddpg"  # ddpg | td3 | sac
    episodes: int = 200
    warmup_episodes: int = 50  # random actions before learning starts
    noise_sigma: float = 1.0  # truncated normal in [-1, 1] (AMC: 0.5 on [0, 1])
    noise_decay: float = 0.98  # per episode after warm-up (AMC: 0.95 over more episodes)
    gamma: float = 1.0
    tau: float = 0.01
    batch_size: int = 64
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    replay_episodes: int = 100
    hidden: list[int] = field(default_factory=lambda: [300, 300])
    updates_per_step: float = 1.0  # gradient steps per env step, done at the end of each episode
    credit: str = "episode"  # episode: every step learns the episode's normalised outcome | td: sparse reward, bootstrapped
    imitation: float = 1.0  # self-imitation weight: the actor also regresses onto its best episodes' actions
    imitation_top: int = 3  # how many of the best episodes in the replay window it imitates
    distil_best: bool = True  # after the search, fit the actor onto the best episode: the kept policy plays it
    heuristic_warmup: bool = True  # the first episodes play the sensitivity, then the uniform allocation
    eval_every: int = 5  # every Nth learning episode runs the actor without noise; the best such actor is kept
    reward: str = "accuracy"
    action: str = "relative"  # absolute (AMC) | relative | wall | sensitivity: around sensitivity's width
    relative_span: float = 1.0  # relative actions scale the even keep ratio by 2**(+-span)
    checkpoint_every: int = 10  # episodes
    init_policy: str | None = None  # warm start: a policy.zip whose actor the search starts from (fresh critic)
    seed: int = 0


HELP = {
    "algo": f"one of {', '.join(ALGOS)}",
    "episodes": "episodes (RL) or samples (random)",
    "warmup_episodes": "RL episodes of random actions before learning",
    "noise_sigma": "exploration noise (truncated normal, in the [-1, 1] action space)",
    "noise_decay": "noise multiplier per episode after warm-up",
    "credit": "episode (every step learns the episode's normalised outcome) | td (sparse reward, bootstrapped)",
    "eval_every": "every Nth learning episode runs the actor without noise; the best such actor is saved as policy.zip",
    "imitation": "self-imitation weight (0: off): after each update the actor also regresses onto the actions of "
                 "the --imitation-top best episodes in the replay window (needs --credit episode; 0 with td)",
    "imitation_top": "episodes the actor imitates (with --imitation > 0)",
    "distil_best": "after the search, fit the actor onto the best episode's actions and keep it as policy.zip "
                   "when its noise-free rollout plays exactly the best allocation (checked without an evaluation; "
                   "one model at one target only). Otherwise the best noise-free actor is kept",
    "reward": "accuracy | error_log_cost | relative (accuracy minus uniform's)",
    "heuristic_warmup": "the first two episodes (per model) play the sensitivity allocation, then the uniform one, "
                        "as is: both in the replay buffer and episodes.csv, so the best is never below them. "
                        "The sensitivity sweep they need is measured once per model and score (cached in the run "
                        "folder's sensitivity.json) and also feeds the observation",
    "init_policy": "warm start from a policy.zip of an earlier search (same algorithm and --hidden sizes): the "
                   "actor starts from its weights, the critic and optimisers start fresh (pair it with a few "
                   "--warmup-episodes so the critic learns before it steers the actor)",
    "action": "absolute (keep ratio within the bounds, AMC) | relative (x0.5-x2 on the ratio that spreads the "
              "remaining budget evenly: transfers across targets) | wall (-1..1 spans exactly what the budget wall "
              "allows for the group, 0 = the even share: no flat region) | sensitivity (the same squashed log-ratio around "
              "the sensitivity allocation's width: 0 everywhere plays sensitivity analysis' allocation)",
    "relative_span": "log2 reach of relative actions: -1..1 scales the even keep ratio by 2**(-span)..2**span "
                     "(1: x0.5-x2)",
}
