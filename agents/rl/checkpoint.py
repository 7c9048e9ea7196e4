"""Exact checkpoints of an RL search: agent + replay buffer + noise + every RNG + score cache.

Taken between episodes (one ``learn`` call per episode), so the replay buffer, the networks and
the bookkeeping agree; ``latest.json`` is written last and is the commit point, so a search
killed while saving resumes from the previous checkpoint.
"""
from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprune.errors import AutopruneError
from autoprune.runs import write_json_atomic


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])


def save_checkpoint(root: Path, episode: int, model: Any, state: dict) -> None:
    """``root/ep-NNNNNN/{model.zip, replay.pkl, state.pkl}``, then ``root/latest.json``; older ones removed."""
    d = root / f"ep-{episode:06d}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    model.save(d / "model.zip")
    model.save_replay_buffer(d / "replay.pkl")
    noise = model.action_noise
    state = {**state, "episode": episode, "rng": rng_state(), "noise": noise.state() if noise is not None else None,
             "action_space": model.action_space.np_random.bit_generator.state}
    with (d / "state.pkl").open("wb") as f:
        pickle.dump(state, f)
    write_json_atomic(root / "latest.json", {"episode": episode, "dir": d.name})  # the commit point
    for old in root.glob("ep-*"):
        if old != d:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(root: Path, agent_class: type, env: Any) -> tuple[Any, dict] | None:
    """(agent with its buffer, noise and RNGs restored, saved state), or None when there is none."""
    latest = root / "latest.json"
    if not latest.exists():
        return None
    d = root / json.loads(latest.read_text())["dir"]
    try:
        with (d / "state.pkl").open("rb") as f:
            state = pickle.load(f)
        model = agent_class.load(d / "model.zip", env=env, device="cpu")
        model.load_replay_buffer(d / "replay.pkl")
    except Exception as exc:
        raise AutopruneError(f"checkpoint '{d}' cannot be read ({type(exc).__name__}): delete it to start over") from None
    model._last_obs = None  # reset the env at the next learn()
    if state["noise"] is not None:
        model.action_noise.load_state(state["noise"])
    model.action_space.np_random.bit_generator.state = state["action_space"]
    set_rng_state(state["rng"])
    return model, state
