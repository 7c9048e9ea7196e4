"""Model files: reading checkpoints and the pruned-model format.

A pruned model is saved as base-model name + channel spec + ordinary ``state_dict``, loadable
without pickled classes (``torch.load(weights_only=True)``). ``load_model`` reads any checkpoint
once: a pruned file is rebuilt at its own widths, a plain (or DataParallel) one is loaded into
the dense model.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn

from autoprune.errors import AutopruneError
from autoprune.models import create_model, drop_aux_heads

PRUNED_FORMAT = "autoprune.pruned/1"
_CHANNEL_ATTRS = ("in_channels", "out_channels", "groups", "num_features", "in_features", "out_features",
                  "normalized_shape", "num_channels")


def channel_spec(model: nn.Module) -> dict[str, dict[str, object]]:
    """Shape attributes of every module (channel counts, groups): what a pruned model changes."""
    spec: dict[str, dict[str, object]] = {}
    for name, m in model.named_modules():
        attrs = {a: getattr(m, a) for a in _CHANNEL_ATTRS if hasattr(m, a) and not _derived(m, a)}
        if attrs:
            spec[name] = {a: list(v) if isinstance(v, tuple) else v for a, v in attrs.items()}
    return spec


def _derived(module: nn.Module, attr: str) -> bool:
    """A property computed from the module's layers (timm's ``ConvNormAct.in_channels``): nothing to restore."""
    return isinstance(getattr(type(module), attr, None), property)


def save_pruned(model: nn.Module, base_name: str, num_classes: int, path: str | Path, **meta: object) -> None:
    """Save a (pruned) model as base name + channel spec + state_dict."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": PRUNED_FORMAT, "base": base_name, "num_classes": int(num_classes),
                "channels": channel_spec(model), "state_dict": model.state_dict(), "meta": dict(meta)}, path)


def read_weights_only(path: str | Path, what: str = "model file") -> object:
    """A torch file read with ``weights_only=True`` (tensors and plain containers, no classes): one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise AutopruneError(f"{what} '{path}' not found: check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise AutopruneError(f"{what} '{path}' cannot be read ({type(exc).__name__}): is it a torch file?") from None


def _is_pruned(obj: object) -> bool:
    return isinstance(obj, dict) and obj.get("format") == PRUNED_FORMAT


def is_pruned_checkpoint(path: str | Path) -> bool:
    return _is_pruned(read_weights_only(path))


def _state_dict_of(obj: object, path: str | Path) -> dict[str, torch.Tensor]:
    """Unwrap ``state_dict``/``model`` and strip DataParallel's ``module.``."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AutopruneError(f"checkpoint '{path}' holds no state_dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint as a plain state_dict."""
    return _state_dict_of(read_weights_only(path, "checkpoint"), path)


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load with a one-line error naming what does not match."""
    own = model.state_dict()
    meta = getattr(state, "_metadata", None)
    # old checkpoints (e.g. the shared CIFAR ResNets) predate BatchNorm's num_batches_tracked
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of other shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise AutopruneError(f"{source} does not match the model: {'; '.join(parts)}")
    # module versions (``_metadata``) do not survive a weights-only round trip; modules that check theirs
    # (torchvision's MNASNet) read the current ones
    meta = meta or getattr(own, "_metadata", None)
    state = OrderedDict(state)
    if meta is not None:
        state._metadata = meta
    model.load_state_dict(state)


def _resize(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    for key, tensor in state.items():
        if key in own and own[key].shape != tensor.shape:
            owner_name, _, attr = key.rpartition(".")
            owner = model.get_submodule(owner_name)
            old = getattr(owner, attr)
            new = torch.empty(tensor.shape, dtype=tensor.dtype)
            setattr(owner, attr, nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new)


def _rebuild(obj: dict, path: str | Path) -> nn.Module:
    model = create_model(obj["base"], obj["num_classes"])
    drop_aux_heads(model, keep={k.split(".", 1)[0] for k in obj["state_dict"]})  # saved without them
    for name, attrs in obj["channels"].items():
        module = model.get_submodule(name)
        for attr, value in attrs.items():
            if not _derived(module, attr):
                setattr(module, attr, tuple(value) if isinstance(value, list) else value)
    _resize(model, obj["state_dict"])
    load_weights(model, obj["state_dict"], f"pruned model '{path}'")
    return model


def load_pruned(path: str | Path) -> tuple[nn.Module, str]:
    """Rebuild a pruned model from its file: (model, base model name)."""
    obj = read_weights_only(path)
    if not _is_pruned(obj):
        raise AutopruneError(f"'{path}' is not an autoprune pruned-model file")
    return _rebuild(obj, path), obj["base"]


def load_model(name: str, num_classes: int = 10, checkpoint: str | Path | None = None) -> nn.Module:
    """``create_model(name)`` with a checkpoint (plain, DataParallel or pruned), reading the file once,
    ready to prune: auxiliary classifiers (GoogLeNet, Inception-v3) are dropped (``load_model_noting``)."""
    return load_model_noting(name, num_classes, checkpoint)[0]


def load_model_noting(name: str, num_classes: int = 10,
                      checkpoint: str | Path | None = None) -> tuple[nn.Module, list[str]]:
    """``load_model``, and the auxiliary classifiers it dropped (after loading their weights, if any)."""
    if checkpoint is None:
        model = create_model(name, num_classes)
        return model, drop_aux_heads(model)
    obj = read_weights_only(checkpoint, "checkpoint")
    if _is_pruned(obj):
        if obj["base"] != name:
            raise AutopruneError(
                f"checkpoint '{checkpoint}' is a pruned {obj['base']}, not a {name}: pass --model {obj['base']}")
        return _rebuild(obj, checkpoint), []
    model = create_model(name, num_classes)
    load_weights(model, _state_dict_of(obj, checkpoint), f"checkpoint '{checkpoint}'")
    return model, drop_aux_heads(model)


def pruned_meta(path: str | Path) -> dict:
    """The ``meta`` a pruned-model file was saved with (e.g. its ``input_size``); {} for other files."""
    obj = read_weights_only(path)
    return dict(obj.get("meta", {})) if _is_pruned(obj) else {}
