"""The prunable structure of a model: groups of coupled channels and what they cost.

``ModelStructure`` traces a model once with torch-pruning's ``DependencyGraph`` and keeps, for
every group of coupled channels, which (module, dimension) pairs it touches and how the
group's channel indices map onto each of them. From that it can

* cost any allocation analytically (conv + linear MACs, parameters) with a few numpy
  products, without building the pruned model -- the environment does this at every step;
* prune a *copy* of the model by replaying torch-pruning's layer pruners by module name, so
  the graph is built once per model, not once per episode.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from autoprune.core.cost import CostRow, CostTable, counted_macs
from autoprune.errors import AutopruneError


REMOVED_ATTR = "autoprune_removed"  # set by ``ModelStructure.prune_copy`` on the pruned copy


@dataclass
class Member:
    """One (module or parameter, dimension) that a group prunes, with its index map."""

    name: str  # module name, or parameter name when ``is_param``
    handler: Callable  # torch-pruning's pruner function for this module and dimension
    pruning_dim: int
    is_param: bool
    root_to_idxs: list[list[int]]  # for each channel of the group, the indices it owns here
    per_channel: int  # len(root_to_idxs[i]), the same for every i (checked)


@dataclass
class PrunableGroup:
    """A set of channels that must be removed together, named after its root layer."""

    index: int
    name: str  # root module name, e.g. "layer1.0.conv1"
    channels: int
    kind: str  # "conv", "dwconv" or "linear"
    in_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    weight_count: int
    ch_groups: int  # channels must be removed in equal shares from this many conv groups
    members: list[Member] = field(repr=False, default_factory=list)

    @property
    def member_names(self) -> list[str]:
        return sorted({m.name for m in self.members})


def _untraceable(exc: Exception) -> str:
    """One line: what torch-pruning could not follow, and what to do."""
    import traceback

    frames = {f.name for f in traceback.extract_tb(exc.__traceback__)}
    if "update_reshape_index_mapping" in frames:
        return ("torch-pruning cannot follow channels through a reshape that mixes channel groups (a channel "
                "shuffle, as in ShuffleNet), so no channel of this model can be removed safely: it is not supported; "
                "prune a model without channel shuffle")
    if "update_concat_index_mapping" in frames:  # measured: tv:swin_s and swin_b (shape inference gives up)
        return ("torch-pruning cannot work out how many channels enter a concatenation in this model (its shape "
                "inference gives up on deep stacks of reshapes, as in Swin's patch merging), so no channel can be "
                "removed safely: it is not supported; prune a CNN or a plain ViT instead")
    first = (str(exc).splitlines() or [""])[0][:120]
    return (f"torch-pruning cannot trace this model ({type(exc).__name__}: {first}): an operation in its forward is "
            "not supported by torch-pruning's dependency graph, so it cannot be pruned here")


def _refuse_windowed(graph: tp.DependencyGraph) -> None:
    """Channels reshaped together with spatial positions more than once (the classifier's flatten): window
    attention (Swin, MaxViT) does this in every block, and torch-pruning's index tracking multiplies
    through each such reshape, so grouping runs for many minutes (measured: > 5 min for swin_t) and the
    groups it would give map channels unevenly anyway. Refuse it up front, in one line."""
    from torch_pruning.dependency.index_mapping import _FlattenIndexMapping

    flattens = {id(node) for node in graph.module2node.values() for dep in node.dependencies
                for f in dep.index_mapping if isinstance(f, _FlattenIndexMapping) and not f.reverse}
    if len(flattens) > 1:
        raise AutopruneError(
            f"this model reshapes channels together with spatial positions inside the network ({len(flattens)} "
            "places, as window attention in Swin and MaxViT does): torch-pruning cannot track channels through "
            "that, so it is not supported")


def _refuse_partial_residual(graph: tp.DependencyGraph) -> None:
    """A residual added to a slice of the channels only (ReXNet: ``cat([x[:, :c] + shortcut, x[:, c:]])``):
    torch-pruning's grouping re-walks each block once per distinct index subset that reaches it, which
    multiplies from block to block (measured: rexnet_100's grouping had not finished after 6 minutes).
    Refuse it up front, in one line, before ``get_all_groups`` is asked."""
    from torch_pruning import ops

    places = 0
    for node in graph.module2node.values():
        if node.type != ops.OPTYPE.SLICE:
            continue
        sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
        channel_dim = {4: 1, 3: 2}.get(len(sizes) if sizes else 0)
        op = node.module
        if channel_dim is None or op.dim != channel_dim:
            continue
        if op.start <= 0 and op.end >= sizes[channel_dim] and op.step == 1:
            continue  # the whole width: not a partial slice
        if any(o.type == ops.OPTYPE.ELEMENTWISE and len(o.inputs) > 1 for o in node.outputs):
            places += 1
    if places:
        raise AutopruneError(
            f"this model adds a residual to a slice of its channels ({places} places, x[:, :c] + shortcut as in "
            "ReXNet): torch-pruning's grouping does not finish on that pattern, so it is not supported")


def _is_dw(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def default_ignored_layers(model: nn.Module, num_classes: int | None) -> list[nn.Module]:
    """Layers whose outputs must keep their width: the model's own list, else its classifier."""
    own = getattr(model, "pruning_ignored_layers", None)
    if callable(own):
        return list(own())
    weighted = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    ignored = [weighted[-1]] if weighted else []
    if num_classes is not None:
        ignored += [m for m in weighted
                    if getattr(m, "out_features", getattr(m, "out_channels", None)) == num_classes]
    return ignored


class ModelStructure:
    """Prunable groups of ``model`` and an analytical cost model, built once.

    Args:
        model: the dense model (kept as the reference for importance scores and pruning).
        example_input: one input batch (batch size 1 is enough).
        ignored_layers: layers whose output channels must not change (default: the model's
            ``pruning_ignored_layers()`` if it has one, else the classifier).
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor,
                 ignored_layers: Sequence[nn.Module] | None = None, num_classes: int | None = None):
        self.model = model
        self.example_input = example_input
        self.num_classes = num_classes
        was_training = model.training
        model.eval()
        self._module_names = {m: n for n, m in model.named_modules()}
        try:
            with warnings.catch_warnings():  # loose parameters (layer scales) are pruned on their channel dim
                warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
                self.graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
        except Exception as exc:
            raise AutopruneError(_untraceable(exc)) from None
        _refuse_windowed(self.graph)
        _refuse_partial_residual(self.graph)
        ignored = list(ignored_layers) if ignored_layers is not None else default_ignored_layers(model, num_classes)
        # by name, so a pruner built on a copy of the model can leave the same layers alone
        self.ignored_names: list[str] = [self._module_names[m] for m in ignored if m in self._module_names]
        order, spatial = self._forward_order(model, example_input)
        self._hooked = set(order)  # conv/linear modules called as modules (not only their weights, functionally)
        self.tp_groups: list[tp.dependency.Group] = []
        self.groups: list[PrunableGroup] = []
        self.held: list[str] = []  # groups left whole because their width is read by attention (root names)
        raw = [g for g in self.graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear])]
        raw.sort(key=lambda g: order.get(g[0].dep.target.module, 1 << 30))
        for tpg in raw:
            group = self._describe(tpg, len(self.groups))
            if group is not None:
                self.groups.append(group)
                self.tp_groups.append(tpg)
        if not self.groups:
            if self.held:
                raise AutopruneError(
                    f"every channel group of this model feeds attention ({len(self.held)} groups: heads and embedding "
                    "widths are read from module attributes that pruning does not update): it cannot be pruned here")
            raise AutopruneError("this model has no prunable channel groups")
        self._build_costs(model, spatial)
        model.train(was_training)
        self.channels = np.array([g.channels for g in self.groups], dtype=np.int64)
        self.dense_macs = self.macs(self.channels)
        self.dense_params = self.params(self.channels)
        self._importance_cache: dict[str, list[torch.Tensor]] = {}

    # -- discovery ---------------------------------------------------------------------------
    @staticmethod
    def _forward_order(model: nn.Module, x: torch.Tensor) -> tuple[dict[nn.Module, int], dict[nn.Module, float]]:
        order: dict[nn.Module, int] = {}
        spatial: dict[nn.Module, float] = {}

        # positions per *image*: divide by the input's batch size, not the output's first dimension, which
        # a model may have folded positions into (MobileViT's transformer runs on (batch x patch area, N, C):
        # counting per first dimension saw a quarter of its MACs, and pruning to "50%" kept 41%)
        images = x.shape[0]

        def hook(mod, inp, out):
            order.setdefault(mod, len(order))
            ch = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
            spatial[mod] = out.numel() / (images * ch)

        handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()
        return order, spatial

    def _in_attention(self, name: str) -> bool:
        """Whether the module (or parameter) ``name`` is, or belongs directly to, an attention module.

        Attention reshapes its projections by head counts and widths kept as Python attributes
        (``num_heads``, ``head_dim``, a ViT's ``hidden_dim``), which replaying torch-pruning's layer
        pruners does not update: the model would break (e.g. ``shape '[1, 768, 196]' is invalid``).
        Such channels are held; the MLP widths between attention blocks stay prunable. So are channels
        of a module that keeps its width in a ``shape`` tuple (timm's MetaFormer ``Scale``: ``x *
        scale.view(self.shape)``: PoolFormer broke with ``shape '[64, 1, 1]' is invalid for input of size 45``)."""
        parts = name.split(".")
        for depth in (len(parts), len(parts) - 1):
            try:
                module = self.model.get_submodule(".".join(parts[:depth]))
            except AttributeError:
                continue
            if isinstance(module, nn.MultiheadAttention) or any(
                    hasattr(module, a) for a in ("num_heads", "n_heads", "head_dim")):
                return True
            shape = getattr(module, "shape", None)
            if isinstance(shape, (tuple, list)) and shape and all(isinstance(v, int) for v in shape):
                return True
        return False

    def _width(self, dep, module) -> int | None:
        """Channels of ``module`` on the side ``dep`` cuts (None: unknown)."""
        if isinstance(module, nn.Parameter):
            return int(module.shape[dep.target.pruning_dim]) if dep.target.pruning_dim is not None else None
        pruner = self.graph.get_pruner_of_module(module)
        if pruner is None:
            return None
        get = pruner.get_out_channels if self.graph.is_out_channel_pruning_fn(dep.handler) else pruner.get_in_channels
        try:
            width = get(module)
        except Exception:  # noqa: BLE001 -- a pruner that cannot tell: no check
            return None
        return int(width) if isinstance(width, int) else None

    def _name_of(self, target) -> tuple[str | None, bool]:
        if isinstance(target, nn.Parameter):
            return self.graph._param_to_name.get(target), True
        return self._module_names.get(target), False

    def _describe(self, tpg, index: int) -> PrunableGroup | None:
        root = tpg[0].dep.target.module
        root_name = self._module_names[root]
        n = len(tpg[0].idxs)
        if n < 2:
            return None
        members: list[Member] = []
        ch_groups = 1
        for item in tpg:
            dep = item.dep
            name, is_param = self._name_of(dep.target.module)
            if name is None:  # torch-pruning's bookkeeping ops (add, concat, ...): nothing to cut
                continue
            module = dep.target.module
            if self._in_attention(name) or (isinstance(module, (nn.Conv2d, nn.Linear)) and module not in self._hooked):
                self.held.append(root_name)  # (a layer applied functionally: its cost could not be attributed)
                return None
            if isinstance(module, nn.Conv2d) and 1 < module.groups and not _is_dw(module):
                ch_groups = max(ch_groups, module.groups)
            root_to: list[list[int]] = [[] for _ in range(n)]
            for idx, r in zip(item.idxs, item.root_idxs):
                root_to[r].append(idx)
            width = self._width(dep, module)
            if width is not None and item.idxs and max(item.idxs) >= width:
                raise AutopruneError(
                    f"torch-pruning maps the channels of group '{root_name}' beyond the width of '{name}' (index "
                    f"{max(item.idxs)} of {width}): its index tracking goes wrong through a split of the channels "
                    "(torch.split or chunk, as in CSPNet, LeViT and EdgeNeXt), so this model is not supported")
            counts = {len(x) for x in root_to}
            if len(counts) != 1 or 0 in counts:
                raise AutopruneError(
                    f"group of '{root_name}' maps its channels unevenly onto '{name}' "
                    "(channel shuffle, split or slicing): this model is not supported"
                )
            members.append(Member(name, dep.handler, dep.target.pruning_dim, is_param, root_to, counts.pop()))
        if n % ch_groups:
            return None
        if isinstance(root, nn.Conv2d):
            kind = "dwconv" if _is_dw(root) else "conv"
            kernel, stride = tuple(root.kernel_size), tuple(root.stride)
            in_ch = root.in_channels
        else:
            kind, kernel, stride, in_ch = "linear", (1, 1), (1, 1), root.in_features
        return PrunableGroup(index, root_name, n, kind, in_ch, kernel, stride, root.weight.numel(), ch_groups, members)

    def _build_costs(self, model: nn.Module, spatial: dict[nn.Module, float]) -> None:
        table = CostTable()
        # which side of a module each member cuts, as torch-pruning's graph registered its handler; one
        # handler cuts both sides when input and output are the same channels (depthwise conv, BN,
        # LayerNorm, loose parameters): a per-channel module then counts it once, on its out side
        refs: dict[str, tuple[list, list, list]] = {}  # out side, in side, in side only
        for g in self.groups:
            for m in g.members:
                out_refs, in_refs, in_only = refs.setdefault(m.name, ([], [], []))
                cuts_out = self.graph.is_out_channel_pruning_fn(m.handler)
                cuts_in = self.graph.is_in_channel_pruning_fn(m.handler)
                if cuts_out:
                    out_refs.append((g.index, m.per_channel))
                if cuts_in:
                    in_refs.append((g.index, m.per_channel))
                    if not cuts_out:
                        in_only.append((g.index, m.per_channel))
        loose = {m.name for g in self.groups for m in g.members if m.is_param}
        for name, module in model.named_modules():
            own = [p for pn, p in module.named_parameters(recurse=False) if f"{name}.{pn}".lstrip(".") not in loose]
            if not own:
                continue
            out_refs, in_refs, in_only = refs.get(name, ([], [], []))
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                is_conv = isinstance(module, nn.Conv2d)
                table.rows.append(CostRow(
                    name=name, kind="dwconv" if _is_dw(module) else ("conv" if is_conv else "linear"),
                    out_channels=module.out_channels if is_conv else module.out_features,
                    in_channels=module.in_channels if is_conv else module.in_features,
                    conv_groups=module.groups if is_conv else 1,
                    kernel_area=int(np.prod(module.kernel_size)) if is_conv else 1,
                    spatial=spatial.get(module, 0.0), bias=module.bias is not None,
                    params=sum(p.numel() for p in own), out_refs=tuple(out_refs), in_refs=tuple(in_refs)))
            else:  # per-channel modules: parameters scale with the channel count
                c = self._channel_count(module)
                table.rows.append(CostRow(kind="channel", out_channels=c, in_channels=c,
                                          params=sum(p.numel() for p in own),
                                          out_refs=tuple(out_refs + in_only) if c else (), in_refs=()))
        # loose parameters (e.g. ConvNeXt's layer_scale) that groups prune
        named_params = dict(model.named_parameters())
        for name in sorted(loose):
            p = named_params[name]
            c = p.shape[self._param_dim(name)]
            table.rows.append(CostRow(kind="channel", out_channels=c, in_channels=c, params=p.numel(),
                                      out_refs=tuple(refs[name][0]), in_refs=()))
        # MACs of layers whose weights are applied functionally (no module call to hook), all in held groups:
        # a constant, so the table's dense total is what FlopCounterMode counts
        table.finish(len(self.groups))
        gap = counted_macs(model, self.example_input) - table.macs(np.zeros(len(self.groups)))
        if gap > 0:
            table.rows.append(CostRow(kind="linear", out_channels=1, in_channels=1, out_refs=(), in_refs=(), params=0,
                                      spatial=float(gap)))
            table.finish(len(self.groups))
        self._costs = table

    @property
    def costs(self) -> CostTable:
        """Every module's channel counts as linear functions of the channels each group removes."""
        return self._costs

    def _param_dim(self, name: str) -> int:
        return next(m.pruning_dim for g in self.groups for m in g.members if m.is_param and m.name == name)

    @staticmethod
    def _channel_count(module: nn.Module) -> int:
        for attr in ("num_features", "num_channels"):
            if hasattr(module, attr):
                return int(getattr(module, attr))
        shape = getattr(module, "normalized_shape", None)
        if shape:
            return int(shape[-1])
        w = getattr(module, "weight", None)
        return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.dim() >= 1 else 0

    # -- costs -------------------------------------------------------------------------------
    def _removed(self, keep: Sequence[int] | np.ndarray) -> np.ndarray:
        keep = np.asarray(keep, dtype=np.float64)
        if keep.shape != (len(self.groups),):
            raise ValueError(f"expected {len(self.groups)} keep counts, got shape {keep.shape}")
        return self.channels - keep

    def macs(self, keep: Sequence[int] | np.ndarray) -> int:
        """Conv + linear multiply-accumulates per image of the model pruned to ``keep``."""
        return int(self._costs.macs(self._removed(keep)))

    def params(self, keep: Sequence[int] | np.ndarray) -> int:
        """Parameter count of the model pruned to ``keep``."""
        return int(self._costs.params(self._removed(keep)))

    # -- pruning -----------------------------------------------------------------------------
    def removal_plan(self, remove: Sequence[Sequence[int]]) -> dict[tuple[str, Callable, int, bool], list[int]]:
        """Per (member, handler): the indices to cut, in the dense model's coordinates."""
        plan: dict[tuple[str, Callable, int, bool], set[int]] = {}
        for g, idxs in zip(self.groups, remove):
            if len(idxs) == 0:
                continue
            for m in g.members:
                key = (m.name, m.handler, m.pruning_dim, m.is_param)
                bucket = plan.setdefault(key, set())
                for r in idxs:
                    bucket.update(m.root_to_idxs[r])
        return {k: sorted(v) for k, v in plan.items()}

    def removed_channels(self, remove: Sequence[Sequence[int]]) -> dict[str, dict[str, list[int]]]:
        """Per pruned module: its removed output (``"out"``) and input (``"in"``) channels, in the dense
        model's coordinates (what a layer-wise refit needs to line the pruned layer up with the dense one)."""
        out: dict[str, dict[str, list[int]]] = {}
        for (name, handler, _, is_param), idxs in self.removal_plan(remove).items():
            side = {"prune_out_channels": "out", "prune_in_channels": "in"}.get(handler.__name__)
            if not is_param and side is not None:
                out.setdefault(name, {})[side] = idxs
        return out

    def prune_copy(self, remove: Sequence[Sequence[int]], model: nn.Module | None = None) -> nn.Module:
        """A physically smaller deep copy of ``model`` (default: the reference) without ``remove[g]`` channels.

        The copy carries ``removed_channels(remove)`` as ``REMOVED_ATTR`` (a plain attribute: not in its
        state dict) so a score can refit its layers against the dense model's (``train.reconstruct``)."""
        pruned = copy.deepcopy(self.model if model is None else model)
        setattr(pruned, REMOVED_ATTR, self.removed_channels(remove))
        for (name, handler, dim, is_param), idxs in self.removal_plan(remove).items():
            handler.__self__.pruning_dim = dim
            if is_param:
                owner_name, _, attr = name.rpartition(".")
                owner = pruned.get_submodule(owner_name)
                setattr(owner, attr, handler(getattr(owner, attr), idxs))
            else:
                handler(pruned.get_submodule(name), idxs)
        return pruned
