"""Run configs: dataclasses that round-trip to YAML, with every field a CLI flag.

Precedence: dataclass defaults < ``--config FILE.yaml`` < explicit flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from autoprune.errors import AutopruneError

T = TypeVar("T")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(X, optional) for ``X | None`` / ``Optional[X]``; other hints (``list[float]``) unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def nested(cls: type, *, exclude: tuple[str, ...] = (), rename: dict[str, str] | None = None,
           **defaults: Any) -> Any:
    """A config field holding another config (``TrainRecipe``, ``RLConfig``) whose fields become
    flags of the outer one: ``exclude`` leaves some out (the command sets them), ``rename`` gives
    others another flag name, ``defaults`` are this command's defaults for them. YAML may give
    them flat (``epochs: 4``) or under the field's name (``recipe: {epochs: 4}``)."""
    return dataclasses.field(default_factory=lambda: cls(**defaults),
                             metadata={"nested": cls, "exclude": set(exclude), "rename": dict(rename or {}),
                                       "defaults": defaults})


@dataclasses.dataclass(frozen=True)
class _Leaf:
    name: str  # flag / flat key
    path: tuple[str, ...]  # (field,) or (nested field, inner field)
    hint: Any
    default: Any
    parse: Any = None  # a field's own parser (metadata "parse"), for values one type cannot say


def _leaves(cls: type) -> list[_Leaf]:
    """Every settable option of ``cls``, nested configs flattened."""
    out: list[_Leaf] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        inner = f.metadata.get("nested")
        if inner is None:
            out.append(_Leaf(f.name, (f.name,), hints[f.name], _default(f), f.metadata.get("parse")))
            continue
        inner_hints = typing.get_type_hints(inner)
        for g in dataclasses.fields(inner):
            if g.name in f.metadata["exclude"]:
                continue
            default = f.metadata["defaults"].get(g.name, _default(g))
            out.append(_Leaf(f.metadata["rename"].get(g.name, g.name), (f.name, g.name), inner_hints[g.name], default,
                             g.metadata.get("parse")))
    names = [leaf.name for leaf in out]
    assert len(names) == len(set(names)), f"{cls.__name__}: two options share a flag name"
    return out


def add_config_args(parser: argparse.ArgumentParser, cls: type, help: dict[str, str] | None = None) -> None:
    """One flag per option (default None, so unset flags do not override the config file).

    Each flag's help states its default once (``(required)`` when there is none); the parser must
    not add its own (no ``ArgumentDefaultsHelpFormatter``).
    """
    parser.add_argument("--config", type=Path, help="YAML file with any of the options below")
    for leaf in _leaves(cls):
        typ, _ = _unwrap(leaf.hint)
        desc = (help or {}).get(leaf.name, "").replace("%", "%%")  # argparse formats help with %
        tail = "(required)" if leaf.default is dataclasses.MISSING else f"(default: {leaf.default})"
        text = f"{desc} {tail}" if desc else tail
        if leaf.parse is not None:
            parser.add_argument(_flag(leaf.name), type=leaf.parse, default=None, help=text)
        elif typ is bool:
            parser.add_argument(_flag(leaf.name), action=argparse.BooleanOptionalAction, default=None, help=text)
        elif typing.get_origin(typ) is list:
            item = typing.get_args(typ)[0]
            parser.add_argument(_flag(leaf.name), type=item, nargs="+", default=None, help=text)
        else:
            parser.add_argument(_flag(leaf.name), type=typ, default=None, help=text)


def flat_config(config: object) -> dict[str, Any]:
    """The config as {option name: value}, nested configs flattened (what ``--resume`` compares)."""
    out = {}
    for leaf in _leaves(type(config)):
        value: Any = config
        for part in leaf.path:
            value = getattr(value, part)
        out[leaf.name] = value
    return out


def _flatten_yaml(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Nested mappings (``recipe: {epochs: 4}``, as ``save_config`` writes them) -> flat option names."""
    flat = dict(values)
    for f in dataclasses.fields(cls):
        if f.metadata.get("nested") is not None and isinstance(flat.get(f.name), dict):
            for key, value in flat.pop(f.name).items():
                key = key.replace("-", "_")
                if key not in f.metadata["exclude"]:
                    flat[f.metadata["rename"].get(key, key)] = value
    return flat


def resolve_config(cls: type[T], args: argparse.Namespace) -> T:
    """Defaults, then the YAML file, then explicit flags."""
    leaves = {leaf.name: leaf for leaf in _leaves(cls)}
    values: dict[str, Any] = {}
    path = getattr(args, "config", None)
    if path is not None:
        values.update(_flatten_yaml(cls, load_yaml(path)))
    unknown = sorted(set(values) - set(leaves))
    if unknown:
        raise AutopruneError(f"config file '{path}' has unknown keys {unknown}: valid keys are {sorted(leaves)}")
    for key, value in values.items():
        if leaves[key].parse is not None and value is not None:
            try:
                values[key] = leaves[key].parse(value)
            except (TypeError, ValueError) as exc:
                raise AutopruneError(f"config file '{path}': key '{key}': {exc}") from None
        else:
            check_type(key, value, leaves[key].hint, f"config file '{path}'")
    for name in leaves:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    missing = [n for n, leaf in leaves.items() if leaf.default is dataclasses.MISSING and n not in values]
    if missing:
        raise AutopruneError(f"missing required option(s): {', '.join(_flag(m) for m in missing)}")
    top: dict[str, Any] = {}
    inner: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        p = leaves[name].path
        if len(p) == 1:
            top[p[0]] = value
        else:
            inner.setdefault(p[0], {})[p[1]] = value
    for f in dataclasses.fields(cls):
        if f.metadata.get("nested") is not None:
            top[f.name] = f.metadata["nested"](**{**f.metadata["defaults"], **inner.get(f.name, {})})
    return cls(**top)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    return getattr(hint, "__name__", str(hint))


def check_type(key: str, value: Any, hint: Any, where: str) -> None:
    """A one-line error naming ``key`` when ``value`` (from YAML) does not fit the field's type."""
    typ, optional = _unwrap(hint)
    if value is None and optional:
        return
    if typing.get_origin(typ) is list:
        item = typing.get_args(typ)[0]
        ok = isinstance(value, list) and all(_fits(v, item) for v in value)
    else:
        ok = _fits(value, typ)
    if not ok:
        raise AutopruneError(f"{where}: key '{key}' must be {_type_name(typ)}"
                             f"{' or null' if optional else ''}, got {value!r}")


def _fits(value: Any, typ: Any) -> bool:
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typ in (str, bool):
        return isinstance(value, typ)
    return True  # other types (nested configs) are checked by their own constructors


def load_yaml(path: str | Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise AutopruneError(f"config file '{path}' not found") from None
    except yaml.YAMLError as exc:
        raise AutopruneError(f"config file '{path}' is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise AutopruneError(f"config file '{path}' must be a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in data.items()}


def save_config(config: object, path: str | Path) -> None:
    """The resolved config as YAML whose keys are the flag names (readable back with ``--config``)."""
    Path(path).write_text(yaml.safe_dump(flat_config(config), sort_keys=False))


def resolve_resumable(cls: type[T], args: argparse.Namespace, free: set[str]) -> T:
    """Like ``resolve_config``; on ``--resume`` the run folder's saved ``config.yaml`` is the base and
    flags may change only the ``free`` options (device, progress, ...), never what defines the run."""
    output = getattr(args, "output", None)
    if output is None and getattr(args, "config", None) is not None:
        output = load_yaml(args.config).get("output")
    saved_path = Path(output) / "config.yaml" if output else None
    resuming = saved_path is not None and saved_path.exists() and getattr(args, "resume", None)
    if resuming and getattr(args, "config", None) is None:
        args.config = saved_path
    cfg = resolve_config(cls, args)
    if resuming:
        saved = flat_config(resolve_config(cls, argparse.Namespace(config=saved_path)))
        now = flat_config(cfg)
        changed = sorted(k for k, v in saved.items() if k not in free | {"resume"} and now.get(k) != v)
        if changed:
            raise AutopruneError(f"--resume continues the run in '{output}' with its saved config; these options "
                                 f"differ: {', '.join(changed)} (start a new --output instead)")
    return cfg
