"""Exact checkpoints of an RL search: agent + replay buffer + noise + every RNG + score cache.

Taken between episodes (one ``learn`` call per episode), so the replay buffer, the networks and
the bookkeeping agree; ``latest.json`` is written last and is the commit point, so a search
killed while saving resumes from the previous checkpoint.

The agent, replay buffer and state are pickles (SB3's own format and ``pickle``): reading them can
run code, so a run folder is trusted like code. ``format.json`` (autoprune version + checkpoint
format) is written beside them and checked before anything is unpickled: a folder written by
another version, or by someone else's tool, is refused.
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

import autoprune
from autoprune.errors import AutopruneError
from autoprune.runs import write_json_atomic

CHECKPOINT_FORMAT = "autoprune.checkpoint/1"


def format_stamp() -> dict:
    return {"format": CHECKPOINT_FORMAT, "autoprune": autoprune.__version__}


def check_format(root: Path) -> None:
    """Refuse (one line) a checkpoint folder not stamped by this autoprune version -- before any unpickling."""
    stamp_path = root / "format.json"
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        stamp = None
    if stamp != format_stamp():
        found = (f"autoprune {stamp.get('autoprune')}, {stamp.get('format')}" if isinstance(stamp, dict)
                 else "no readable format.json")
        raise AutopruneError(f"checkpoints in '{root}' were not written by this autoprune version ({found}; this is "
                             f"autoprune {autoprune.__version__}): they are not unpickled -- restart the run in a new "
                             "folder")


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
    write_json_atomic(root / "format.json", format_stamp())
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
    check_format(root)
    try:
        d = root / json.loads(latest.read_text())["dir"]
    except (ValueError, KeyError, TypeError):
        raise AutopruneError(f"'{latest}' cannot be read: delete '{root}' to start over") from None
    if d.parent != root or d.name.startswith("."):
        raise AutopruneError(f"'{latest}' points outside '{root}': delete it to start over")
    try:
        with (d / "state.pkl").open("rb") as f:
            state = pickle.load(f)
        model = agent_class.load(d / "model.zip", env=env, device="cpu", force_reset=True)  # env reset at next learn()
        model.load_replay_buffer(d / "replay.pkl")
    except Exception as exc:
        raise AutopruneError(f"checkpoint '{d}' cannot be read ({type(exc).__name__}): delete it to start over") from None
    if state["noise"] is not None:
        model.action_noise.load_state(state["noise"])
    model.action_space.np_random.bit_generator.state = state["action_space"]
    set_rng_state(state["rng"])
    return model, state
