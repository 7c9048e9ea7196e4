"""Converting a policy in the old format (a Stable-Baselines3 zip) into the current one.

This is the one place where a policy file is unpickled: SB3 stores classes, spaces and schedules
as cloudpickles, and reading them runs whatever code the file names. Only for files you trust.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from autoprune.agents.rl.policy_io import POLICY_FORMAT, PolicyNet, check_layout, load_policy, policy_bytes
from autoprune.errors import AutopruneError
from autoprune.runs import atomic_path

OLD_FORMAT = "autoprune.policy/1"
NEEDED = ("policy_class", "observation_space", "action_space", "policy_kwargs", "autoprune_meta")


def convert_policy(old: str | Path, new: str | Path) -> PolicyNet:
    """Read an old SB3 ``policy.zip`` (unpickling it: trusted files only), write it in the current
    format, read that back and return it."""
    from stable_baselines3.common.save_util import load_from_zip_file

    old, new = Path(old), Path(new)
    if not old.is_file():
        raise AutopruneError(f"policy file '{old}' not found")
    if new.exists():
        raise AutopruneError(f"'{new}' already exists: choose another output file")
    try:
        with zipfile.ZipFile(old) as z:  # entries the actor does not need are replaced, so never unpickled
            skip = {k: None for k in json.loads(z.read("data")) if k not in NEEDED}
        data, params, _ = load_from_zip_file(old, device="cpu", custom_objects=skip, print_system_info=False)
    except Exception as exc:
        raise AutopruneError(f"'{old}' cannot be read as an old policy file ({type(exc).__name__})") from None
    meta = (data or {}).get("autoprune_meta")
    if not isinstance(meta, dict) or meta.get("format") not in (OLD_FORMAT, POLICY_FORMAT) or "policy" not in (params or {}):
        raise AutopruneError(f"'{old}' was not written by autoprune search (no autoprune metadata)")
    check_layout({**meta, "obs_version": meta.get("obs_version", 1)}, old)  # converting it would not make it usable
    try:
        policy = data["policy_class"](data["observation_space"], data["action_space"], lambda _: 0.0,
                                      **data.get("policy_kwargs", {}))
        policy.load_state_dict(params["policy"])
        payload = policy_bytes(policy, meta)
    except Exception as exc:
        raise AutopruneError(f"'{old}' holds a network the new format cannot describe ({type(exc).__name__}: "
                             f"{exc})") from None
    new.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(new) as tmp:
        tmp.write_bytes(payload)
    return load_policy(new)[0]
