"""The policy file format: a zip of ``policy.json`` and ``actor.safetensors``, nothing that unpickles.

Policies travel between people, so reading one must never run code: ``policy.json`` (format,
``PolicyMeta``, the actor's layout and action bounds) is parsed with ``json`` and the weights with
safetensors, and the actor is rebuilt from the layout (``PolicyNet``). Written by the RL search
(``search.py``) and by ``autoprune convert-policy`` (``legacy.py``, the only place that reads the
older SB3 zips); read by ``policy:PATH``, ``apply --policy`` and ``search --init-policy``.
"""
from __future__ import annotations

import io
import json
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn

from autoprune.envs import ENV_ID, FEATURES, OBS_VERSION
from autoprune.errors import AutopruneError
from autoprune.runs import atomic_path

POLICY_FORMAT = "autoprune.policy/2"
META_ENTRY, WEIGHTS_ENTRY = "policy.json", "actor.safetensors"
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "gelu": nn.GELU}
MAX_ENTRY_BYTES = 64 << 20  # a policy MLP is well under 1 MB; refuse a zip bomb before inflating it


@dataclass
class PolicyMeta:
    """What a policy was trained on: enough to roll it out the same way and to refuse a mismatch."""

    algo: str
    min_keep: float
    max_keep: float
    reward: str
    action: str
    metric: str
    target: float
    groups: int
    score: str | None = None  # the score its sensitivity features were measured with (None: older files, adaptive-bn)
    relative_span: float = 1.0  # log2 reach of relative actions (older files: 1)
    format: str = POLICY_FORMAT
    env: str = ENV_ID
    obs_version: int = OBS_VERSION
    features: list[str] = field(default_factory=lambda: list(FEATURES))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny MLP updates on one thread: extra threads only add overhead when other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class PolicyNet(nn.Module):
    """The deterministic actor: Linear layers with ``activation`` between them, tanh, then the
    [-1, 1] -> [low, high] rescaling SB3's ``predict`` applies (DDPG/TD3's ``mu``; SAC's mean head)."""

    def __init__(self, sizes: list[int], activation: str, low: list[float], high: list[float]):
        super().__init__()
        if len(sizes) < 2 or activation not in ACTIVATIONS or len(low) != sizes[-1] or len(high) != sizes[-1]:
            raise ValueError("bad layout")
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activation = ACTIVATIONS[activation]()
        self.low, self.high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        self.observation_shape = (sizes[0],)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs
        for i, layer in enumerate(self.layers):
            x = layer(x)
            x = self.activation(x) if i < len(self.layers) - 1 else torch.tanh(x)
        return x

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The action for one observation, as SB3's ``predict(obs, deterministic=True)`` returns it."""
        with torch.no_grad(), one_thread():
            scaled = self(torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1)).numpy()
        return (self.low + (0.5 * (scaled + 1.0) * (self.high - self.low)))[0]


def actor_linears(actor: nn.Module) -> list[nn.Linear]:
    """The Linear layers of an SB3 actor's deterministic path, in order (TD3/DDPG ``mu``; SAC
    ``latent_pi`` + ``mu``); ``ValueError`` for an actor this format cannot describe."""
    if hasattr(actor, "latent_pi"):  # SAC
        if getattr(actor, "use_sde", False) or not isinstance(actor.mu, nn.Linear):
            raise ValueError("SAC with gSDE or a clipped mean")
        mods = [*actor.latent_pi, actor.mu]
    else:
        mods = list(actor.mu)
    linears = [m for m in mods if isinstance(m, nn.Linear)]
    acts = {type(m) for m in mods if not isinstance(m, (nn.Linear, nn.Tanh))}
    if not linears or len(acts) > 1 or any(p.numel() for p in actor.features_extractor.parameters()):
        raise ValueError("not an MLP actor")
    return linears


def _activation_name(actor: nn.Module) -> str:
    names = {cls: name for name, cls in ACTIVATIONS.items()}
    if actor.activation_fn not in names:
        raise ValueError(f"activation {actor.activation_fn.__name__}")
    return names[actor.activation_fn]


def policy_bytes(policy: Any, meta: dict) -> bytes:
    """The policy file's bytes for an SB3 policy (``model.policy``) and its ``PolicyMeta`` dict."""
    from safetensors.torch import save

    actor, space = policy.actor, policy.action_space
    linears = actor_linears(actor)
    layout = {"sizes": [linears[0].in_features] + [m.out_features for m in linears],
              "activation": _activation_name(actor), "low": space.low.tolist(), "high": space.high.tolist()}
    tensors = {f"layers.{i}.{k}": getattr(m, k).detach().cpu().contiguous().clone()
               for i, m in enumerate(linears) for k in ("weight", "bias")}
    buf = io.BytesIO()
    doc = {"format": POLICY_FORMAT, "meta": {**meta, "format": POLICY_FORMAT}, "actor": layout}
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:  # fixed timestamps: same actor, same bytes
        z.writestr(zipfile.ZipInfo(META_ENTRY, (1980, 1, 1, 0, 0, 0)), json.dumps(doc, indent=1), zipfile.ZIP_DEFLATED)
        z.writestr(zipfile.ZipInfo(WEIGHTS_ENTRY, (1980, 1, 1, 0, 0, 0)), save(tensors), zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def save_policy(model: Any, path: str | Path) -> Path:
    """Write an SB3 agent's actor (with ``model.autoprune_meta``) as a policy file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(policy_bytes(model.policy, model.autoprune_meta))
    return path


def _read_policy_file(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(``policy.json`` as a dict, the actor's tensors) -- only ``zipfile``, ``json`` and safetensors touch the file."""
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise AutopruneError(f"policy file '{path}' not found: pass the policy.zip of an autoprune search run")
    try:
        with zipfile.ZipFile(path) as z:
            infos = {i.filename: i for i in z.infolist()}
            if "data" in infos or "policy.pth" in infos:
                raise AutopruneError(f"policy file '{path}' is in the old format (a Stable-Baselines3 zip, which "
                                     f"can run code when read): convert a file you trust with "
                                     f"'autoprune convert-policy {path} NEW.zip'")
            if set(infos) != {META_ENTRY, WEIGHTS_ENTRY} or any(i.file_size > MAX_ENTRY_BYTES for i in infos.values()):
                raise AutopruneError(f"policy file '{path}' holds {sorted(infos)[:4]}, not a policy written by "
                                     f"autoprune ({META_ENTRY} + {WEIGHTS_ENTRY})")
            doc = json.loads(z.read(META_ENTRY).decode())
            tensors = load(z.read(WEIGHTS_ENTRY))
    except AutopruneError:
        raise
    except Exception as exc:  # zipfile, json and safetensors raise many types for a corrupt file
        raise AutopruneError(f"policy file '{path}' cannot be read ({type(exc).__name__}): is it a policy.zip "
                             "written by autoprune search?") from None
    if not isinstance(doc, dict) or doc.get("format") != POLICY_FORMAT or not isinstance(doc.get("meta"), dict):
        raise AutopruneError(f"policy file '{path}' was not written by this autoprune version "
                             f"(format {doc.get('format') if isinstance(doc, dict) else None!r}, "
                             f"expected {POLICY_FORMAT})")
    return doc, tensors


def policy_meta(path: str | Path) -> dict:
    """A policy file's ``PolicyMeta`` as a dict, whatever observation layout it was trained on."""
    return _read_policy_file(path)[0]["meta"]


def check_layout(meta: dict, path: str | Path) -> None:
    """One line when a policy was trained on another observation layout than this version's."""
    if meta.get("env") != ENV_ID or meta.get("obs_version") != OBS_VERSION or meta.get("features") != list(FEATURES):
        raise AutopruneError(f"policy file '{path}' was trained on another observation layout "
                             f"({meta.get('env')} v{meta.get('obs_version')}, this version reads v{OBS_VERSION}): "
                             "retrain it with this autoprune version")


def load_policy(path: str | Path) -> tuple[PolicyNet, dict]:
    """(the actor rebuilt from its layout, in eval mode; its ``PolicyMeta`` as a dict) from a policy file."""
    doc, tensors = _read_policy_file(path)
    meta = doc["meta"]
    check_layout(meta, path)
    try:
        layout = doc["actor"]
        net = PolicyNet([int(s) for s in layout["sizes"]], str(layout["activation"]),
                        [float(v) for v in layout["low"]], [float(v) for v in layout["high"]])
        net.load_state_dict(tensors, strict=True)
    except Exception as exc:
        raise AutopruneError(f"policy file '{path}' does not match its own network ({type(exc).__name__}): "
                             "is it corrupt?") from None
    return net.eval(), meta


def load_actor_into(model: Any, net: PolicyNet) -> None:
    """Copy a policy file's actor into an SB3 agent's actor (and DDPG/TD3's actor target); the critic,
    SAC's log-std head and the optimisers keep their fresh state. ``ValueError`` when the layers differ."""
    for actor in (model.policy.actor, getattr(model.policy, "actor_target", None)):
        if actor is None:
            continue
        linears = actor_linears(actor)
        if len(linears) != len(net.layers) or _activation_name(actor) != _name_of(net.activation):
            raise ValueError("layer count or activation")
        with torch.no_grad():
            for dst, src in zip(linears, net.layers):
                if dst.weight.shape != src.weight.shape:
                    raise ValueError(f"layer of {tuple(src.weight.shape)}, the agent's is {tuple(dst.weight.shape)}")
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)


def _name_of(activation: nn.Module) -> str:
    return next(name for name, cls in ACTIVATIONS.items() if type(activation) is cls)
